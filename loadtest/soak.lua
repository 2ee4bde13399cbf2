-- wrk for `make soak`: a rotation of requests that succeed, stream, fail over, fail,
-- break mid-stream, hit the cache, are masked by a guardrail or refused by a limit.
local reqs = {}
local function add(key, model, stream, text)
  local body = '{"model":"' .. model .. '","stream":' .. tostring(stream) ..
    ',"messages":[{"role":"user","content":"' .. text .. '"}]}'
  reqs[#reqs + 1] = wrk.format("POST", "/v1/chat/completions",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}, body)
end

init = function(args)
  add("sk-soak-caller", "soak-chat", false, "hello")
  add("sk-soak-caller", "soak-chat", true, "hello")
  add("sk-soak-caller", "soak-failover", false, "fail over please")
  add("sk-soak-caller", "soak-failing", false, "this one fails")
  add("sk-soak-caller", "soak-broken", true, "this stream breaks")
  add("sk-soak-caller", "soak-cached", false, "cache me")
  add("sk-soak-caller", "soak-cached", true, "cache me")
  add("sk-soak-caller", "soak-chat", false, "mail me at someone@example.com")
  add("sk-soak-limited", "soak-chat", false, "limited")
end

local i = 0
request = function()
  i = i % #reqs + 1
  return reqs[i]
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %.1f %.1f %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.timeout))
end
