-- Requests for real clicks, ids read from the file named by the second argument (one a
-- line), in turn. No pipelining. Prints one RESULT line, as wrk-clicks.lua does; an
-- answer other than the expected one counts as an error of the run.
--
-- With a first argument of `/collect/...`: postbacks as CAKE sends them, each with a
-- transaction id of its own, so every request records a new conversion.
-- With `/api/clicks`: the click's lookup alone, as the owner's API answers it.
local counter = 0
local thread_id = 0
local threads = {}
answered = 0

function setup(thread)
  thread:set("thread_id", thread_id)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

function init(args)
  -- Transaction ids unique across runs too (the warm-up run uses the same script).
  math.randomseed(os.time() + thread_id)
  nonce = string.format("%x%06x", os.time(), math.random(0, 0xffffff))
  path = args[1]
  lookup = path == "/api/clicks"
  ids = {}
  for line in io.lines(args[2]) do
    table.insert(ids, line)
  end
end

request = function()
  counter = counter + 1
  local id = ids[(counter % #ids) + 1]
  if lookup then
    return wrk.format("GET", path .. "/" .. id, {
      ["Authorization"] = "Bearer bench-admin-token-0123456789",
    })
  end
  local p = path .. "?s1=adset7&s2=" .. id .. "&s3=&s4=&s5=&oid=42&affid=9&campid=761&cid=3" ..
    "&tid=T" .. nonce .. "-" .. counter .. "&price=12.50"
  return wrk.format("GET", p)
end

-- Counts the answers that recorded a conversion (or found the click).
response = function(status, headers, body)
  local expected = lookup and '"click_id"' or '"status":"ok"'
  if status == 200 and string.find(body, expected, 1, true) then
    answered = answered + 1
  end
end

done = function(summary, latency, requests)
  local ok = 0
  for _, thread in ipairs(threads) do
    ok = ok + thread:get("answered")
  end
  local secs = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT rps=%.0f p50=%d p99=%d p999=%d errors=%d requests=%d\n",
    summary.requests / secs, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), errors + summary.requests - ok, summary.requests))
end
