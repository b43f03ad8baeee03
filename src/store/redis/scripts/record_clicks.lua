local missing = 0
local a = 2
for i = 1, tonumber(ARGV[1]) do
  if redis.call('EXISTS', KEYS[tonumber(ARGV[a])]) == 0 then
    missing = missing + 1
  end
  a = a + 1
end
if missing > 0 then
  return missing
end
local sums = {}
local order = {}
local n = tonumber(ARGV[a])
a = a + 1
for i = 1, n do
  if redis.call('HSETNX', KEYS[tonumber(ARGV[a])], ARGV[a + 1], ARGV[a + 2]) == 1 then
    local slot = ARGV[a + 3] .. '|' .. ARGV[a + 4]
    if sums[slot] then
      sums[slot][3] = sums[slot][3] + 1
    else
      sums[slot] = {tonumber(ARGV[a + 3]), ARGV[a + 4], 1}
      order[#order + 1] = slot
    end
  end
  a = a + 5
end
for _, slot in ipairs(order) do
  local s = sums[slot]
  redis.call('HINCRBY', KEYS[s[1]], s[2], s[3])
end
n = tonumber(ARGV[a])
a = a + 1
for i = 1, n do
  redis.call('SET', KEYS[tonumber(ARGV[a])], ARGV[a + 1], 'EX', ARGV[a + 2])
  a = a + 3
end
n = tonumber(ARGV[a])
a = a + 1
for i = 1, n do
  redis.call('EXPIREAT', KEYS[tonumber(ARGV[a])], ARGV[a + 1])
  a = a + 2
end
for i = a, #ARGV, 2 do
  redis.call('ZADD', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 1])
end
return 0
