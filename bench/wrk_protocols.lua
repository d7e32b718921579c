-- wrk script for bench/bench_protocols.py: POST the body read from the file named by $WRK_BODY with the content type
-- $WRK_CTYPE (default application/json) and, when $WRK_HEADER is set ("Name: value"), one more header (the Open
-- Inference Protocol's Inference-Header-Content-Length for binary tensors). At the end print one line "WRKJSON {...}"
-- with the counts and latency percentiles (microseconds), as bench/wrk_post.lua does. "status" counts responses with
-- status >= 400 (wrk's "Non-2xx or 3xx responses").
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CTYPE") or "application/json"
local extra = os.getenv("WRK_HEADER")
if extra and extra ~= "" then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, "status": %.0f, "connect": %.0f, "read": %.0f, ' ..
    '"write": %.0f, "timeout": %.0f, "p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, "max_us": %.0f, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
