-- Rotates POSTs over /predict, /predict_proba and /predict_batch (bodies from $BODY_DIR), so the
-- API service has calls to the runner in flight on both of its endpoints at once.
local dir = os.getenv("BODY_DIR")
local function read(name)
  local f = assert(io.open(dir .. "/" .. name, "r"))
  local body = f:read("*a")
  f:close()
  return body
end
local single, batch = read("single.json"), read("small_batch.json")
local plan = {{"/predict", single}, {"/predict_proba", single}, {"/predict_batch", batch}}
local headers = {["Content-Type"] = "application/json"}
local n = 0

function request()
  n = n + 1
  local step = plan[(n % #plan) + 1]
  return wrk.format("POST", step[1], headers, step[2])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "max_ms": %f, ' ..
    '"non_2xx": %d, "timeouts": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, e.status, e.timeout,
    e.connect + e.read + e.write))
end
