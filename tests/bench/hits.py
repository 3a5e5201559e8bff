"""Sends N identical chat-completion POSTs over one keep-alive connection; prints X-Cache counts.
A third argument `no-cache` sends them with Cache-Control: no-cache (each one forwarded);
`unique` numbers the bodies, so each is new to a freshly started proxy (each one a stored miss),
as in the bench's MISS-unique scenario."""
import http.client
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else ""
extra = {"Cache-Control": "no-cache"} if mode == "no-cache" else {}
question = "Explain in one paragraph what a caching proxy does."
body = ('{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},'
        '{"role":"user","content":"%s"}],"temperature":0}')
conn = http.client.HTTPConnection("127.0.0.1", port)
seen = {}
for i in range(n):
    text = f"{question} ({i})" if mode == "unique" else question
    conn.request("POST", "/v1/chat/completions", body % text,
                 {"Content-Type": "application/json", "Authorization": "Bearer sk-bench", **extra})
    res = conn.getresponse()
    res.read()
    seen[res.getheader("x-cache")] = seen.get(res.getheader("x-cache"), 0) + 1
print(seen)
