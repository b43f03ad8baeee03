-- Stores a conversion unless present and, only if it was new, indexes and counts it and
-- enqueues its deliveries.
--
-- KEYS, in order:
--   conversion                  the conversion's own key
--   times                       its shard's time index
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

local k = 0
local function nextkey()
  k = k + 1
  return KEYS[k]
end
local i = 0
local function nextarg()
  i = i + 1
  return ARGV[i]
end

local conversion = nextkey()
local times = nextkey()
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
local delivery_count = tonumber(nextarg())
for _ = 1, delivery_count do
  local delivery = nextkey()
  local outbox = nextkey()
  local id = nextarg()
  local delivery_bytes = nextarg()
  local due = nextarg()
  redis.call('SET', delivery, delivery_bytes)
  redis.call('ZADD', outbox, due, id)
  redis.call('ZADD', pending, due, id)
end
local counter_count = tonumber(nextarg())
for _ = 1, counter_count do
  local field = nextarg()
  local delta = nextarg()
  redis.call('HINCRBY', counters, field, delta)
end
redis.call('ZADD', counter_days, day, day)
return 1
