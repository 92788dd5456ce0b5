-- Claim a key unless a live claim holds it (set-if-absent, with an expiry read
-- from the caller's clock). Returns the holding claim's value, or false when
-- this call claimed the key.
-- ARGV: key, value, expires_at, now
local key = ARGV[1]
local held = redis.call('HMGET', key, 'value', 'expires')
if held[1] and tonumber(held[2]) > tonumber(ARGV[4]) then
  return held[1]
end
redis.call('DEL', key)
redis.call('HSET', key, 'value', ARGV[2], 'expires', ARGV[3])
redis.call('PEXPIREAT', key, string.format('%.0f', tonumber(ARGV[3]) * 1000 + 1))
return false
