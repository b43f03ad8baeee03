-- Records one person's click that is subject to daily caps: it takes the first of its
-- choices (offers, in the order the redirect drew them) whose cap has room, moving that
-- cap's counter by one, or the fallback when every cap is full. The check, the count and
-- the click's own write are one step, so a cap admits exactly its number of clicks
-- however many processes share this Redis. A minted click is never stored yet, so the
-- click is written without looking.
--
-- KEYS, in order:
--   bucket                      the click's hour bucket
--   counters                    the counters hash of its day
--   counter_days                its shard's counter day index
--   pending                     its shard's pending-status index
--   per interned value: its key
--   per delivery: delivery, outbox (of its destination)
--   per choice: its cap counter (any key for a choice without a cap)
-- ARGV, in order:
--   click_id
--   bucket_expiry               when the bucket expires (unix seconds)
--   day                         the day it counts in (of the counters)
--   fallback_record             the record when every cap is full
--   link_field                  the link's counter field
--   cap_ttl                     how long a cap counter is kept (seconds)
--   intern_count
--     per interned value: bytes, ttl (seconds)
--   delivery_count
--     per delivery: id, bytes, due (ms)
--   choice_count
--     per choice: cap (0 for none), record, offer field (its offer's counter field)
--
-- Returns the choice taken, counted from 1, or 0 for the fallback.

local bucket = nextkey()
local counters = nextkey()
local counter_days = nextkey()
local pending = nextkey()
local click_id = nextarg()
local bucket_expiry = nextarg()
local day = nextarg()
local record = nextarg()
local link_field = nextarg()
local cap_ttl = nextarg()

store_interns()
enqueue_deliveries(pending)

local taken = 0
local choice_count = tonumber(nextarg())
for choice = 1, choice_count do
  local cap_key = nextkey()
  local cap = tonumber(nextarg())
  local choice_record = nextarg()
  local offer_field = nextarg()
  if taken == 0 then
    if cap == 0 or tonumber(redis.call('GET', cap_key) or '0') < cap then
      if cap > 0 then
        redis.call('INCR', cap_key)
        redis.call('EXPIRE', cap_key, cap_ttl)
      end
      taken = choice
      record = choice_record
      redis.call('HINCRBY', counters, offer_field, 1)
    end
  end
end

redis.call('HSET', bucket, click_id, record)
redis.call('EXPIREAT', bucket, bucket_expiry)
redis.call('HINCRBY', counters, link_field, 1)
redis.call('ZADD', counter_days, day, day)
return taken
