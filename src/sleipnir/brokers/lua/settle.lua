-- Act on reservations: renew, ack, nack (retry or dead letter) or release.
-- A reservation counts only while its token matches and its lease has not run out;
-- otherwise the item answers 0 and nothing changes (the job may be another's now).
-- ARGV: prefix, op, now ("" = the server's), then per item: id, token, when, reason.
-- `when` is the new lease end (renew), the retry time (nack; "" = dead letter) or the
-- release time ("" = now), each "+seconds" from now or absolute. A release with a time
-- still to come waits in sched, like a retry, but with its attempt not counted and no
-- error set. A job put in sched wakes an idle worker, which learns its due time.
local P, op = ARGV[1], ARGV[2]
local now_n = clock(ARGV[3])
local out = {}
local wake = {}
for i = 4, #ARGV, 4 do
  local id, token, when, reason = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = P .. ':job:' .. id
  local f = redis.call('HMGET', key, 'token', 'queue', 'pri', 'seq')
  local ok = 0
  if f[1] == token then
    local q = f[2]
    local lease = P .. ':lease:' .. q
    local ends = redis.call('ZSCORE', lease, id)
    if ends and tonumber(ends) > now_n then
      ok = 1
      local due = when ~= '' and at(now_n, when)
      if op == 'renew' then
        redis.call('ZADD', lease, due, id)
      else
        redis.call('ZREM', lease, id)
        if op == 'ack' then
          redis.call('DEL', key)
        elseif op == 'release' then
          redis.call('HINCRBY', key, 'attempt', -1)
          redis.call('HSET', key, 'token', '0')
          if due and due > now_n then
            redis.call('ZADD', P .. ':sched:' .. q, due, id)
          else
            redis.call('ZADD', P .. ':ready:' .. q,
              string.format('%.0f', -tonumber(f[3]) * 17592186044416 + tonumber(f[4])), id)
            redis.call('ZADD', P .. ':since:' .. q, now_n, id)
          end
          wake[q] = true
        elseif not due then
          redis.call('HSET', key, 'token', '0', 'err', reason, 'dead', now_n)
          redis.call('ZADD', P .. ':dead:' .. q, now_n, id)
        else
          redis.call('HSET', key, 'token', '0', 'err', reason)
          redis.call('ZADD', P .. ':sched:' .. q, due, id)
          wake[q] = true
        end
      end
    end
  end
  out[#out + 1] = ok
end
for q, _ in pairs(wake) do
  if redis.call('LPUSH', P .. ':wake:' .. q, 1) > 1 then
    redis.call('LTRIM', P .. ':wake:' .. q, 0, 0)
  end
end
return out
