-- Leases up to `limit` due deliveries of one shard's outbox to `owner` until
-- `lease_end`: their scores move to the lease's end, so other processes skip them until
-- it passes, and the lease owners hash names who may report their outcome.
--
-- KEYS, in order:
--   outbox                      the destination's outbox in this shard
--   owners                      the shard's lease owners hash
-- ARGV, in order:
--   now                         (ms) entries due at or before it are taken
--   lease_end                   (ms)
--   limit                       most entries taken
--   owner                       the claiming process's token
--
-- Returns the ids claimed.

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

local outbox = nextkey()
local owners = nextkey()
local now = nextarg()
local lease_end = nextarg()
local limit = tonumber(nextarg())
local owner = nextarg()

local ids = redis.call('ZRANGEBYSCORE', outbox, '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  redis.call('ZADD', outbox, lease_end, id)
  redis.call('HSET', owners, id, owner)
end
return ids
