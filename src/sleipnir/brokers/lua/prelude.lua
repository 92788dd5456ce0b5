-- Run before every script (redis_link.Script). ARGV[1] is the request's deadline in the
-- server's time ("" = none), taken off ARGV here: a request that reaches Redis after its
-- caller gave up (it sat in a stalled server's receive buffer) changes nothing.
-- clock(v) is the script's "now": the server's TIME when v is "", else v, the caller's
-- injected clock (tests). at(now, v) is a time given as "+seconds" from now, or absolute.
-- Redis 5 and 6 replicate a script that read TIME only by its effects, and only if asked.
if redis.replicate_commands then redis.replicate_commands() end
local sleipnir_time = redis.call('TIME')
local server_now = tonumber(sleipnir_time[1]) + tonumber(sleipnir_time[2]) / 1000000
local deadline = table.remove(ARGV, 1)
if deadline ~= '' and server_now > tonumber(deadline) then
  return redis.error_reply('LATE the request reached Redis after its caller gave up')
end
local function clock(v)
  if v == '' then return server_now end
  return tonumber(v)
end
local function at(now, v)
  if string.sub(v, 1, 1) == '+' then return now + tonumber(string.sub(v, 2)) end
  return tonumber(v)
end
