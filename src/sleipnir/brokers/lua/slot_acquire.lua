-- Take one of `limit` slots of a name: a ZSET holder -> expires_at. Expired slots
-- (by the caller's clock) are dropped first; a holder that has a slot renews it.
-- Returns false when the holder has a slot now, else the earliest expires_at.
-- ARGV: zset key, holder, limit, expires_at, now
local key, holder = ARGV[1], ARGV[2]
redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[5])
if redis.call('ZSCORE', key, holder) then
  redis.call('ZADD', key, 'XX', ARGV[4], holder)
elseif redis.call('ZCARD', key) < tonumber(ARGV[3]) then
  redis.call('ZADD', key, ARGV[4], holder)
else
  return redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]
end
-- The whole name goes when its last slot would have expired, so abandoned names vanish.
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]
redis.call('PEXPIREAT', key, string.format('%.0f', tonumber(last) * 1000 + 1))
return false
