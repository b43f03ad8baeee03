-- The argument cursors every script starts with (prepended when the scripts are loaded,
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

