-- Records one person's click that some destination forwards: the storage of
-- record_clicks.lua plus the click's deliveries, in one step. Used only when a
-- destination asked for clicks, so it keeps to one click and always writes the interned
-- values (re-arming their expiry even when the click is a duplicate).
--
-- KEYS, in order:
--   bucket                      the click's hour bucket
--   counters                    the counters hash of its day
--   counter_days                its shard's counter day index
--   pending                     its shard's pending-status index
--   per interned value: its key
--   per delivery: delivery, outbox (of its destination)
-- ARGV, in order:
--   click_id
--   record                      the compact click record
--   bucket_expiry               when the bucket expires (unix seconds)
--   day                         the day it counts in
--   intern_count
--     per interned value: bytes, ttl (seconds)
--   delivery_count
--     per delivery: id, bytes, due (ms)
--   counter_count
--     per counter: field, delta
--
-- Returns 1 when the click was new, 0 when it was already stored.


local bucket = nextkey()
local counters = nextkey()
local counter_days = nextkey()
local pending = nextkey()
local click_id = nextarg()
local record = nextarg()
local bucket_expiry = nextarg()
local day = nextarg()

store_interns()
if redis.call('HSETNX', bucket, click_id, record) == 0 then
  return 0
end
redis.call('EXPIREAT', bucket, bucket_expiry)
enqueue_deliveries(pending)
add_counters(counters, counter_days, day)
return 1
