-- What every script starts with: the argument cursors, and the steps the recording
-- scripts share (prepended when the scripts are loaded,
-- so that each script reads its KEYS and ARGV by name, in the order its header lists).
--
-- Arguments are read one call per statement: Lua does not promise the order in which
-- the expressions of one statement are evaluated, only that one call's results come in
-- order.

local k = 0
-- The next key.
local function nextkey()
  k = k + 1
  return KEYS[k]
end
local i = 0
-- The next argument.
local function nextarg()
  i = i + 1
  return ARGV[i]
end
-- The next `n` arguments, as `n` values (one call for several, where a loop reads many).
local function nextargs(n)
  local first = i + 1
  i = i + n
  return unpack(ARGV, first, i)
end

-- Stores the interned values a single click's record names. Reads the count, then per
-- value its key, and its bytes and ttl (seconds).
local function store_interns()
  local intern_count = tonumber(nextarg())
  for _ = 1, intern_count do
    local key = nextkey()
    local bytes = nextarg()
    local ttl = nextarg()
    redis.call('SET', key, bytes, 'EX', ttl)
  end
end

-- What recording a conversion or a forwarded click does once its record is new.

-- Enqueues its deliveries in their outboxes and the pending index. Reads the count, then
-- per delivery its key and its outbox's key, and its id, bytes and due time.
local function enqueue_deliveries(pending)
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
end

-- Adds its counter increments and notes the day in the counter day index. Reads the
-- count, then field and delta pairs.
local function add_counters(counters, counter_days, day)
  local counter_count = tonumber(nextarg())
  for _ = 1, counter_count do
    local field = nextarg()
    local delta = nextarg()
    redis.call('HINCRBY', counters, field, delta)
  end
  redis.call('ZADD', counter_days, day, day)
end

