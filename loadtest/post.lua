-- wrk: POST a chat completion; BODY_STREAM=1 asks for SSE. VARY=1 makes every prompt
-- different (a per-thread counter), so nothing keyed by the prompt is reused.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("LOAD_KEY") or "sk-load-caller")
local stream = os.getenv("BODY_STREAM") == "1"
local function body(prompt)
  return '{"model":"' .. (os.getenv("LOAD_MODEL") or "load-model") .. '","stream":' .. tostring(stream) ..
    ',"messages":[{"role":"user","content":"' .. prompt .. '"}]}'
end
wrk.body = body("Summarise the load test in one sentence.")

if os.getenv("VARY") == "1" then
  local threads = 0
  setup = function(thread)
    threads = threads + 1
    thread:set("tid", threads)
  end
  local n = 0
  request = function()
    n = n + 1
    return wrk.format(nil, nil, nil, body("Summarise load test " .. tid .. "-" .. n .. " in one sentence."))
  end
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %.1f %.1f %.1f %d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout))
end
