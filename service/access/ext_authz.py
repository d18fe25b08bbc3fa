"""The gateway's pre-body check: Envoy's ext_authz filter asks here, with a request's headers only, whether to let
it through, so a caller without a valid API key is refused before Envoy reads (and buffers) its body.

The decision is `AccessControl.authenticate`, the same one the access interceptor takes again for the call itself
(which also checks roles and limits). A refused request gets 401: Envoy answers it locally, in OpenAI's envelope
(envoy.yaml's local_reply_config, from the message sent here as the body) or, for a native gRPC request, as
UNAUTHENTICATED with the same rich status (ErrorInfo `invalid_api_key`) the server itself would send.
"""

from __future__ import annotations

import base64

import grpc
from google.rpc import status_pb2

from service import errors
from service._gen.envoy_ext_authz import external_auth_pb2 as pb
from service._gen.envoy_ext_authz import external_auth_pb2_grpc as pb_grpc
from service.access.control import AccessControl

SERVICE = pb.DESCRIPTOR.services_by_name["Authorization"].full_name
# The headers Envoy sends with each check (its allowed_headers): nothing else is needed.
CHECKED_HEADERS = ("authorization", "content-type")
STATUS_DETAILS = "grpc-status-details-bin"
ALLOWED = pb.CheckResponse(status=status_pb2.Status(code=grpc.StatusCode.OK.value[0]), ok_response=pb.OkHttpResponse())


def _is_grpc(headers) -> bool:
    return headers.get("content-type", "").startswith("application/grpc")


def denied(err: errors.ApiError, grpc_request: bool) -> pb.CheckResponse:
    """Envoy's local reply for a refused request: the HTTP status of `err`'s code, its message as the body, and for
    a gRPC request the rich status as `grpc-status-details-bin` (Envoy derives grpc-status from the HTTP status)."""
    status = err.to_status()  # UNAUTHENTICATED: authentication is all that is checked here
    response = pb.DeniedHttpResponse(status=pb.HttpStatus(code=401), body=err.message)
    if grpc_request:
        details = dict(status.trailing_metadata)[STATUS_DETAILS]
        encoded = base64.b64encode(details).decode("ascii").rstrip("=")
        response.headers.add(header=pb.HeaderValue(key=STATUS_DETAILS, value=encoded))
    return pb.CheckResponse(
        status=status_pb2.Status(code=status.code.value[0], message=err.message), denied_response=response
    )


class AuthorizationServicer(pb_grpc.AuthorizationServicer):
    def __init__(self, control: AccessControl) -> None:
        self._control = control

    async def Check(self, request: pb.CheckRequest, context: grpc.aio.ServicerContext) -> pb.CheckResponse:
        headers = request.attributes.request.http.headers
        try:
            self._control.authenticate(headers.get("authorization"))
        except errors.ApiError as err:
            return denied(err, _is_grpc(headers))
        return ALLOWED


def add_authorization_service(control: AccessControl, server: grpc.aio.Server) -> None:
    pb_grpc.add_AuthorizationServicer_to_server(AuthorizationServicer(control), server)
