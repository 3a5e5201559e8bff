"""Sends N identical chat-completion POSTs over one keep-alive connection; prints X-Cache counts."""
import http.client
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
body = ('{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},'
        '{"role":"user","content":"Explain in one paragraph what a caching proxy does."}],"temperature":0}')
conn = http.client.HTTPConnection("127.0.0.1", port)
seen = {}
for _ in range(n):
    conn.request("POST", "/v1/chat/completions", body,
                 {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"})
    res = conn.getresponse()
    res.read()
    seen[res.getheader("x-cache")] = seen.get(res.getheader("x-cache"), 0) + 1
print(seen)
