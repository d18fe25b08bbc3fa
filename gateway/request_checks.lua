-- Envoy Lua filter, first on every request: two checks on the headers, before anything reads the body.
--
-- 1. A REST (non-gRPC) request may not carry headers that gRPC reserves. Envoy forwards request headers to the
--    server as gRPC metadata, where a `*-bin` header must hold base64 and the `grpc-*` ones (grpc-timeout,
--    grpc-encoding, ...) steer the call: a malformed or hostile one made the server fail the call before it started
--    (500, 501, 504), which in a cluster counted against a healthy replica. Such a request gets 400 in OpenAI's
--    envelope here (envoy.yaml's local_reply_config, matched on the metadata set below), before authentication and
--    before any upstream sees it. Native gRPC calls (content-type application/grpc) keep their metadata: deadlines
--    and binary headers are theirs to send.
-- 2. Native gRPC calls are marked, so that Envoy's own replies to them stay gRPC (grpc-message in plain text).
-- 3. Which requests the pre-body authorization (ext_authz) checks: those whose body may be large, i.e. all but
--    those that declare a body of at most PREAUTHORIZE_ABOVE bytes. A small request is authenticated by the server
--    itself before it reads the request (so Envoy holds at most that much of an unauthenticated caller's body), and
--    skips the extra round trip to the server, which costs about as much as a tiny call (bench/preauth.py).
--    A compressed body (content-encoding) is always checked: its declared length says nothing of what it inflates to.
-- 4. Query parameters that OpenAI-compatible clients add and that mean nothing here (IGNORED_QUERY) are removed from
--    REST requests before the transcoder, which refuses any parameter a method does not declare (400). Azure OpenAI
--    clients add `api-version` to every call.
-- 5. `x-response-compression` (a native gRPC call's ask for gzip-compressed messages, service/compression.py) is
--    removed from REST requests: the transcoder reads the server's messages uncompressed, and REST responses are
--    gzipped by Envoy on `accept-encoding` instead.

local PREAUTHORIZE_ABOVE = 65536
local IGNORED_QUERY = { ["api-version"] = true }
local NAMESPACE = "embeddings.gateway"
local GRPC_ONLY_HEADER = "x-response-compression"

local function reserved(name)
  return string.sub(name, 1, 5) == "grpc-" or string.sub(name, -4) == "-bin"
end

-- The path without the ignored query parameters, or nil when it has none of them.
local function without_ignored_query(path)
  local base, query = string.match(path, "^([^?]*)%?(.*)$")
  if base == nil then
    return nil
  end
  local kept, dropped = {}, false
  for pair in string.gmatch(query, "[^&]+") do
    if IGNORED_QUERY[string.lower(string.match(pair, "^[^=]*"))] then
      dropped = true
    else
      table.insert(kept, pair)
    end
  end
  if not dropped then
    return nil
  end
  if #kept == 0 then
    return base
  end
  return base .. "?" .. table.concat(kept, "&")
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local content_type = headers:get("content-type") or ""
  if string.find(content_type, "application/grpc", 1, true) == 1 then
    -- Envoy's own replies to it must stay gRPC (local_reply_config); the transcoder rewrites content-type of
    -- REST requests to application/grpc, so the request's headers cannot tell later.
    handle:streamInfo():dynamicMetadata():set(NAMESPACE, "native_grpc", true)
  else
    for name, _ in pairs(headers) do
      if reserved(name) then
        handle:streamInfo():dynamicMetadata():set(NAMESPACE, "refused", "reserved_header")
        handle:respond(
          { [":status"] = "400", ["content-type"] = "text/plain" },
          "Header '" .. name .. "' is reserved for gRPC calls: REST requests may not send grpc-* or *-bin headers."
        )
        return
      end
    end
    local path = without_ignored_query(headers:get(":path") or "")
    if path ~= nil then
      headers:replace(":path", path)
    end
    headers:remove(GRPC_ONLY_HEADER)
  end
  local length = tonumber(headers:get("content-length") or "")
  if length == nil or length > PREAUTHORIZE_ABOVE or headers:get("content-encoding") ~= nil then
    handle:streamInfo():dynamicMetadata():set(NAMESPACE, "preauthorize", true)
  end
end
