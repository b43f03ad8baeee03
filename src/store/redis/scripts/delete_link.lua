-- Deletes a link and, if there was one, tells the other processes, in one step.
--
-- KEYS, in order:
--   links                       the link catalog (a hash, `network/slug` → link)
-- ARGV, in order:
--   key                         the link's `network/slug`
--   channel                     where changes are published
--
-- Returns 1 when a link was deleted, 0 when there was none.

local links = KEYS[1]
local key = ARGV[1]
local channel = ARGV[2]

local removed = redis.call('HDEL', links, key)
if removed > 0 then
  redis.call('PUBLISH', channel, key)
end
return removed
