-- Seconds until the earliest due time of a scheduled job or lease end in the queues, or ""
-- when they have none. What an idle worker waits at most. ARGV: prefix, now ("" = the
-- server's), queue...
local P, now = ARGV[1], clock(ARGV[2])
local next_due = nil
for qi = 3, #ARGV do
  for _, kind in ipairs({ 'sched', 'lease' }) do
    local first = redis.call('ZRANGE', P .. ':' .. kind .. ':' .. ARGV[qi], 0, 0, 'WITHSCORES')
    if first[1] then
      local s = tonumber(first[2])
      if not next_due or s < next_due then next_due = s end
    end
  end
end
if not next_due then return '' end
return string.format('%.17g', math.max(0, next_due - now))
