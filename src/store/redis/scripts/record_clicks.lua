-- Records a batch of clicks, each unless present, and counts the new ones.
--
-- Keys are deduplicated (many clicks share a bucket or a counters hash), so KEYS holds
-- each key once and arguments name a key by its index in KEYS (a "key index" below).
-- On a cluster a batch holds one shard's clicks, so all its keys are in one slot.
--
-- KEYS: every hour bucket, counters hash, counter day index and interned value the
--       batch touches, in any order.
-- ARGV, in order:
--   named_count                       interned values named but not sent
--     per value: key index
--   click_count
--     per click: bucket (key index), click id, record,
--                counters (key index), counter field,
--                offer field (the same counter of the click's offer, `network/slug/offer`;
--                empty when the click went to no offer)
--   sent_count                        interned values sent with their bytes
--     per value: key index, bytes, ttl (seconds)
--   bucket_count                      hour buckets whose expiry is (re-)armed
--     per bucket: key index, expiry (unix seconds)
--   day_count                         days listed in their counter day index
--     per day: day index (key index), day
--
-- Returns how many named interned values are missing: when any is, nothing is written
-- (the caller sends the batch again with the values). Counter increments are summed
-- first: one HINCRBY per field, not per click.
--
-- A click's six arguments are taken with one call, which keeps the per-click cost of
-- naming them at that of indexing ARGV.

-- The key the next argument names by its index.
local function namedkey()
  return KEYS[tonumber(nextarg())]
end

local missing = 0
local named_count = tonumber(nextarg())
for _ = 1, named_count do
  if redis.call('EXISTS', namedkey()) == 0 then
    missing = missing + 1
  end
end
if missing > 0 then
  return missing
end

-- Per counters hash and field: the hash, the field and how many new clicks it counts,
-- in the order first seen.
local sums = {}
local order = {}
local click_count = tonumber(nextarg())
local function count(counters_index, field)
  local slot = counters_index .. '|' .. field
  local sum = sums[slot]
  if sum then
    sum.count = sum.count + 1
  else
    sums[slot] = {counters = KEYS[tonumber(counters_index)], field = field, count = 1}
    order[#order + 1] = slot
  end
end
for _ = 1, click_count do
  local bucket_index, click_id, record, counters_index, field, offer_field = nextargs(6)
  if redis.call('HSETNX', KEYS[tonumber(bucket_index)], click_id, record) == 1 then
    count(counters_index, field)
    if offer_field ~= '' then
      count(counters_index, offer_field)
    end
  end
end
for _, slot in ipairs(order) do
  local sum = sums[slot]
  redis.call('HINCRBY', sum.counters, sum.field, sum.count)
end

local sent_count = tonumber(nextarg())
for _ = 1, sent_count do
  local key = namedkey()
  local bytes = nextarg()
  local ttl = nextarg()
  redis.call('SET', key, bytes, 'EX', ttl)
end

local bucket_count = tonumber(nextarg())
for _ = 1, bucket_count do
  local bucket = namedkey()
  local expiry = nextarg()
  redis.call('EXPIREAT', bucket, expiry)
end

local day_count = tonumber(nextarg())
for _ = 1, day_count do
  local day_index = namedkey()
  local day = nextarg()
  redis.call('ZADD', day_index, day, day)
end
return 0
