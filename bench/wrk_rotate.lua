-- Rotates POSTs over the requests in $BODY_FILE, one a line: the path, a tab, the JSON body
-- (bench/many_models.py writes it), so that the load spreads evenly over them in turn;
-- prints a JSON summary at the end, like wrk_post.lua.
local plan = {}
local f = assert(io.open(os.getenv("BODY_FILE"), "r"))
for line in f:lines() do
  local path, body = line:match("^([^\t]+)\t(.*)$")
  if path then
    plan[#plan + 1] = {path, body}
  end
end
f:close()
assert(#plan > 0, "no requests in " .. os.getenv("BODY_FILE"))
local headers = {["Content-Type"] = os.getenv("CONTENT_TYPE") or "application/json"}
local n = 0

function request()
  n = n + 1
  local step = plan[((n - 1) % #plan) + 1]
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
