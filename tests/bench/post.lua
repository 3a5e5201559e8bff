-- wrk script for the bench: one fixed chat-completion POST, so every proxy request is the same cache key.
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Explain in one paragraph what a caching proxy does."}],"temperature":0}'
