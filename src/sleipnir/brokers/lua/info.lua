-- Where one job stands. ARGV: prefix, now ("" = the server's), id.
-- Returns {queue, state, attempt, err} or nil.
local P, now_n, id = ARGV[1], clock(ARGV[2]), ARGV[3]
local f = redis.call('HMGET', P .. ':job:' .. id, 'queue', 'attempt', 'err', 'dead', 'token')
if not f[1] then return false end
local q, state = f[1], 'ready'
if f[4] then
  state = 'dead'
elseif f[5] ~= '0' then
  local ends = redis.call('ZSCORE', P .. ':lease:' .. q, id)
  if ends and tonumber(ends) > now_n then state = 'reserved' end
else
  local due = redis.call('ZSCORE', P .. ':sched:' .. q, id)
  if due and tonumber(due) > now_n then state = 'scheduled' end
end
return { q, state, f[2], f[3] or '' }
