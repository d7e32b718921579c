-- wrk script for bench/bench_serve.py: POST the JSON body read from the file named by $WRK_BODY, with
-- Content-Type application/json; at the end print one line "WRKJSON {...}" with the counts and latency percentiles
-- (microseconds). "status" counts responses with status >= 400 (wrk's "Non-2xx or 3xx responses").
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, "status": %.0f, "connect": %.0f, "read": %.0f, ' ..
    '"write": %.0f, "timeout": %.0f, "p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, "max_us": %.0f, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
