-- Stores a link and tells the other processes, in one step: no change goes unheard.
--
-- KEYS, in order:
--   links                       the link catalog (a hash, `network/slug` → link)
-- ARGV, in order:
--   key                         the link's `network/slug`
--   link                        the encoded link
--   channel                     where changes are published
--
-- Returns nothing.

local links = KEYS[1]
local key = ARGV[1]
local link = ARGV[2]
local channel = ARGV[3]

redis.call('HSET', links, key, link)
redis.call('PUBLISH', channel, key)
