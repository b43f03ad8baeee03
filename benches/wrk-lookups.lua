-- Click lookups alone: `GET /api/clicks/{id}` for real clicks (ids read from the file
-- named by the first argument, one a line), in turn. No pipelining. Prints one RESULT
-- line, as wrk-clicks.lua does; an answer other than the click is an error of the run.
local counter = 0
local threads = {}
found = 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ids = {}
  for line in io.lines(args[1]) do
    table.insert(ids, line)
  end
end

request = function()
  counter = counter + 1
  local id = ids[(counter % #ids) + 1]
  return wrk.format("GET", "/api/clicks/" .. id, {
    ["Authorization"] = "Bearer bench-admin-token-0123456789",
  })
end

response = function(status, headers, body)
  if status == 200 and string.find(body, '"click_id"', 1, true) then
    found = found + 1
  end
end

done = function(summary, latency, requests)
  local ok = 0
  for _, thread in ipairs(threads) do
    ok = ok + thread:get("found")
  end
  local secs = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT rps=%.0f p50=%d p99=%d p999=%d errors=%d requests=%d\n",
    summary.requests / secs, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), errors + summary.requests - ok, summary.requests))
end
