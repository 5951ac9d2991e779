-- wrk script for scripts/run-benchmarks.sh.
-- Prints one machine-readable line, "BENCH_JSON {...}", with the request count, the error counts and the latency
-- percentiles (microseconds) of the run.
-- BENCH_PACE_MS=N makes every connection wait N ms (uniformly spread over N/2..3N/2) before each request, so a
-- fixed number of connections produces a roughly fixed, moderate request rate (used for the latency test and for
-- holding 10,000 mostly idle keep-alive connections).

local pace = tonumber(os.getenv("BENCH_PACE_MS") or "")

if pace and pace > 0 then
    local lo = math.max(1, math.floor(pace / 2))
    local hi = math.max(lo, math.floor(pace * 3 / 2))
    function delay()
        return math.random(lo, hi)
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
        '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
        '"lat_p50_us":%d,"lat_p99_us":%d,"lat_p999_us":%d,"lat_max_us":%d,"lat_mean_us":%.1f}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
