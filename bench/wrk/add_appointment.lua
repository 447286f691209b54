-- wrk script: POSTs pre-signed, distinct add_appointment bodies and counts the answers by status.
--
--   wrk -t THREADS -c CONNECTIONS -d SECONDS -s bench/wrk/add_appointment.lua URL -- BODIES THREADS [UA]
--
-- BODIES is a file of request bodies, one JSON document per line (bench/wrk.py writes it). Thread k of n
-- sends lines k, k+n, k+2n, ... in order, so no body is sent twice unless a thread runs out (counted as
-- "reused": the run then measured updates too, and should be made with more bodies). At the end one line
-- starting with WRK_RESULT carries the totals as JSON for bench/wrk.py.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local path, n = args[1], tonumber(args[2])
  bodies = {}
  local i = 0
  for line in io.lines(path) do
    if i % n == id and #line > 0 then
      bodies[#bodies + 1] = line
    end
    i = i + 1
  end
  position = 0
  ok, refused, reused = 0, 0, 0
  first_error = ""
  wrk.method = "POST"
  wrk.path = "/add_appointment"
  wrk.headers["Content-Type"] = "application/json"
  if args[3] and #args[3] > 0 then
    wrk.headers["User-Agent"] = args[3]
  end
end

function request()
  position = position + 1
  if position > #bodies then
    position = 1
  end
  if position == 1 and (ok + refused) > 0 then
    reused = reused + 1
  end
  return wrk.format(nil, nil, nil, bodies[position])
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  else
    refused = refused + 1
    if first_error == "" then
      first_error = status .. " " .. string.sub(body or "", 1, 160)
    end
  end
end

local function quote(s)
  return '"' .. string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end) .. '"'
end

function done(summary, latency, requests)
  local total_ok, total_refused, total_reused, err = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    total_ok = total_ok + t:get("ok")
    total_refused = total_refused + t:get("refused")
    total_reused = total_reused + t:get("reused")
    if err == "" then
      err = t:get("first_error")
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"seconds": %.6f, "requests": %d, "ok": %d, "refused": %d, "reused": %d, '
      .. '"socket_errors": %d, "timeouts": %d, "p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, '
      .. '"max_ms": %.3f, "first_error": %s}\n',
    summary.duration / 1e6, summary.requests, total_ok, total_refused, total_reused,
    e.connect + e.read + e.write, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, quote(err)))
end
