-- Drop a claimed or stored key. ARGV: key. Returns how many keys were deleted (0 or 1).
return redis.call('DEL', ARGV[1])
