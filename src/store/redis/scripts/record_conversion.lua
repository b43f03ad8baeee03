if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
local n = tonumber(ARGV[5])
for i = 1, n do
  local a = 5 + (i - 1) * 3
  local k = 5 + (i - 1) * 2
  redis.call('SET', KEYS[k + 1], ARGV[a + 2])
  redis.call('ZADD', KEYS[k + 2], ARGV[a + 3], ARGV[a + 1])
  redis.call('ZADD', KEYS[5], ARGV[a + 3], ARGV[a + 1])
end
for i = 6 + 3 * n, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
end
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[4])
return 1
