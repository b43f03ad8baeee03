local n = tonumber(ARGV[4])
local id = ARGV[5 + 3 * n]
local m = tonumber(ARGV[6 + 3 * n])
for i = 1, m do
  redis.call('SET', KEYS[4 + 2 * n + i], ARGV[5 + 3 * n + 2 * i], 'EX', ARGV[6 + 3 * n + 2 * i])
end
if redis.call('HSETNX', KEYS[1], id, ARGV[1]) == 0 then
  return 0
end
redis.call('EXPIREAT', KEYS[1], ARGV[2])
for i = 1, n do
  local a = 4 + (i - 1) * 3
  local k = 4 + (i - 1) * 2
  redis.call('SET', KEYS[k + 1], ARGV[a + 2])
  redis.call('ZADD', KEYS[k + 2], ARGV[a + 3], ARGV[a + 1])
  redis.call('ZADD', KEYS[4], ARGV[a + 3], ARGV[a + 1])
end
for i = 7 + 3 * n + 2 * m, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[3])
return 1
