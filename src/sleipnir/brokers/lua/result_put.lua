-- Store results; a record never replaces one of a later attempt.
-- ARGV: prefix, then per record: id, state, task, queue, attempt, started ("" = none),
--       finished, expires, value, has_value ("1"/"0"), error, has_error ("1"/"0")
local P = ARGV[1]
local expiry = {}
for i = 2, #ARGV, 12 do
  local id = ARGV[i]
  local key = P .. ':result:' .. id
  local old = redis.call('HGET', key, 'attempt')
  if not old or tonumber(old) <= tonumber(ARGV[i + 4]) then
    -- one HSET with every field (after a DEL only when an older record is replaced)
    if old then redis.call('DEL', key) end
    local fields = { 'state', ARGV[i + 1], 'task', ARGV[i + 2], 'queue', ARGV[i + 3],
      'attempt', ARGV[i + 4], 'finished', ARGV[i + 6], 'expires', ARGV[i + 7] }
    if ARGV[i + 5] ~= '' then
      fields[#fields + 1] = 'started'
      fields[#fields + 1] = ARGV[i + 5]
    end
    if ARGV[i + 9] == '1' then
      fields[#fields + 1] = 'value'
      fields[#fields + 1] = ARGV[i + 8]
    end
    if ARGV[i + 11] == '1' then
      fields[#fields + 1] = 'error'
      fields[#fields + 1] = ARGV[i + 10]
    end
    redis.call('HSET', key, unpack(fields))
    redis.call('PEXPIREAT', key, string.format('%.0f', tonumber(ARGV[i + 7]) * 1000))
    expiry[#expiry + 1] = ARGV[i + 7]
    expiry[#expiry + 1] = id
  end
end
for i = 1, #expiry, 1000 do
  redis.call('ZADD', P .. ':result-expiry', unpack(expiry, i, math.min(i + 999, #expiry)))
end
return 1
