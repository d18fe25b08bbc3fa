"""gzip-compressed gRPC responses when the caller asks (issue 13): metadata `x-response-compression: gzip`, on the
server's port and through the gateway's. Whether a response was compressed is read from the bytes that cross a TCP
relay in front of each port: a response that repeats one vector 200 times (~310 KB) is a few KB gzipped. A plain
client, and one that only compresses its own request, get uncompressed answers; REST calls carrying the header are
untouched (the transcoder reads the server's messages uncompressed)."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
from collections.abc import Iterator

import grpc
import httpx2
import numpy as np
import pytest

from service._gen.embeddings.v1 import batches_pb2, batches_pb2_grpc, embeddings_pb2, embeddings_pb2_grpc
from service.compression import asks_for_gzip
from tests.serving import http

MODEL = "all-minilm-l6-v2"
INPUTS = ["the same sentence, again and again"] * 200
ASK = (("x-response-compression", "gzip"),)
PLAIN_RESPONSE_BYTES = 200 * 384 * 4  # what the vectors alone take uncompressed
COMPRESSED_AT_MOST = PLAIN_RESPONSE_BYTES // 10


class Relay:
    """A TCP relay to `port` that counts the bytes flowing back to the client."""

    def __init__(self, port: int) -> None:
        self._target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._downstream = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def downstream(self) -> int:
        with self._lock:
            return self._downstream

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                if counted:
                    with self._lock:
                        self._downstream += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture(scope="module", params=["server", "gateway"])
def relay(request, server, gateway) -> Iterator[Relay]:
    port = server.port if request.param == "server" else gateway.port
    relay = Relay(port)
    yield relay
    relay.close()


def received(relay: Relay, call, compression: grpc.Compression | None = None, ask: bool = False):
    """(response, bytes the relay carried back) of `call(stub)` on a fresh channel through the relay."""
    before = relay.downstream
    with grpc.insecure_channel(f"127.0.0.1:{relay.port}", compression=compression) as channel:
        response = call(channel, ASK if ask else ())
    return response, relay.downstream - before


def embed(channel: grpc.Channel, metadata) -> np.ndarray:
    stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
    response = stub.Embed(embeddings_pb2.EmbedRequest(model=MODEL, inputs=INPUTS), metadata=metadata, timeout=120)
    return np.array([e.values for e in response.embeddings])


def test_a_call_that_asks_gets_gzip(relay: Relay):
    plain, plain_bytes = received(relay, embed)
    asked, asked_bytes = received(relay, embed, ask=True)
    assert plain_bytes > PLAIN_RESPONSE_BYTES and asked_bytes < COMPRESSED_AT_MOST, (plain_bytes, asked_bytes)
    assert np.array_equal(plain, asked) and plain.shape == (200, 384)


def test_compressing_the_request_alone_does_not_ask(relay: Relay):
    """gRPC's core takes `grpc-encoding` before the server sees the metadata: a compressed request says nothing."""
    _, request_only = received(relay, embed, compression=grpc.Compression.Gzip)
    vectors, both = received(relay, embed, compression=grpc.Compression.Gzip, ask=True)
    assert request_only > PLAIN_RESPONSE_BYTES and both < COMPRESSED_AT_MOST, (request_only, both)
    assert vectors.shape == (200, 384)


def test_errors_and_streamed_responses_follow_the_ask(relay: Relay, gateway):
    def missing_model(channel: grpc.Channel, metadata) -> grpc.StatusCode:
        stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(embeddings_pb2.EmbedRequest(model="nope", inputs=["x"]), metadata=metadata, timeout=30)
        return refused.value.code()

    assert received(relay, missing_model, ask=True)[0] == grpc.StatusCode.NOT_FOUND
    line = {"method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL, "input": "x"}}
    lines = "".join(json.dumps({"custom_id": f"r{i}", **line}) + "\n" for i in range(3000))
    files = {"file": ("requests.jsonl", lines)}
    upload = httpx2.post(f"{gateway.base_url}/v1/files", files=files, data={"purpose": "batch"}, timeout=60)
    assert upload.status_code == 200, upload.text

    def download(channel: grpc.Channel, metadata) -> bytes:
        stub = batches_pb2_grpc.FileServiceStub(channel)
        request = batches_pb2.GetFileContentRequest(file_id=upload.json()["id"])
        return b"".join(part.data for part in stub.GetFileContent(request, metadata=metadata, timeout=60))

    plain, plain_bytes = received(relay, download)
    asked, asked_bytes = received(relay, download, ask=True)
    assert plain == asked == lines.encode()
    assert plain_bytes > len(lines) and asked_bytes < len(lines) // 10, (len(lines), plain_bytes, asked_bytes)


def test_rest_calls_with_the_header_are_untouched(gateway):
    for extra in ({}, {"accept-encoding": "gzip"}):
        headers = {"x-response-compression": "gzip", **extra}
        status, response_headers, raw = http(gateway, "POST", "/v1/embeddings", {"model": MODEL, "input": "x"}, headers)
        assert status == 200, raw[:300]
        body = json.loads(gzip.decompress(raw) if response_headers.get("content-encoding") == "gzip" else raw)
        assert len(body["data"][0]["embedding"]) == 384


@pytest.mark.parametrize(
    ("metadata", "asks"),
    [
        ((("x-response-compression", "gzip"),), True),
        ((("x-response-compression", "GZIP"),), True),
        ((("x-response-compression", "deflate, gzip"),), True),
        ((("x-response-compression", b"gzip"),), True),
        ((("x-response-compression", "deflate"),), False),
        ((("x-response-compression", "gzipped"),), False),
        ((("grpc-accept-encoding", "identity,deflate,gzip"),), False),
        ((), False),
        (None, False),
    ],
)
def test_what_counts_as_asking(metadata, asks: bool):
    assert asks_for_gzip(metadata) is asks
