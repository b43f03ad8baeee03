-- Puts a dead-lettered delivery back in the queue, unless it changed since it was read.
--
-- KEYS, in order:
--   delivery                    the delivery's key
--   outbox                      its destination's outbox in this shard
--   old_status_index            the index of the status it had
--   pending                     the shard's pending-status index
-- ARGV, in order:
--   old_bytes                   the encoded delivery as it was read
--   new_bytes                   the encoded delivery, pending again
--   id                          the delivery's id
--   now                         (ms) when it is due and last updated
--
-- Returns 1 when requeued, 0 when the delivery changed meanwhile.

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

local delivery = nextkey()
local outbox = nextkey()
local old_status_index = nextkey()
local pending = nextkey()
local old_bytes = nextarg()
local new_bytes = nextarg()
local id = nextarg()
local now = nextarg()

if redis.call('GET', delivery) ~= old_bytes then
  return 0
end
redis.call('SET', delivery, new_bytes)
redis.call('ZREM', old_status_index, id)
redis.call('ZADD', pending, now, id)
redis.call('ZADD', outbox, now, id)
return 1
