-- Envoy Lua filter, placed before the gRPC-JSON transcoder: every error the gRPC server returns to a REST
-- client becomes OpenAI's envelope {"error": {"message", "type", "param", "code"}}, and no grpc-* header
-- reaches REST clients. Native gRPC responses (content-type application/grpc) pass untouched. Envoy's own
-- replies (bad JSON, unknown route, oversized body, upstream down) are shaped by local_reply_config instead.
--
-- With convert_grpc_status the transcoder turns a gRPC error into google.rpc.Status JSON:
--   {"code":5,"message":"...","details":[{"@type":"...ErrorInfo","reason":"model_not_found",...},
--                                         {"@type":"...BadRequest","field_violations":[{"field":"model",...}]}]}
-- The message is copied as the (already escaped) JSON string it is; reason and field are plain identifiers.

local TYPES = {
  [400] = "invalid_request_error",
  [401] = "authentication_error",
  [403] = "permission_error",
  [404] = "invalid_request_error",
  [409] = "invalid_request_error",
  [413] = "invalid_request_error",
  [429] = "rate_limit_error",
}

-- The raw (still JSON-escaped) contents of the first string value of `key` in `json`.
local function raw_string(json, key)
  local marker = '"' .. key .. '":"'
  local start = string.find(json, marker, 1, true)
  if start == nil then
    return nil
  end
  local first = start + #marker
  local i = first
  while i <= #json do
    local c = string.sub(json, i, i)
    if c == "\\" then
      i = i + 2
    elseif c == '"' then
      return string.sub(json, first, i - 1)
    else
      i = i + 1
    end
  end
  return nil
end

-- Reasons whose HTTP status no gRPC code maps to (the transcoder answers 400 for INVALID_ARGUMENT).
local STATUS_BY_REASON = {
  request_too_large = 413,
}
-- gRPC's own refusal of a message over the server's max_message_bytes (RESOURCE_EXHAUSTED without a reason, which
-- the transcoder makes a 429): a request too large, not a rate limit.
local OVERSIZED_MESSAGE = "Received message larger than max"

local function json_or_null(raw)
  if raw == nil or raw == "" then
    return "null"
  end
  return '"' .. raw .. '"'
end

local function openai_error(status, status_json)
  local message = raw_string(status_json, "message") or ("HTTP " .. status)
  local reason = string.match(status_json, '"reason":"([%w_%.%-]+)"')
  local field = string.match(status_json, '"field":"([%w_%.%-%[%]]+)"')
  if reason == nil and string.find(message, OVERSIZED_MESSAGE, 1, true) ~= nil then
    reason = "request_too_large"
  end
  status = STATUS_BY_REASON[reason] or status
  local kind = TYPES[status] or "server_error"
  local body = '{"error":{"message":"' .. message .. '","type":"' .. kind .. '","param":' .. json_or_null(field)
    .. ',"code":' .. json_or_null(reason) .. "}}"
  return body, status
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local content_type = headers:get("content-type") or ""
  if string.find(content_type, "application/grpc", 1, true) == 1 then
    return
  end
  headers:remove("grpc-status")
  headers:remove("grpc-message")
  headers:remove("grpc-accept-encoding")
  local status = tonumber(headers:get(":status")) or 0
  if status < 400 or string.find(content_type, "application/json", 1, true) ~= 1 then
    return
  end
  local body = handle:body()
  if body == nil then
    return
  end
  local json = body:getBytes(0, body:length())
  if string.find(json, '{"error":', 1, true) == 1 then
    return
  end
  local error_body, error_status = openai_error(status, json)
  body:setBytes(error_body)
  headers = handle:headers()
  headers:replace(":status", tostring(error_status))
  headers:replace("content-type", "application/json")
  headers:remove("grpc-status")
  headers:remove("grpc-message")
end
