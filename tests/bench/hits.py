"""Sends N identical chat-completion POSTs over one keep-alive connection; prints X-Cache counts.
A third argument `no-cache` sends them with Cache-Control: no-cache (each one forwarded)."""
import http.client
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
extra = {"Cache-Control": "no-cache"} if sys.argv[3:] == ["no-cache"] else {}
body = ('{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},'
        '{"role":"user","content":"Explain in one paragraph what a caching proxy does."}],"temperature":0}')
conn = http.client.HTTPConnection("127.0.0.1", port)
seen = {}
for _ in range(n):
    conn.request("POST", "/v1/chat/completions", body,
                 {"Content-Type": "application/json", "Authorization": "Bearer sk-bench", **extra})
    res = conn.getresponse()
    res.read()
    seen[res.getheader("x-cache")] = seen.get(res.getheader("x-cache"), 0) + 1
print(seen)
