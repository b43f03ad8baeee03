-- Stores an attempt's outcome if `owner` still holds the delivery's lease. A settled
-- delivery expires after the retention (when there is one), and its status index drops
-- entries last updated before the retention's cutoff.
--
-- KEYS, in order:
--   outbox                      the destination's outbox in this shard
--   owners                      the shard's lease owners hash
--   delivery                    the delivery's key
--   pending                     the shard's pending-status index
--   status_index                the index of the delivery's new status
-- ARGV, in order:
--   owner                       the reporting process's token
--   id                          the delivery's id
--   bytes                       the encoded delivery, as it now is
--   still_pending               '1' when it is to be tried again, else '0'
--   due                         (ms) when it is next tried
--   updated                     (ms) its last update
--   keep_ms                     how long a settled delivery is kept; 0 keeps it for ever
--   drop_before                 (ms) status index entries updated before it are dropped
--
-- Returns 1 when the outcome was stored, 0 when the lease was lost.

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
local delivery = nextkey()
local pending = nextkey()
local status_index = nextkey()
local owner = nextarg()
local id = nextarg()
local bytes = nextarg()
local still_pending = nextarg()
local due = nextarg()
local updated = nextarg()
local keep_ms = tonumber(nextarg())
local drop_before = nextarg()

if redis.call('HGET', owners, id) ~= owner then
  return 0
end
redis.call('HDEL', owners, id)
redis.call('SET', delivery, bytes)
redis.call('ZREM', pending, id)
redis.call('ZADD', status_index, updated, id)
if still_pending == '1' then
  redis.call('ZADD', outbox, due, id)
else
  redis.call('ZREM', outbox, id)
  if keep_ms > 0 then
    redis.call('PEXPIRE', delivery, keep_ms)
    redis.call('ZREMRANGEBYSCORE', status_index, '-inf', '(' .. drop_before)
  end
end
return 1
