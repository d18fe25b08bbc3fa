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

function envoy_on_response(response_handle)
  if response_handle:metadata():get("hold") then
    response_handle:body()
  end
end
