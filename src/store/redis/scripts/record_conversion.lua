-- Stores a conversion unless present and, only if it was new, indexes it (by time and by
-- click), counts it and enqueues its deliveries.
--
-- KEYS, in order:
--   conversion                  the conversion's own key
--   times                       its shard's time index
--   by_click                    its click's conversions
--   counters                    the counters hash of its day
--   counter_days                its shard's counter day index
--   pending                     its shard's pending-status index
--   per delivery: delivery, outbox (of its destination)
-- ARGV, in order:
--   bytes                       the encoded conversion
--   at                          its time (ms)
--   conversion_id
--   day                         the day it counts in
--   delivery_count
--     per delivery: id, bytes, due (ms)
--   counter_count
--     per counter: field, delta
--
-- Returns 1 when the conversion was new, 0 when it was already stored.


local conversion = nextkey()
local times = nextkey()
local by_click = nextkey()
local counters = nextkey()
local counter_days = nextkey()
local pending = nextkey()
local bytes = nextarg()
local at = nextarg()
local conversion_id = nextarg()
local day = nextarg()

if not redis.call('SET', conversion, bytes, 'NX') then
  return 0
end
redis.call('ZADD', times, at, conversion_id)
redis.call('ZADD', by_click, at, conversion_id)
enqueue_deliveries(pending)
add_counters(counters, counter_days, day)
return 1
