-- Pushes an event, numbered, and trims the log to its cap in the same step.
--
-- KEYS, in order:
--   log                         the event log (a list, newest first)
--   seq                         the sequence number of the newest event
-- ARGV, in order:
--   event                       the encoded event
--   cap                         most entries kept
--
-- Returns the event's sequence number.

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

local log = nextkey()
local seq_key = nextkey()
local event = nextarg()
local cap = tonumber(nextarg())

local seq = redis.call('INCR', seq_key)
redis.call('LPUSH', log, string.format('%d|', seq) .. event)
redis.call('LTRIM', log, 0, cap - 1)
return seq
