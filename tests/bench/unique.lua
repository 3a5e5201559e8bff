-- wrk script for the bench's MISS-unique scenario: post.lua's request with a body no cache has seen.
-- Bodies carry a per-run nonce (the first argument after --), the thread number and a counter.
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"

local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("id", threads)
end

local nonce, counter = "", 0
function init(args)
    nonce = args[1] or ""
end

function request()
    counter = counter + 1
    local body = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},'
        .. '{"role":"user","content":"Explain in one paragraph what a caching proxy does. ('
        .. nonce .. " " .. id .. " " .. counter .. ')"}],"temperature":0}'
    return wrk.format(nil, nil, nil, body)
end
