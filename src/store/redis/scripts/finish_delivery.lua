if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[1] then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[2])
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[2])
else
  redis.call('ZREM', KEYS[1], ARGV[2])
  local keep = tonumber(ARGV[7])
  if keep > 0 then
    redis.call('PEXPIRE', KEYS[3], keep)
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', string.format('(%d', tonumber(ARGV[6]) - keep))
  end
end
return 1
