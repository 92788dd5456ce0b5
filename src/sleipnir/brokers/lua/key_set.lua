-- Store a key whatever holds it (beside the claims of claim.lua, in the same hash).
-- ARGV: key, value, expires_at
local key = ARGV[1]
redis.call('DEL', key)
redis.call('HSET', key, 'value', ARGV[2], 'expires', ARGV[3])
redis.call('PEXPIREAT', key, string.format('%.0f', tonumber(ARGV[3]) * 1000 + 1))
return 1
