#!/usr/bin/env bash
# Cache-HIT throughput of the proxy vs a bare actix-web handler serving the same bytes, and the
# time to first byte the proxy adds to a streamed (SSE) completion (`make bench`).
# Env: BENCH_SECONDS (per wrk run, default 5), BENCH_ROUNDS (interleaved rounds, default 3, min 2),
# BENCH_STREAM_REQUESTS (streamed requests, half DIRECT and half PROXY, default 200, min 2).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

SECONDS_PER_RUN="${BENCH_SECONDS:-5}"
ROUNDS="${BENCH_ROUNDS:-3}"
STREAM_REQUESTS="${BENCH_STREAM_REQUESTS:-200}"
LUA=tests/bench/post.lua
READY_DEADLINE=60

die() {
    echo "bench: FAIL: $*" >&2
    exit 1
}

[[ "$SECONDS_PER_RUN" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer, got '$SECONDS_PER_RUN'"
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 2 ]] || die "BENCH_ROUNDS must be an integer >= 2, got '$ROUNDS'"
[[ "$STREAM_REQUESTS" =~ ^[0-9]+$ && "$STREAM_REQUESTS" -ge 2 ]] ||
    die "BENCH_STREAM_REQUESTS must be an integer >= 2, got '$STREAM_REQUESTS'"

for tool in curl python3; do
    command -v "$tool" >/dev/null || die "'$tool' is required but not installed"
done
if ! command -v wrk >/dev/null; then
    if [[ "$(id -u)" -eq 0 ]]; then
        echo "bench: installing wrk with apt-get" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    else
        die "'wrk' is not installed and we are not root; run: sudo apt-get install wrk"
    fi
fi

cargo build --release --bin openai-cache-proxy --example bench-upstream

# Two distinct free ports: bind both before closing either.
read -r UPSTREAM_PORT PROXY_PORT < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT="$UPSTREAM_PORT" target/release/examples/bench-upstream >"$WORK/upstream.log" 2>&1 &
PIDS+=("$!")
UPSTREAM_PID="$!"
# PROXY_URL is unset so an outbound proxy in the caller's environment cannot skew the numbers;
# the long CACHE_TTL keeps the one entry fresh however long the run is.
env -u PROXY_URL PORT="$PROXY_PORT" HOST=127.0.0.1 OPENAI_API_URL="http://127.0.0.1:$UPSTREAM_PORT" \
    RATE_LIMIT=0 CACHE_TTL=1h LOG_FORMAT=json RUST_LOG=warn \
    target/release/openai-cache-proxy >"$WORK/proxy.log" 2>&1 &
PIDS+=("$!")
PROXY_PID="$!"

UPSTREAM="http://127.0.0.1:$UPSTREAM_PORT"
PROXY="http://127.0.0.1:$PROXY_PORT"
CURL=(curl --silent --show-error --noproxy '*' --max-time 10)

