"""Streamed-completion TTFB for run.sh: DIRECT and PROXY requests alternate, one sample a line.

Usage: stream_ttfb.py UPSTREAM_PORT PROXY_PORT REQUESTS EXPECTED_BODY_FILE SAMPLES_OUT
REQUESTS streams reach the upstream, half DIRECT and half PROXY. Each PROXY request has a body
of its own, so it is a cacheable MISS (relayed live, recorded, stored); right after it the same
body is sent again (PROXY-HIT: replayed from the cache). Each sample line is
`TARGET TTFB_MS HEADERS_MS`: from just before connecting to the first byte of the first SSE
event, and to the end of the response head. Prints the number of requests that reached the
upstream (warm-up included) on stdout; exits non-zero on any unexpected status, content type,
cache status or body.

Every request starts after the same pause (PAUSE_S). Without it the order decides: the request
right after a stream (whose events come 20 ms apart, so the CPUs sleep in between) pays for
waking them, the one right after a replay does not, and on a VM whose idle vCPUs halt at once
that was 1 to 2 ms, more than the proxy's own part.
"""

import http.client
import sys
import time
import uuid

WARMUP_PAIRS = 5
# As long as the gap between a stream's events: every request starts from the same idle machine.
PAUSE_S = 0.02


def fetch(port, body):
    time.sleep(PAUSE_S)
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
        },
    )
    resp = conn.getresponse()
    head = time.perf_counter()
    first = resp.read(1)
    first_at = time.perf_counter()
    data = first + resp.read()
    conn.close()
    return resp, data, (first_at - start) * 1000, (head - start) * 1000


def check(target, i, resp, data, expected, cache):
    ctype = resp.getheader("content-type", "")
    if resp.status != 200 or not ctype.startswith("text/event-stream"):
        sys.exit(f"{target} request {i}: status {resp.status}, content-type '{ctype}'")
    if cache is not None and resp.getheader("x-cache", "") != cache:
        sys.exit(f"{target} request {i}: x-cache '{resp.getheader('x-cache', '')}', not {cache}")
    if data != expected:
        sys.exit(
            f"{target} request {i}: body ({len(data)} B) differs from"
            f" the functional check's ({len(expected)} B)"
        )


def main():
    upstream_port, proxy_port, requests = (int(a) for a in sys.argv[1:4])
    expected = open(sys.argv[4], "rb").read()
    out = open(sys.argv[5], "w")
    nonce = uuid.uuid4().hex
    targets = (("DIRECT", upstream_port, None), ("PROXY", proxy_port, "MISS"))
    sent = 0
    for i in range(2 * WARMUP_PAIRS + requests):
        target, port, cache = targets[i % 2]
        body = (
            '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user",'
            f'"content":"bench stream {nonce} {i}"}}]}}'
        ).encode()
        samples = [(target, cache)] + ([("PROXY-HIT", "HIT")] if target == "PROXY" else [])
        for name, want in samples:
            resp, data, ttfb, headers = fetch(port, body)
            check(name, i, resp, data, expected, want)
            if i >= 2 * WARMUP_PAIRS:
                out.write(f"{name} {ttfb:.6f} {headers:.6f}\n")
        sent += 1
    out.close()
    print(sent)


if __name__ == "__main__":
    main()
