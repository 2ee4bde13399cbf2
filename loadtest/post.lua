-- wrk: POST a chat completion; BODY_STREAM=1 asks for SSE.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("LOAD_KEY") or "sk-load-caller")
local stream = os.getenv("BODY_STREAM") == "1"
wrk.body = '{"model":"' .. (os.getenv("LOAD_MODEL") or "load-model") .. '","stream":' .. tostring(stream) ..
  ',"messages":[{"role":"user","content":"Summarise the load test in one sentence."}]}'

done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %.1f %.1f %.1f %d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout))
end
