-- wrk script: POST one chat completion with an Authorization header, report JSON.
--
--   wrk -t1 -c64 -d10s --latency -s bench/wrk/chat.lua http://127.0.0.1:8080/v1/chat/completions \
--       -- BODY_FILE API_KEY
--
-- BODY_FILE holds the request body (bench/configs.py: chat_body()); API_KEY is sent as
-- "Authorization: Bearer API_KEY". With the environment variable BENCH_MAX_REQUESTS=N each
-- thread stops after N responses (use -t1 for an exact total); without it wrk needs no Lua call
-- per response (its fastest path). It must be read at the top level: wrk decides whether to
-- parse responses for Lua from the main script state, where init() never runs.
-- done() prints one line "BENCH_JSON {...}" with the totals and latency percentiles (microseconds).

local max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "0") or 0
local seen = 0

if max_requests > 0 then
   function response(status, headers, body)
      seen = seen + 1
      if seen >= max_requests then
         wrk.thread:stop()
      end
   end
end

function init(args)
   local file = assert(io.open(args[1], "rb"))
   wrk.body = file:read("*a")
   file:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Authorization"] = "Bearer " .. args[2]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,'
      .. '"max":%d,"mean":%.1f}}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
      e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
