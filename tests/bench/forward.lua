-- wrk script for the bench's FORWARD scenario: post.lua's request with Cache-Control: no-cache, so a
-- cache must forward it to the upstream (our proxy skips the lookup; nginx has proxy_cache_bypass).
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.headers["Cache-Control"] = "no-cache"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Explain in one paragraph what a caching proxy does."}],"temperature":0}'
