-- wrk script for bench.py's closed-model rows (one wrk thread): GET /api/resource with a bearer token
-- read from BENCH_TOKENS_FILE (one token a line).
--   BENCH_TOKENS_CYCLE=1: reuse the tokens round-robin (warm: token-cache hits)
--   BENCH_TOKENS_CYCLE=0: each token once (cold: one unique token per request). When they run out the
--     request goes without a token and gets a 401, which wrk counts as non-2xx: bench.py reports it.
-- The requests are built before the measured window, so wrk spends no Lua time formatting them.
local path = os.getenv("BENCH_TOKENS_FILE")
local cycle = os.getenv("BENCH_TOKENS_CYCLE") == "1"
local reqs = {}
local bare
local n = 0

-- wrk calls init after it has set the Host header: requests formatted earlier would go without one
init = function(args)
  for line in io.lines(path) do
    if #line > 0 then
      reqs[#reqs + 1] = wrk.format("GET", "/api/resource", { Authorization = "Bearer " .. line })
    end
  end
  bare = wrk.format("GET", "/api/resource")
end

request = function()
  n = n + 1
  if n > #reqs then
    if not cycle then
      return bare
    end
    n = 1
  end
  return reqs[n]
end
