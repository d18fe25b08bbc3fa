-- Envoy Lua filter, after the body is buffered (and inflated) and before the gRPC-JSON transcoder: a REST body that
-- cannot fit its method's message cap once transcoded is refused here, 413 `request_too_large`, before Envoy spends
-- seconds and hundreds of MB transcoding it. The cap is the contract's `max_message_bytes`, set on the method's
-- routes as metadata (envoy.yaml; gateway/envoy.py checks it against the contract); the server refuses a larger
-- message itself, unparsed, whichever way it comes (service/message_bounds.py), so this is only the early answer.
--
-- A JSON number grows 5.5 times as protobuf: `1,` (2 bytes) is an 11-byte google.protobuf.Value in a ListValue
-- (the element's tag and length, the Value's tag and an 8-byte double), and any other array element takes at least
-- 4 bytes. The scan counts the elements of arrays (and the members of objects inside them) outside strings, so the
-- size it sums is a lower bound of the transcoded message: it refuses only bodies the server would refuse. It reads
-- the body in 64 KiB pieces, ~30 ms for 13 MiB. A body of at most cap / 6 bytes cannot reach the cap: not
-- scanned.

-- The cap comes from the route's metadata under this filter's name in envoy.yaml (body_checks).
local NAMESPACE = "embeddings.gateway"
local PIECE = 65536
local NUMBER_BYTES = 11
local ELEMENT_BYTES = 4
local MAX_GROWTH = 6

local QUOTE, BACKSLASH, COMMA, COLON = 34, 92, 44, 58
local OPEN_ARRAY, CLOSE_ARRAY, CLOSE_OBJECT = 91, 93, 125
local SPACE, TAB, LF, CR = 32, 9, 10, 13
local MINUS, ZERO, NINE = 45, 48, 57

-- (numbers, other elements) in the arrays of the first `length` bytes of `body`, outside strings.
local function count_elements(body, length)
  local byte = string.byte
  local numbers, others, depth = 0, 0, 0
  local in_string, escaped, expecting = false, false, false
  for offset = 0, length - 1, PIECE do
    local piece = body:getBytes(offset, math.min(PIECE, length - offset))
    for i = 1, #piece do
      local c = byte(piece, i)
      if in_string then
        if escaped then
          escaped = false
        elseif c == BACKSLASH then
          escaped = true
        elseif c == QUOTE then
          in_string = false
        end
      elseif c ~= SPACE and c ~= LF and c ~= CR and c ~= TAB then
        if expecting then
          expecting = false
          if (c >= ZERO and c <= NINE) or c == MINUS then
            numbers = numbers + 1
          elseif c ~= CLOSE_ARRAY and c ~= CLOSE_OBJECT then
            others = others + 1
          end
        end
        if c == QUOTE then
          in_string = true
        elseif c == OPEN_ARRAY then
          depth = depth + 1
          expecting = true
        elseif c == CLOSE_ARRAY then
          if depth > 0 then
            depth = depth - 1
          end
        elseif depth > 0 and (c == COMMA or c == COLON) then
          expecting = true
        end
      end
    end
  end
  return numbers, others
end

local function mib(bytes)
  return string.format("%g MiB", bytes / 1048576)
end

function envoy_on_request(handle)
  local cap = handle:metadata():get("max_message_bytes")
  local content_type = handle:headers():get("content-type") or ""
  if cap == nil or string.find(content_type, "application/grpc", 1, true) == 1 then
    return
  end
  local body = handle:body()
  if body == nil or body:length() * MAX_GROWTH <= cap then
    return
  end
  local numbers, others = count_elements(body, body:length())
  local at_least = numbers * NUMBER_BYTES + others * ELEMENT_BYTES
  if at_least <= cap then
    return
  end
  handle:streamInfo():dynamicMetadata():set(NAMESPACE, "refused", "message_too_large")
  handle:respond(
    { [":status"] = "413", ["content-type"] = "text/plain" },
    string.format(
      "The request is too large: its input holds %d token ids (numbers) and %d other array elements, at least %d "
        .. "bytes once transcoded to protobuf, over the %s this route takes. Send fewer or shorter inputs per "
        .. "request, or use an async job.",
      numbers,
      others,
      at_least,
      mib(cap)
    )
  )
end
