-- Claims one unit of the first cap with room, on a Redis Cluster, where a click's cap
-- counters (in their link's slot) and the click (in its own shard's) cannot share one
-- script: the click is written next, with the choice taken.
--
-- KEYS: per choice, its cap counter (any key of the same slot for a choice without a cap)
-- ARGV, in order:
--   cap_ttl                     how long a cap counter is kept (seconds)
--   per choice: cap (0 for none)
--
-- Returns the choice taken, counted from 1, or 0 when every cap is full.

local cap_ttl = nextarg()
for choice = 1, #KEYS do
  local cap_key = nextkey()
  local cap = tonumber(nextarg())
  if cap == 0 then
    return choice
  end
  if tonumber(redis.call('GET', cap_key) or '0') < cap then
    redis.call('INCR', cap_key)
    redis.call('EXPIRE', cap_key, cap_ttl)
    return choice
  end
end
return 0
