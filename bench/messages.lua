-- wrk script: POST /v1/messages with a rotating set of customer messages,
-- each from a new customer (so each request opens a new conversation).
local texts = {
  "My new card still hasn't arrived, it's been 10 days",
  "what is the exchange rate for dollars",
  "my transfer is still pending since yesterday",
  "how do I change my PIN",
  "I want to speak to a human",
  "I think someone used my card, this is fraud",
  "the weather is nice today",
  "how long does a card take to arrive?",
}
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("SOPR_BENCH_KEY")

request = function()
  counter = counter + 1
  local text = texts[(counter % #texts) + 1]
  local body = string.format('{"customer":{"id":"load-%d-%d"},"text":"%s"}', math.random(1, 1e9), counter, text)
  return wrk.format(nil, "/v1/messages", nil, body)
end

done = function(summary, latency)
  io.write(string.format("requests=%d  errors(non-2xx/socket)=%d/%d\n", summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  io.write(string.format("req/s=%.1f  p50=%.2fms  p90=%.2fms  p99=%.2fms  max=%.2fms\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
