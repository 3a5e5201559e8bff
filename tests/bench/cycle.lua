-- wrk script for the bench's HIT-L2 scenario: post.lua's request over a fixed set of
-- BENCH_L2_KEYS bodies (environment, default 20000). Thread i of the two (-t2) steps through
-- keys i-1, i+1, i+3, ... in order, so that an L1 smaller than the set never holds the next.
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"

local keys = tonumber(os.getenv("BENCH_L2_KEYS") or "20000")
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("id", threads)
end

local counter = 0
function request()
    local key = (counter * 2 + id - 1) % keys
    counter = counter + 1
    local body = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},'
        .. '{"role":"user","content":"Explain in one paragraph what a caching proxy does. (key '
        .. key .. ')"}],"temperature":0}'
    return wrk.format(nil, nil, nil, body)
end
