-- Store results; a record never replaces one of a later attempt.
-- ARGV: prefix, then per record: id, state, task, queue, attempt, started ("" = none),
--       finished, expires, value, has_value ("1"/"0"), error, has_error ("1"/"0")
local P = ARGV[1]
for i = 2, #ARGV, 12 do
  local id = ARGV[i]
  local key = P .. ':result:' .. id
  local old = redis.call('HGET', key, 'attempt')
  if not old or tonumber(old) <= tonumber(ARGV[i + 4]) then
    redis.call('DEL', key)
    redis.call('HSET', key, 'state', ARGV[i + 1], 'task', ARGV[i + 2], 'queue', ARGV[i + 3],
      'attempt', ARGV[i + 4], 'finished', ARGV[i + 6], 'expires', ARGV[i + 7])
    if ARGV[i + 5] ~= '' then redis.call('HSET', key, 'started', ARGV[i + 5]) end
    if ARGV[i + 9] == '1' then redis.call('HSET', key, 'value', ARGV[i + 8]) end
    if ARGV[i + 11] == '1' then redis.call('HSET', key, 'error', ARGV[i + 10]) end
    redis.call('PEXPIREAT', key, string.format('%.0f', tonumber(ARGV[i + 7]) * 1000))
    redis.call('ZADD', P .. ':result-expiry', ARGV[i + 7], id)
  end
end
return 1
