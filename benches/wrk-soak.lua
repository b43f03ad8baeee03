-- Soak traffic: clicks, and every POSTBACK_EVERY-th request a postback for a click this
-- thread was just sent to. Paced with delay() so that all connections together make
-- about RATE requests a second: the delay starts at one request interval per connection
-- and is corrected every second by the rate actually achieved (latency adds to it). Every click id from a 302 is written to
-- OUT/ids-<thread>.txt and every postback answer to OUT/postbacks-<thread>.txt, a line
-- each and flushed at once, so nothing is lost when wrk exits.
--
-- wrk -tTHREADS -cCONNS -s benches/wrk-soak.lua URL -- OUT RATE CONNS POSTBACK_KEY THREADS
local thread_count = 0
local POSTBACK_EVERY = 5

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  out, rate, conns, key, threads = args[1], tonumber(args[2]), tonumber(args[3]), args[4], tonumber(args[5])
  ids = io.open(out .. "/ids-" .. thread_index .. ".txt", "w")
  ids:setvbuf("line")
  postbacks = io.open(out .. "/postbacks-" .. thread_index .. ".txt", "w")
  postbacks:setvbuf("line")
  counter = 0
  pending = {}
  pacing = conns * 1000 / rate
  second, sent_by_then = os.time(), 0
end

-- Once a second: scale the delay by how far this thread's rate was from its share.
local function adjust_pacing()
  local now = os.time()
  if now == second then
    return
  end
  local achieved = (counter - sent_by_then) / (now - second)
  local share = rate / threads
  if achieved > 0 then
    pacing = pacing * math.min(2, math.max(0.5, achieved / share))
  end
  second, sent_by_then = now, counter
end

function delay()
  return pacing
end

request = function()
  counter = counter + 1
  adjust_pacing()
  if counter % POSTBACK_EVERY == 0 and #pending > 0 then
    local id = table.remove(pending, 1)
    return wrk.format("GET", "/collect/cake/" .. key .. "?s2=" .. id .. "&price=1.50&tid=t" ..
      thread_index .. "-" .. counter)
  end
  return wrk.format("GET", "/go/cake/demo?utm_source=soak&s3=c" .. (counter % 13), {
    ["User-Agent"] = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
  })
end

response = function(status, headers, body)
  local location = headers["Location"] or headers["location"]
  if status >= 300 and status < 400 and location then
    local id = string.match(location, "[?&]s2=([^&#]+)")
    if id then
      ids:write(id, "\n")
      if #pending < 64 then
        pending[#pending + 1] = id
      end
    end
  elseif string.sub(body or "", 1, 1) == "{" and string.find(body, '"status"', 1, true) then
    local answer = string.match(body, '"status":"([^"]+)"') or "?"
    postbacks:write(status, " ", answer, "\n")
  end
end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout
  io.write(string.format("RESULT requests=%d status_errors=%d socket_errors=%d p50=%d p99=%d secs=%.1f\n",
    summary.requests, summary.errors.status, errors, latency:percentile(50), latency:percentile(99),
    summary.duration / 1e6))
end
