-- Lease up to `limit` jobs from the queues, in the order given.
-- First, per queue, due scheduled jobs and expired leases go back to ready in their
-- original FIFO place: this is how a dead worker's jobs come back, with no daemon. An
-- expired lease also raises the job's `lost` count, here and only here.
-- ARGV: prefix, now ("" = the server's), lease end ("+seconds" from now, or absolute),
-- token, limit, queue...
-- Returns a flat list: id, queue, priority, attempt, lost, body for each leased job, then
-- the lease end and, when fewer than `limit` jobs were leased, the seconds until the
-- earliest due time or lease end in the queues ("" when there is none): an idle worker
-- waits that long at most, without asking again.
local P, now, token = ARGV[1], clock(ARGV[2]), ARGV[4]
local lease_until = at(now, ARGV[3])
local limit = tonumber(ARGV[5])
local out = {}
local next_due = nil
local peeked = {}  -- keys whose first entry stands as next_due's candidate
for qi = 6, #ARGV do
  if limit <= 0 then break end
  local q = ARGV[qi]
  local ready, since = P .. ':ready:' .. q, P .. ':since:' .. q
  for _, kind in ipairs({ 'sched', 'lease' }) do
    local key = P .. ':' .. kind .. ':' .. q
    -- a peek first: on an idle queue that is the only call, and it gives next_due
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[1] and tonumber(first[2]) > now then
      local s = tonumber(first[2])
      if not next_due or s < next_due then next_due = s end
    elseif first[1] then
      peeked[#peeked + 1] = key
      local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1000)
      for i = 1, #due, 2 do
        local id = due[i]
        local f = redis.call('HMGET', P .. ':job:' .. id, 'pri', 'seq')
        redis.call('ZREM', key, id)
        if f[1] then
          if kind == 'lease' then
            redis.call('HSET', P .. ':job:' .. id, 'token', '0')
            redis.call('HINCRBY', P .. ':job:' .. id, 'lost', 1)
          end
          redis.call('ZADD', ready,
            string.format('%.0f', -tonumber(f[1]) * 17592186044416 + tonumber(f[2])), id)
          redis.call('ZADD', since, due[i + 1], id)
        end
      end
    end
  end
  local popped = redis.call('ZPOPMIN', ready, limit)
  -- since and lease are changed with one variadic call per 500 jobs, not one per job
  local gone, leased = {}, {}
  for i = 1, #popped, 2 do
    local id = popped[i]
    local key = P .. ':job:' .. id
    gone[#gone + 1] = id
    -- An id whose hash is gone (deleted by hand, or evicted) is dropped, not leased:
    -- there is no body to run.
    local f = redis.call('HMGET', key, 'pri', 'body', 'lost')
    if f[2] then
      local attempt = redis.call('HINCRBY', key, 'attempt', 1)
      redis.call('HSET', key, 'token', token)
      leased[#leased + 1] = lease_until
      leased[#leased + 1] = id
      out[#out + 1] = id
      out[#out + 1] = q
      out[#out + 1] = f[1]
      out[#out + 1] = attempt
      out[#out + 1] = f[3] or 0  -- absent until a lease of the job runs out
      out[#out + 1] = f[2]
      limit = limit - 1
    end
  end
  for i = 1, #gone, 500 do
    redis.call('ZREM', since, unpack(gone, i, math.min(i + 499, #gone)))
  end
  for i = 1, #leased, 1000 do
    redis.call('ZADD', P .. ':lease:' .. q, unpack(leased, i, math.min(i + 999, #leased)))
  end
end
local wait = ''
if limit > 0 then
  -- keys that had due entries: what is left in them (more than 1000 due: at once)
  for _, key in ipairs(peeked) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[1] then
      local s = tonumber(first[2])
      if not next_due or s < next_due then next_due = s end
    end
  end
  if next_due then wait = string.format('%.17g', math.max(0, next_due - now)) end
end
-- numbers as strings: a Lua number in a reply becomes an integer
out[#out + 1] = string.format('%.17g', lease_until)
out[#out + 1] = wait
return out
