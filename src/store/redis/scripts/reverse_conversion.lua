-- Reverses a stored conversion once: keeps when it was reversed, takes its counters back
-- (never below zero) and enqueues its reversal's deliveries.
--
-- KEYS, in order:
--   conversion                  the conversion's own key
--   reversals                   its shard's reversals hash
--   counters                    the counters hash of the day it counted in
--   counter_days                its shard's counter day index
--   pending                     its shard's pending-status index
--   per delivery: delivery, outbox (of its destination)
-- ARGV, in order:
--   conversion_id
--   at                          when it was reversed (ms)
--   day                         the day it counted in
--   delivery_count
--     per delivery: id, bytes, due (ms)
--   counter_count
--     per counter: field, delta (negative: what is taken back)
--
-- Returns 1 when reversed now, 2 when it was reversed before (nothing changes), 0 when
-- no such conversion is stored.


local conversion = nextkey()
local reversals = nextkey()
local counters = nextkey()
local counter_days = nextkey()
local pending = nextkey()
local conversion_id = nextarg()
local at = nextarg()
local day = nextarg()

if redis.call('EXISTS', conversion) == 0 then
  return 0
end
if redis.call('HSETNX', reversals, conversion_id, at) == 0 then
  return 2
end
enqueue_deliveries(pending)
local counter_count = tonumber(nextarg())
for _ = 1, counter_count do
  local field = nextarg()
  local delta = nextarg()
  -- A counter that lost part of its history (a Redis restored from an older copy) stays
  -- at zero instead of turning negative.
  if redis.call('HINCRBY', counters, field, delta) < 0 then
    redis.call('HSET', counters, field, 0)
  end
end
redis.call('ZADD', counter_days, day, day)
return 1
