-- Store jobs: a hash each, then into ready (due now) or sched (due later); wake idle workers.
-- ARGV: prefix, now ("" = the server's), then per job: id, queue, priority,
-- eta ("" = now, "+seconds" from now, or absolute), body
-- Scores: ready = -priority * 2^44 + seq, formatted with %.0f because Lua's default
-- number-to-string conversion keeps only 14 digits.
local P = ARGV[1]
local now = clock(ARGV[2])
-- written as text once: Redis would format the number again for every job
local now_text = string.format('%.6f', now)
local woken = {}
for i = 3, #ARGV, 5 do
  local id, q, pri, eta, body = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  -- an id already held (stored by an earlier call under the same idempotency key) is
  -- left as it is: never overwritten, whatever state it is in
  if redis.call('EXISTS', P .. ':job:' .. id) == 0 then
    local seq = redis.call('INCR', P .. ':seq')
    redis.call('HSET', P .. ':job:' .. id, 'body', body, 'queue', q, 'pri', pri, 'seq', seq,
      'attempt', 0, 'token', '0', 'at', now_text)
    local due = eta ~= '' and at(now, eta)
    if due and due > now then
      redis.call('ZADD', P .. ':sched:' .. q, due, id)
    else
      redis.call('ZADD', P .. ':ready:' .. q,
        string.format('%.0f', -tonumber(pri) * 17592186044416 + seq), id)
      redis.call('ZADD', P .. ':since:' .. q, now_text, id)
    end
    -- a delayed job wakes a worker too, so that one idle worker learns its due time
    woken[q] = true
  end
end
for q, _ in pairs(woken) do
  redis.call('SADD', P .. ':queues', q)
  -- the list holds at most one element: trim only when this push made it two
  if redis.call('LPUSH', P .. ':wake:' .. q, 1) > 1 then
    redis.call('LTRIM', P .. ':wake:' .. q, 0, 0)
  end
end
return 1
