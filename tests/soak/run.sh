#!/usr/bin/env bash
# Loopback soak (`make soak`): the release proxy in front of the bench upstream, driven by the
# `soak` example in three phases: `disconnect` (1,000 streams dropped after the first chunk:
# in_flight back to 0, no fds left open, RSS bounded), `mix` (HIT/MISS/STREAM/BYPASS/ABUSIVE
# from 50,000 client IPs, every response checked, RSS and fds bounded after warm-up) and `ips`
# (1,000,000 GETs from distinct IPs, then the rate limiter must forget them and RSS come back).
# The bounds are in tests/soak/bounds.rs and the phases, and listed in the README.
# Env: SOAK_SECONDS (mix phase, default 60), SOAK_CLIENTS (mix concurrency, default 200),
# SOAK_CACHE_MB (the proxy's MAX_CACHE_SIZE, default 8: small, so the cache is full and evicting
# well before the mix phase's warm-up ends and RSS growth after it means a leak, not a fill).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MIX_SECONDS="${SOAK_SECONDS:-60}"
CLIENTS="${SOAK_CLIENTS:-200}"
CACHE_MB="${SOAK_CACHE_MB:-8}"
READY_DEADLINE=60

die() {
    echo "soak: FAIL: $*" >&2
    exit 1
}

[[ "$MIX_SECONDS" =~ ^[1-9][0-9]*$ ]] || die "SOAK_SECONDS must be a positive integer, got '$MIX_SECONDS'"
[[ "$CLIENTS" =~ ^[1-9][0-9]*$ ]] || die "SOAK_CLIENTS must be a positive integer, got '$CLIENTS'"
[[ "$CACHE_MB" =~ ^[1-9][0-9]*$ ]] || die "SOAK_CACHE_MB must be a positive integer, got '$CACHE_MB'"
for tool in curl python3 timeout; do
    command -v "$tool" >/dev/null || die "'$tool' is required but not installed"
done

# The proxy as it ships (`make release`; see tests/bench/run.sh: built with the examples it would
# get the dev-dependencies' features too).
PROXY_BIN="$(bash .ci/release | tail -n 1)"
cargo build --release --example bench-upstream --example soak

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
# Loopback only. 127.0.0.1 is the one trusted proxy, so the soak client's X-Forwarded-For picks
# the client IP; RATE_LIMIT=600 is far above what any pooled IP sends but not the abusive one.
env -u PROXY_URL -u PROXY_FROM_ENV -u ADMIN_TOKEN \
    PORT="$PROXY_PORT" HOST=127.0.0.1 OPENAI_API_URL="http://127.0.0.1:$UPSTREAM_PORT" \
    RATE_LIMIT=600 TRUSTED_PROXIES=127.0.0.1/32 CACHE_TTL=1h MAX_CACHE_SIZE="$CACHE_MB" \
    LOG_FORMAT=json RUST_LOG=warn \
    "$PROXY_BIN" >"$WORK/proxy.log" 2>&1 &
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
echo "soak: proxy pid $PROXY_PID on $PROXY (MAX_CACHE_SIZE=${CACHE_MB} MB, fd limit $(ulimit -n))," \
    "bench upstream pid $UPSTREAM_PID on $UPSTREAM" >&2

RESULTS=()
FAILED=0
run_phase() { # phase time-limit-seconds
    local rc=0 started=$SECONDS
    echo >&2
    PHASE="$1" PROXY="$PROXY" UPSTREAM="$UPSTREAM" PROXY_PID="$PROXY_PID" \
        DURATION_SECS="$MIX_SECONDS" CLIENTS="$CLIENTS" \
        timeout "$2" target/release/examples/soak | tee "$WORK/$1.out" || rc=$?
    local verdict=PASS
    if ((rc == 124)); then
        verdict="FAIL (killed after the ${2} s time limit)"
    elif ((rc != 0)); then
        verdict="FAIL (exit $rc)"
    fi
    if ! kill -0 "$PROXY_PID" 2>/dev/null; then
        verdict="FAIL (the proxy exited)"
    fi
    [[ "$verdict" == PASS ]] || FAILED=1
    RESULTS+=("| $1 | $verdict | $((SECONDS - started)) |")
    if ! kill -0 "$PROXY_PID" 2>/dev/null; then
        tail -n 20 "$WORK/proxy.log" >&2
        summary
        exit 1
    fi
}

summary() {
    echo
    echo "## soak summary"
    echo
    echo "| phase | result | seconds |"
    echo "|---|---|---:|"
    printf '%s\n' "${RESULTS[@]}"
    # RUST_LOG=warn: only upstream failures and the proxy's own errors are logged, so every
    # line here is worth a look.
    local lines warn error server
    lines="$(wc -l <"$WORK/proxy.log")"
    warn="$(grep -c '"level":"WARN"' "$WORK/proxy.log" || true)"
    error="$(grep -c '"level":"ERROR"' "$WORK/proxy.log" || true)"
    server="$(grep -cE '"(status|upstream_status)":5[0-9][0-9]' "$WORK/proxy.log" || true)"
    echo
    echo "proxy log: $lines lines, $warn WARN, $error ERROR, $server mentioning a 5xx status;" \
        "bench upstream served $("${CURL[@]}" "$UPSTREAM/count" || echo '?') requests"
    if ((lines > 0)); then
        echo "proxy log lines by message (numbers replaced by N):"
        grep -o '"level":"[A-Z]*","message":"[^"]*"' "$WORK/proxy.log" |
            sed -E 's/[0-9]+(\.[0-9]+)?/N/g' | sort | uniq -c | sort -rn | head -n 10 || true
    fi
}

# Bounded: each phase has its own limits inside; these are the backstops.
run_phase disconnect 240
run_phase mix $((MIX_SECONDS + 180))
run_phase ips 600
summary
((FAILED == 0)) || die "at least one phase failed (see above)"
echo "soak: PASS"
