local seq = redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[1], string.format('%d|', seq) .. ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
return seq
