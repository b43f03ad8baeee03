-- The clicks of wrk-clicks.lua at a capped rate: each connection waits the third
-- argument's milliseconds between requests, so the rate is at most
-- connections * 1000 / delay per second. Run from the project root.
dofile("benches/wrk-clicks.lua")

local clicks_init = init

function init(args)
  clicks_init(args)
  pause = tonumber(args[3] or "") or 1
end

function delay()
  return pause
end
