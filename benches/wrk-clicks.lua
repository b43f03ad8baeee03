-- A realistic click: browser user agent, UTM parameters, a distinct fbclid on every
-- request (unless the second argument is "no-fbclid"), no pipelining. Prints one machine-readable RESULT line at the end.
local counter = 0
local thread_id = 0

function setup(thread)
  thread:set("thread_id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  path = args[1] or "/go/cake/demo"
  -- "no-fbclid": clicks without an ad-platform click id (the memory benchmark's baseline).
  with_fbclid = args[2] ~= "no-fbclid"
end

request = function()
  counter = counter + 1
  local fbclid = string.format("IwAR%d_%d_%08x", thread_id, counter, math.random(0, 0x7fffffff))
  local p = path .. "?utm_source=facebook&utm_medium=paid&utm_campaign=bench-2026&utm_content=ad" ..
    (counter % 7) .. "&s3=creative" .. (counter % 13)
  if with_fbclid then
    p = p .. "&fbclid=" .. fbclid
  end
  return wrk.format("GET", p, {
    ["User-Agent"] = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    ["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ["Accept-Language"] = "en-US,en;q=0.9",
    ["Referer"] = "https://m.facebook.com/",
  })
end

done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT rps=%.0f p50=%d p99=%d p999=%d errors=%d requests=%d\n",
    summary.requests / secs, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), errors, summary.requests))
end
