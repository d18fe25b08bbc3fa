-- Envoy Lua filter, upstream (on the replicas' cluster, gateway/envoy.py add_replicas): a retry-safe call's response,
-- headers included, is held here until it is complete (its trailers in), then passed on whole.
--
-- Envoy's router retries a call only until it has the upstream's response headers: then the answer has begun, and a
-- reset after that (a replica SIGKILLed between its headers and its body) reaches the client as a 503 "reset before
-- headers ... connection termination". The server sends a call's headers (openai-processing-ms, x-ratelimit-*: gRPC
-- initial metadata) ahead of its message, and grpc.aio cannot send them together, so that window is real. Held here,
-- the router sees nothing of a response until the replica finished it: a reset at any point before is retried on
-- another replica, like one before any byte. A response without a body (gRPC trailers-only errors) passes at once.
--
-- Only on the routes carrying `hold: true` in their metadata under this filter's name (those retried on reset);
-- every route whose response streams (file downloads) is left alone.
--
-- Held, a response can also be retried on what it ended with. The router retries `unavailable` (retry_on) only on a
-- grpc-status in the response's headers (a trailers-only response), but the server sends its headers ahead of every
-- error that has some (rpc_errors.py, the API-key interceptor), so its UNAVAILABLE (starting, shutting down) comes
-- in the trailers. Once the response is complete, a grpc-status 14 in the trailers is copied into the headers the
-- router is about to see, and the call goes to another replica; every other status is left where it is.
local UNAVAILABLE = "14"

function envoy_on_response(response_handle)
  if response_handle:metadata():get("hold") then
    response_handle:body()
    local trailers = response_handle:trailers()
    if trailers ~= nil and trailers:get("grpc-status") == UNAVAILABLE then
      local headers = response_handle:headers()
      headers:replace("grpc-status", UNAVAILABLE)
      local message = trailers:get("grpc-message")
      if message ~= nil then
        headers:replace("grpc-message", message)
      end
    end
  end
end
