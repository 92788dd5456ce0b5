-- Dead letters back to their queues or deleted, or a queue purged.
-- ARGV: prefix, op ("retry" | "delete" | "purge"), now ("" = the server's), then ids (or,
-- for purge, the queue)
-- retry/delete return the ids acted on; purge returns {count}.
local P, op, now = ARGV[1], ARGV[2], clock(ARGV[3])
if op == 'purge' then
  local q, n = ARGV[4], 0
  for _, kind in ipairs({ 'ready', 'sched' }) do
    local key = P .. ':' .. kind .. ':' .. q
    local ids = redis.call('ZRANGE', key, 0, -1)
    for _, id in ipairs(ids) do redis.call('DEL', P .. ':job:' .. id) end
    n = n + #ids
    redis.call('DEL', key)
  end
  redis.call('DEL', P .. ':since:' .. q)
  local lease = P .. ':lease:' .. q
  local expired = redis.call('ZRANGEBYSCORE', lease, '-inf', now)
  for _, id in ipairs(expired) do
    redis.call('DEL', P .. ':job:' .. id)
    redis.call('ZREM', lease, id)
  end
  return { n + #expired }
end
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local key = P .. ':job:' .. id
  local f = redis.call('HMGET', key, 'queue', 'dead', 'pri')
  if f[1] and f[2] then
    local q = f[1]
    redis.call('ZREM', P .. ':dead:' .. q, id)
    if op == 'delete' then
      redis.call('DEL', key)
    else
      local seq = redis.call('INCR', P .. ':seq')
      redis.call('HDEL', key, 'dead', 'err', 'lost')
      redis.call('HSET', key, 'attempt', 0, 'token', '0', 'seq', seq, 'at', now)
      redis.call('ZADD', P .. ':ready:' .. q,
        string.format('%.0f', -tonumber(f[3]) * 17592186044416 + seq), id)
      redis.call('ZADD', P .. ':since:' .. q, now, id)
      redis.call('LPUSH', P .. ':wake:' .. q, 1)
      redis.call('LTRIM', P .. ':wake:' .. q, 0, 0)
    end
    out[#out + 1] = id
  end
end
return out
