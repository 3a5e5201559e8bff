"""Streamed-completion TTFB for run.sh: DIRECT and PROXY requests alternate, one sample a line.

Usage: stream_ttfb.py UPSTREAM_PORT PROXY_PORT REQUESTS EXPECTED_BODY_FILE SAMPLES_OUT
Each sample line is `TARGET TTFB_MS HEADERS_MS`: from just before connecting to the first byte
of the first SSE event, and to the end of the response head. Prints the number of requests sent
(warm-up included) on stdout; exits non-zero on any unexpected status, content type or body.
"""

import http.client
import sys
import time
import uuid

WARMUP_PAIRS = 5


def fetch(port, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    start = time.perf_counter()
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=body,
        headers={
            "Content-Type": "application/json",
            "Authorization": "Bearer sk-bench",
            "Accept": "text/event-stream",
            # Every body is unique anyway; no-store also keeps the stream cache from recording
            # it (BYPASS), so this measures pass-through alone.
            "Cache-Control": "no-store",
        },
    )
    resp = conn.getresponse()
    head = time.perf_counter()
    first = resp.read(1)
    first_at = time.perf_counter()
    data = first + resp.read()
    conn.close()
    return resp, data, (first_at - start) * 1000, (head - start) * 1000


def main():
    upstream_port, proxy_port, requests = (int(a) for a in sys.argv[1:4])
    expected = open(sys.argv[4], "rb").read()
    out = open(sys.argv[5], "w")
    nonce = uuid.uuid4().hex
    targets = (("DIRECT", upstream_port), ("PROXY", proxy_port))
    sent = 0
    for i in range(2 * WARMUP_PAIRS + requests):
        target, port = targets[i % 2]
        body = (
            '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user",'
            f'"content":"bench stream {nonce} {i}"}}]}}'
        )
        resp, data, ttfb, headers = fetch(port, body.encode())
        sent += 1
        ctype = resp.getheader("content-type", "")
        if resp.status != 200 or not ctype.startswith("text/event-stream"):
            sys.exit(f"{target} request {i}: status {resp.status}, content-type '{ctype}'")
        if resp.getheader("x-cache", "") == "HIT":
            sys.exit(f"{target} request {i}: x-cache: HIT for a unique body")
        if data != expected:
            sys.exit(
                f"{target} request {i}: body ({len(data)} B) differs from"
                f" the functional check's ({len(expected)} B)"
            )
        if i >= 2 * WARMUP_PAIRS:
            out.write(f"{target} {ttfb:.6f} {headers:.6f}\n")
    out.close()
    print(sent)


if __name__ == "__main__":
    main()
