-- The values of keys set by claim.lua or key_set.lua, in order; false (nil) where a
-- key is missing or expired by the caller's clock.
-- ARGV: now, then the keys
local now = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  local held = redis.call('HMGET', ARGV[i], 'value', 'expires')
  if held[1] and tonumber(held[2]) > now then
    out[i - 1] = held[1]
  else
    out[i - 1] = false
  end
end
return out
