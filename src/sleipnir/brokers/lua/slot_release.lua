-- Give back a holder's slot; 1 if it held a live one (by the caller's clock), else 0.
-- ARGV: zset key, holder, now
local score = redis.call('ZSCORE', ARGV[1], ARGV[2])
if not score then
  return 0
end
redis.call('ZREM', ARGV[1], ARGV[2])
if tonumber(score) > tonumber(ARGV[3]) then
  return 1
end
return 0