wait_ready() { # name pid url
    local deadline=$((SECONDS + READY_DEADLINE))
    until "${CURL[@]}" --fail --output /dev/null "$3" 2>/dev/null; do
        if ! kill -0 "$2" 2>/dev/null; then
            cat "$WORK"/*.log >&2
            die "$1 exited before becoming ready"
        fi
        ((SECONDS < deadline)) || die "$1 not ready at $3 after ${READY_DEADLINE}s"
        sleep 0.1
    done
}
wait_ready upstream "$UPSTREAM_PID" "$UPSTREAM/count"
wait_ready proxy "$PROXY_PID" "$PROXY/health"

# --- Functional check: the numbers below must be real cache hits. ---
BODY="$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$LUA")"
[[ -n "$BODY" ]] || die "could not read wrk.body from $LUA"
# Exactly the headers wrk sends (curl's Accept and User-Agent removed): Accept is part of the
# cache key, so this warms the very entry the PROXY-HIT rounds read.
post() { # url headers-file body-file
    "${CURL[@]}" --fail --request POST "$1/v1/chat/completions" \
        --header 'Content-Type: application/json' --header 'Authorization: Bearer sk-bench' \
        --header 'Accept:' --header 'User-Agent:' \
        --data-binary "$BODY" --dump-header "$2" --output "$3"
}
upstream_count() { "${CURL[@]}" --fail "$UPSTREAM/count"; }

post "$UPSTREAM" "$WORK/direct.h" "$WORK/direct.b"
for i in 1 2 3; do
    post "$PROXY" "$WORK/p$i.h" "$WORK/p$i.b"
    if [[ $i -eq 2 ]]; then count2="$(upstream_count)"; fi
done
count3="$(upstream_count)"
cache3="$(tr -d '\r' <"$WORK/p3.h" | awk -F': *' 'tolower($1) == "x-cache" {print $2}')"
if [[ "$cache3" != "HIT" ]]; then
    for i in 1 2 3; do
        echo "--- proxy response $i headers:" >&2
        cat "$WORK/p$i.h" >&2
    done
    die "3rd identical POST through the proxy: expected x-cache: HIT, got '${cache3:-<none>}'"
fi
[[ "$count2" == "$count3" ]] || die "upstream /count moved from $count2 to $count3 on a cache HIT"
for f in direct p3; do
    # A server that closes after each request measures reconnects, not request handling.
    if tr -d '\r' <"$WORK/$f.h" | grep -qix 'connection: close'; then
        cat "$WORK/$f.h" >&2
        die "$f response has Connection: close; wrk would reconnect for every request"
    fi
done
cmp -s "$WORK/direct.b" "$WORK/p3.b" ||
    die "HIT body ($(wc -c <"$WORK/p3.b") B) differs from upstream body ($(wc -c <"$WORK/direct.b") B)"
echo "bench: functional check ok (x-cache: HIT, upstream count steady at $count3," \
    "body identical: $(wc -c <"$WORK/direct.b") B)" >&2

# --- Functional check: a proxied SSE stream reaches the upstream and comes back byte for byte. ---
# The body is unique to this run and no-store is sent, so no cache (today's or a future stream
# cache) can answer it.
STREAM_BODY='{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"bench'
STREAM_BODY+=" stream check $$ $RANDOM\"}]}"
post_stream() { # url headers-file body-file
    "${CURL[@]}" --fail --no-buffer --request POST "$1/v1/chat/completions" \
        --header 'Content-Type: application/json' --header 'Authorization: Bearer sk-bench' \
        --header 'Accept: text/event-stream' --header 'Cache-Control: no-store' \
        --data-binary "$STREAM_BODY" --dump-header "$2" --output "$3"
}
before="$(upstream_count)"
post_stream "$UPSTREAM" "$WORK/stream-direct.h" "$WORK/stream-direct.b"
post_stream "$PROXY" "$WORK/stream-proxy.h" "$WORK/stream-proxy.b"
after="$(upstream_count)"
[[ $((after - before)) -eq 2 ]] ||
    die "upstream served $((after - before)) of 2 streamed requests (1 direct, 1 proxied)"
header() { tr -d '\r' <"$1" | awk -F': *' -v h="$2" 'tolower($1) == h {print $2}'; }
ct="$(header "$WORK/stream-direct.h" content-type)"
if [[ "$ct" != text/event-stream* ]]; then
    cat "$WORK/stream-direct.h" >&2
    die "bench upstream answered \"stream\":true with content-type '$ct', not an event stream"
fi
ct="$(header "$WORK/stream-proxy.h" content-type)"
stream_cache="$(header "$WORK/stream-proxy.h" x-cache)"
if [[ "$ct" != text/event-stream* || "$stream_cache" == HIT ]]; then
    cat "$WORK/stream-proxy.h" >&2
    die "proxied stream: expected text/event-stream and no x-cache: HIT for a unique no-store body"
fi
if ! cmp "$WORK/stream-direct.b" "$WORK/stream-proxy.b" >&2; then
    die "proxied stream ($(wc -c <"$WORK/stream-proxy.b") B) differs from the direct one" \
        "($(wc -c <"$WORK/stream-direct.b") B)"
fi
echo "bench: stream check ok (x-cache: ${stream_cache:-<none>}," \
    "upstream reached, body identical: $(wc -c <"$WORK/stream-direct.b") B)" >&2

# --- Measurement: CEILING and PROXY-HIT interleaved, same wrk settings. ---
run_wrk() { # target-name url round
    local out="$WORK/wrk-$1-$3.txt"
    timeout $((SECONDS_PER_RUN + 30)) \
        wrk -t2 -c64 -d"${SECONDS_PER_RUN}s" --latency -s "$LUA" "$2" >"$out" 2>&1 ||
        { cat "$out" >&2; die "wrk against $1 failed (round $3)"; }
    if grep -q 'Non-2xx or 3xx responses' "$out"; then
        cat "$out" >&2
        die "wrk against $1 saw non-2xx responses (round $3)"
    fi
    local rps p50
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    # wrk prints "50%  1.23ms" (us, ms or s); normalise to ms.
    p50="$(awk '$1 == "50%" {v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        f = (u == "us") ? 0.001 : (u == "s") ? 1000 : 1; printf "%.3f", v * f}' "$out")"
    [[ -n "$rps" && -n "$p50" ]] || { cat "$out" >&2; die "could not parse wrk output for $1"; }
    echo "$1 $3 $rps $p50" >>"$WORK/results"
    echo "bench: round $3 $1: $rps req/s, p50 ${p50} ms" >&2
}

for round in $(seq 1 "$ROUNDS"); do
    run_wrk CEILING "$UPSTREAM" "$round"
    before="$(upstream_count)"
    run_wrk PROXY-HIT "$PROXY" "$round"
    after="$(upstream_count)"
    [[ "$before" == "$after" ]] ||
        die "upstream served $((after - before)) requests during PROXY-HIT round $round: not all HITs"
done

# --- STREAM: time to first SSE byte, DIRECT and PROXY alternating; every body is unique. ---
echo "bench: STREAM: $STREAM_REQUESTS streamed requests, alternating DIRECT/PROXY, ~0.1 s each" >&2
before="$(upstream_count)"
sent="$(python3 tests/bench/stream_ttfb.py "$UPSTREAM_PORT" "$PROXY_PORT" "$STREAM_REQUESTS" \
    "$WORK/stream-direct.b" "$WORK/stream")" || die "stream TTFB client failed (see above)"
after="$(upstream_count)"
[[ $((after - before)) -eq "$sent" ]] ||
    die "upstream served $((after - before)) of $sent streamed requests: some did not reach it"

python3 - "$WORK/results" "$SECONDS_PER_RUN" "$ROUNDS" "$WORK/stream" <<'PY'
import math, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    target, _, rps, p50 = line.split()
    rows.setdefault(target, []).append((float(rps), float(p50)))
rounds = int(sys.argv[3])
print(f"\nwrk -t2 -c64 -d{sys.argv[2]}s, {rounds} interleaved rounds, 127.0.0.1\n")
print("| target | " + " | ".join(f"round {i + 1} req/s" for i in range(rounds))
      + " | median req/s | spread | median p50 ms |")
print("|---" * (rounds + 4) + "|")
medians = {}
for target in ("CEILING", "PROXY-HIT"):
    rps = [r for r, _ in rows[target]]
    med = statistics.median(rps)
    medians[target] = med
    spread = (max(rps) - min(rps)) / med * 100
    p50 = statistics.median(p for _, p in rows[target])
    print(f"| {target} | " + " | ".join(f"{r:.0f}" for r in rps)
          + f" | {med:.0f} | {spread:.1f}% | {p50:.3f} |")

ttfb = {}
for line in open(sys.argv[4]):
    target, first, head = line.split()
    ttfb.setdefault(target, []).append((float(first), float(head)))
def p90(xs):  # nearest rank
    return sorted(xs)[math.ceil(0.9 * len(xs)) - 1]
print(f"\nSTREAM: {sum(map(len, ttfb.values()))} requests alternating DIRECT/PROXY, unique bodies"
      " + Cache-Control: no-store, 20 SSE events 5 ms apart;\n"
      "TTFB = connect to first SSE byte, head = connect to end of response head\n")
print("| target | requests | TTFB p50 ms | TTFB p90 ms | head p50 ms |")
print("|---" * 5 + "|")
stream = {}
for target in ("DIRECT", "PROXY"):
    first = [f for f, _ in ttfb[target]]
    stream[target] = first_p50, first_p90 = statistics.median(first), p90(first)
    head_p50 = statistics.median(h for _, h in ttfb[target])
    print(f"| {target} | {len(first)} | {first_p50:.3f} | {first_p90:.3f} | {head_p50:.3f} |")
added = stream["PROXY"][0] - stream["DIRECT"][0]
added_p90 = stream["PROXY"][1] - stream["DIRECT"][1]
print(f"\nSTREAM added TTFB (PROXY - DIRECT): p50 {added:.3f} ms, p90 {added_p90:.3f} ms")
if stream["PROXY"][0] > 50:
    print("WARNING: proxied TTFB is over half the ~100 ms stream: is the proxy buffering it?")

ratio = medians["PROXY-HIT"] / medians["CEILING"]
print(f"\nHIT/CEILING ratio: {ratio:.2f} (median proxy req/s / median ceiling req/s);"
      f" STREAM added TTFB p50: {added:.3f} ms")
PY
