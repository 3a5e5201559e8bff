#!/usr/bin/env bash
# Side-by-side bench (`make bench`, issue 6), all on 127.0.0.1 in one run: the proxy (PROXY,
# the shipped binary: `make release`, profile-guided where it can be) against a bare actix-web
# handler serving the same bytes (CEILING, also the upstream: DIRECT) and Debian's nginx as a
# caching reverse proxy (NGINX, config: nginx.conf.in).
# In HIT, CEILING-HEAD is the bare handler sending the proxy's HIT head too (its X-Cache, Age,
# Cache-Status, ... headers): what that head costs, apart from what the proxy's code costs;
# STACK-CACHE (below) is the least a cache on this stack does for a HIT (key, lookup, stored
# bytes out), so PROXY / STACK-CACHE is what the proxy's features cost a HIT; and
# PROXY-PLAIN (HIT and FORWARD) is the same code as a plain release build, without the profile:
# PROXY / PROXY-PLAIN is what the profile-guided build gives. PROXY-INFO is the proxy at its
# default RUST_LOG=info (PROXY runs at warn, as NGINX has its access log off), an access log line
# per request written to a pipe, as under Docker.
# FORWARD at one connection also goes through RELAY, socat copying bytes between the client and
# the upstream without reading HTTP: the least a second hop adds on this machine. FORWARD and
# MISS-unique also go through STACK (forwarder.rs), a bare actix-web handler that forwards with
# awc and returns the whole answer: the least a proxy on this project's stack does for a request
# it has to send upstream, so what PROXY adds over STACK is this crate's own work. STACK-CACHE
# (the same forwarder with CACHE_MB) adds the least a cache on this stack does (a SHA-256 key,
# moka's lookup and store): what PROXY adds over it is work beyond that least. In HIT and FORWARD,
# STACK-CACHE-HEAD is STACK-CACHE sending the proxy's head too (copied from the proxy's own HIT and
# forward at the start of the run): the least a cache on this stack does with the head the issues
# require, so PROXY / STACK-CACHE-HEAD is what the proxy's code costs beyond sending that head.
# Scenarios: HIT, HIT-large, FORWARD (64 connections and 1), MISS-unique, STREAM, start-up; each
# after a functional check, targets interleaved round by round. Prints a Markdown table and ratios.
# Env: BENCH_SECONDS (per wrk run, default 5), BENCH_ROUNDS (interleaved rounds, default 5, min 2),
# BENCH_STREAM_REQUESTS (streamed requests, half DIRECT and half PROXY misses, each miss then
# replayed as a HIT, default 200, min 2),
# BENCH_STARTS (proxy start-ups timed, default 5), BENCH_HALT_POLL_NS (the guest's halt polling in
# nanoseconds for the run, on a VM with the haltpoll cpuidle driver; root; restored at exit).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

SECONDS_PER_RUN="${BENCH_SECONDS:-5}"
ROUNDS="${BENCH_ROUNDS:-5}"
STREAM_REQUESTS="${BENCH_STREAM_REQUESTS:-200}"
STARTS="${BENCH_STARTS:-5}"
B=tests/bench
READY_DEADLINE=60
MISS_CACHE_MB=64

die() {
    echo "bench: FAIL: $*" >&2
    exit 1
}
say() { echo "bench: $*" >&2; }

[[ "$SECONDS_PER_RUN" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer, got '$SECONDS_PER_RUN'"
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 2 ]] || die "BENCH_ROUNDS must be an integer >= 2, got '$ROUNDS'"
[[ "$STREAM_REQUESTS" =~ ^[0-9]+$ && "$STREAM_REQUESTS" -ge 2 ]] ||
    die "BENCH_STREAM_REQUESTS must be an integer >= 2, got '$STREAM_REQUESTS'"
[[ "$STARTS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_STARTS must be a positive integer, got '$STARTS'"
# How an idle CPU waits decides what a wakeup costs, and at one connection every request is a
# chain of wakeups. In a VM with the haltpoll cpuidle driver an idle vCPU may poll for a while
# before it halts; once halted, waking it goes through the hypervisor. BENCH_HALT_POLL_NS sets
# that while (the kernel's default is 200000); the run prints the setting it measured under.
HALT_POLL=/sys/module/haltpoll/parameters/guest_halt_poll_ns
HALT_POLL_BEFORE=""
if [[ -n "${BENCH_HALT_POLL_NS:-}" ]]; then
    [[ "$BENCH_HALT_POLL_NS" =~ ^[0-9]+$ ]] ||
        die "BENCH_HALT_POLL_NS must be a whole number of nanoseconds, got '$BENCH_HALT_POLL_NS'"
    [[ -e "$HALT_POLL" ]] ||
        die "BENCH_HALT_POLL_NS is set, but $HALT_POLL is missing: this kernel has no haltpoll cpuidle driver"
    [[ "$(id -u)" -eq 0 ]] || die "BENCH_HALT_POLL_NS is set, but only root can write $HALT_POLL"
    HALT_POLL_BEFORE="$(<"$HALT_POLL")"
fi

# --- Tools: Debian packages, installed when missing and we are root. ---
for tool in curl python3 timeout; do
    command -v "$tool" >/dev/null || die "'$tool' is required but not installed"
done
find_nginx() { command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; }; }
missing=()
command -v wrk >/dev/null || missing+=(wrk)
find_nginx >/dev/null || missing+=(nginx)
find_redis() { command -v redis-server || { [[ -x /usr/bin/redis-server ]] && echo /usr/bin/redis-server; }; }
find_redis >/dev/null || missing+=(redis-server)
command -v socat >/dev/null || missing+=(socat)
if ((${#missing[@]} > 0)); then
    [[ "$(id -u)" -eq 0 ]] ||
        die "not installed: ${missing[*]}; we are not root, so run: sudo apt-get install ${missing[*]}"
    say "installing ${missing[*]} with apt-get"
    # Keep the package from starting a system nginx on :80: invoke-rc.d asks policy-rc.d first,
    # and 101 means "action forbidden" (Debian's policy-rc.d interface).
    guard=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        guard=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$guard"
        chmod +x "$guard"
    fi
    rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || rc=$?
    [[ -z "$guard" ]] || rm -f "$guard"
    ((rc == 0)) || die "apt-get install ${missing[*]} failed (exit $rc)"
fi
NGINX_BIN="$(find_nginx)" || die "nginx not found after installing it"
REDIS_BIN="$(find_redis)" || die "redis-server not found after installing it"

cpu="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
nginx_version="$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
# `wrk -v` prints its version, then exits 1.
wrk_version="$(wrk -v 2>&1 | awk '{print $1, $2; exit}' || true)"
echo "Machine: $(nproc) CPUs, $cpu, kernel $(uname -r); $nginx_version, $wrk_version"
# Other work on the machine skews every figure; the load average before we start shows it.
load="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "Load average before the run: $load"
awk -v l="${load%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }' &&
    say "warning: load average $load on $(nproc) CPUs before we start; figures will be noisy"

# The proxy as it ships (`make run`, the Dockerfile): built on its own, profile-guided where a
# matching llvm-profdata is or can be installed (.ci/release). Built together with the examples,
# it would get the dev-dependencies' features too (Cargo unifies them per build), 0.6 MB more of
# TLS-server and runtime code than the shipped binary has. The bench's own targets (CEILING,
# STACK*) are plain release builds.
PROXY_BIN="$(bash .ci/release | tail -n 1)"
cargo build --release --bin openai-cache-proxy
PLAIN_BIN=target/release/openai-cache-proxy
echo "Proxy build: $(cat target/dist/build) ($PROXY_BIN, $(stat -c %s "$PROXY_BIN") bytes);" \
    "PROXY-PLAIN: $PLAIN_BIN, $(stat -c %s "$PLAIN_BIN") bytes"
cargo build --release --example bench-upstream --example bench-forwarder

# Distinct free ports: bind all before closing any.
read -r UPSTREAM_PORT PROXY_PORT MISS_PORT NGINX_PORT REDIS_PORT L2W_PORT L2_PORT RELAY_PORT STACK_PORT \
    STACK_CACHE_PORT CEILING_HEAD_PORT PROXY_INFO_PORT STACK_CACHE_HEAD_PORT PROXY_PLAIN_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(14)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

WORK="$(mktemp -d)"
# nginx's cache on tmpfs, as the issue asks; its own directory so cleanup can remove it whole.
CACHE_DIR="$(mktemp -d -p /dev/shm ocp-bench-nginx.XXXXXX 2>/dev/null || mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK" "$CACHE_DIR"
    [[ -z "$HALT_POLL_BEFORE" ]] || echo "$HALT_POLL_BEFORE" 2>/dev/null >"$HALT_POLL" ||
        say "warning: could not put $HALT_POLL back to $HALT_POLL_BEFORE"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [[ -n "$HALT_POLL_BEFORE" ]]; then
    # A read-only /sys (a container) refuses even root.
    echo "$BENCH_HALT_POLL_NS" 2>/dev/null >"$HALT_POLL" ||
        { HALT_POLL_BEFORE="" && die "BENCH_HALT_POLL_NS: could not write $HALT_POLL"; }
fi
idle_driver="$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none)"
idle_line="CPU idle: cpuidle driver $idle_driver"
[[ ! -e "$HALT_POLL" ]] || idle_line+=", guest halt polling $(<"$HALT_POLL") ns"
[[ -z "$HALT_POLL_BEFORE" ]] || idle_line+=" (BENCH_HALT_POLL_NS; $HALT_POLL_BEFORE before the run)"
echo "$idle_line"
echo "$idle_line" >"$WORK/idle-setting"

stop() { # pid: stop one process we started and forget it
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local keep=() pid
    for pid in "${PIDS[@]}"; do
        [[ "$pid" == "$1" ]] || keep+=("$pid")
    done
    PIDS=("${keep[@]}")
}

UPSTREAM="http://127.0.0.1:$UPSTREAM_PORT"
PROXY="http://127.0.0.1:$PROXY_PORT"
MISS_PROXY="http://127.0.0.1:$MISS_PORT"
NGINX="http://127.0.0.1:$NGINX_PORT"
RELAY="http://127.0.0.1:$RELAY_PORT"
STACK="http://127.0.0.1:$STACK_PORT"
STACK_CACHE="http://127.0.0.1:$STACK_CACHE_PORT"
CEILING_HEAD="http://127.0.0.1:$CEILING_HEAD_PORT"
STACK_CACHE_HEAD="http://127.0.0.1:$STACK_CACHE_HEAD_PORT"
PROXY_INFO="http://127.0.0.1:$PROXY_INFO_PORT"
PROXY_PLAIN="http://127.0.0.1:$PROXY_PLAIN_PORT"
CURL=(curl --silent --show-error --noproxy '*' --max-time 10)

PORT="$UPSTREAM_PORT" target/release/examples/bench-upstream >"$WORK/upstream.log" 2>&1 &
PIDS+=("$!")
UPSTREAM_PID="$!"
PORT="$STACK_PORT" UPSTREAM="$UPSTREAM" target/release/examples/bench-forwarder >"$WORK/stack.log" 2>&1 &
PIDS+=("$!")
STACK_PID="$!"
# Its cache as large as PROXY-MISS's, for MISS-unique.
PORT="$STACK_CACHE_PORT" UPSTREAM="$UPSTREAM" CACHE_MB="$MISS_CACHE_MB" \
    target/release/examples/bench-forwarder >"$WORK/stack-cache.log" 2>&1 &
PIDS+=("$!")
STACK_CACHE_PID="$!"

# PROXY_URL is unset so an outbound proxy in the caller's environment cannot skew the numbers;
# the long CACHE_TTL keeps entries fresh however long the run is.
PROXY_ENV=(env -u PROXY_URL HOST=127.0.0.1 OPENAI_API_URL="$UPSTREAM" RATE_LIMIT=0 CACHE_TTL=1h
    LOG_FORMAT=json RUST_LOG=warn)
start_proxy() { # port log-name [VAR=value...]; sets STARTED_PID
    "${PROXY_ENV[@]}" PORT="$1" "${@:3}" "${BIN:-$PROXY_BIN}" >"$WORK/$2.log" 2>&1 &
    STARTED_PID="$!"
    PIDS+=("$STARTED_PID")
}
start_proxy "$PROXY_PORT" proxy
PROXY_PID="$STARTED_PID"
BIN="$PLAIN_BIN" start_proxy "$PROXY_PLAIN_PORT" proxy-plain
PROXY_PLAIN_PID="$STARTED_PID"
# Its access log lines are counted at the end of the pipe (written when it stops).
"${PROXY_ENV[@]}" RUST_LOG=info PORT="$PROXY_INFO_PORT" "$PROXY_BIN" \
    > >(grep -c '"message":"request"' >"$WORK/proxy-info.lines") 2>"$WORK/proxy-info.log" &
PROXY_INFO_PID="$!"
PIDS+=("$PROXY_INFO_PID")

mkdir -p "$WORK/nginx"
nginx_user=""
# A root master would switch its workers to nobody, who cannot enter our 0700 temp dirs.
[[ "$(id -u)" -ne 0 ]] || nginx_user="user root;"
# nginx's keys zone holds about 8,000 keys per MB, and every MISS-unique request adds one
# faster than its cache manager removes them (100 files per 50 ms by default). A full zone
# answers 500 ("could not allocate node"): 64 MB (~512,000 keys) ran out in the fourth round
# on a VM where nginx did 33,000-35,000 misses a second. The zone is sized for every key of
# the run at up to 100,000 misses a second (313 MB for the default 25 s); nginx touches its
# pages only as keys fill them.
miss_seconds=$((ROUNDS * SECONDS_PER_RUN))
keys_zone_mb=$(((miss_seconds * 100000 + 7999) / 8000))
((keys_zone_mb >= 64)) || keys_zone_mb=64
sed -e "s|@USER@|$nginx_user|" -e "s|@DIR@|$WORK/nginx|g" -e "s|@CACHE_DIR@|$CACHE_DIR|" \
    -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|" -e "s|@PORT@|$NGINX_PORT|" -e "s|@KEYS_ZONE_MB@|$keys_zone_mb|" \
    "$B/nginx.conf.in" >"$WORK/nginx/nginx.conf"
NGINX_ARGS=(-p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log")
"$NGINX_BIN" -t -q "${NGINX_ARGS[@]}" || die "nginx rejected its config ($WORK/nginx/nginx.conf)"
"$NGINX_BIN" "${NGINX_ARGS[@]}" >"$WORK/nginx.log" 2>&1 &
PIDS+=("$!")
NGINX_PID="$!"

wait_ready() { # name pid url
    local deadline=$((SECONDS + READY_DEADLINE))
    until "${CURL[@]}" --fail --output /dev/null "$3" 2>/dev/null; do
        if ! kill -0 "$2" 2>/dev/null; then
            cat "$WORK"/*.log "$WORK/nginx/error.log" >&2 2>/dev/null || true
            die "$1 exited before becoming ready"
        fi
        ((SECONDS < deadline)) || die "$1 not ready at $3 after ${READY_DEADLINE}s"
        sleep 0.05
    done
}
wait_ready upstream "$UPSTREAM_PID" "$UPSTREAM/count"
wait_ready proxy "$PROXY_PID" "$PROXY/health"
wait_ready proxy-info "$PROXY_INFO_PID" "$PROXY_INFO/health"
wait_ready proxy-plain "$PROXY_PLAIN_PID" "$PROXY_PLAIN/health"
wait_ready stack "$STACK_PID" "$STACK/count"
wait_ready stack-cache "$STACK_CACHE_PID" "$STACK_CACHE/count"
wait_ready nginx "$NGINX_PID" "$NGINX/count"

# --- Functional checks: the numbers below must be real hits, real forwards, real misses. ---
lua_body() { # lua-file out-file
    local body
    body="$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$1")"
    [[ -n "$body" ]] || die "could not read wrk.body from $1"
    printf '%s' "$body" >"$2"
}
lua_body "$B/post.lua" "$WORK/chat.json"
lua_body "$B/embeddings.lua" "$WORK/embeddings.json"

# Exactly the headers wrk sends (curl's Accept and User-Agent removed): Accept is part of the
# proxy's cache key, so this warms the very entry the HIT rounds read.
post() { # base-url path body-file out-prefix [extra header]
    local extra=()
    [[ $# -lt 5 ]] || extra=(--header "$5")
    "${CURL[@]}" --fail --request POST "$1$2" \
        --header 'Content-Type: application/json' --header 'Authorization: Bearer sk-bench' \
        --header 'Accept:' --header 'User-Agent:' "${extra[@]}" \
        --data-binary "@$3" --dump-header "$4.h" --output "$4.b"
}
upstream_count() { "${CURL[@]}" --fail "$UPSTREAM/count"; }
header() { tr -d '\r' <"$1" | awk -F': *' -v h="$2" 'tolower($1) == h {print $2}'; }
cache_status() { # target headers-file: our X-Cache, or the X-Cache-Status nginx.conf.in adds
    if [[ "$1" == NGINX ]]; then header "$2" x-cache-status; else header "$2" x-cache; fi
}
same_body() { # what expected-file actual-file
    cmp -s "$2" "$3" || die "$1: body ($(wc -c <"$3") B) differs from the upstream's ($(wc -c <"$2") B)"
}

check_hit() { # scenario target base-url path body-file
    local out="$WORK/check-$1-$2" count2 count3 status
    post "$UPSTREAM" "$4" "$5" "$out-direct"
    for i in 1 2 3; do
        post "$3" "$4" "$5" "$out-$i"
        if [[ $i -eq 2 ]]; then count2="$(upstream_count)"; fi
    done
    count3="$(upstream_count)"
    status="$(cache_status "$2" "$out-3.h")"
    if [[ "$status" != HIT ]]; then
        cat "$out-1.h" "$out-2.h" "$out-3.h" >&2
        die "$1 $2: 3rd identical POST $4: expected a HIT, got '${status:-<none>}'"
    fi
    [[ "$count2" == "$count3" ]] || die "$1 $2: upstream /count moved from $count2 to $count3 on a HIT"
    for f in "$out-direct" "$out-3"; do
        # A server that closes after each request measures reconnects, not request handling.
        if tr -d '\r' <"$f.h" | grep -qix 'connection: close'; then
            cat "$f.h" >&2
            die "$1 $2: Connection: close in $f.h; wrk would reconnect for every request"
        fi
    done
    same_body "$1 $2 HIT" "$out-direct.b" "$out-3.b"
    say "$1 $2: functional check ok (3rd request a HIT, upstream count steady at $count3," \
        "body identical: $(wc -c <"$out-3.b") B)"
}

check_reaches_upstream() { # scenario target base-url body-file [extra header]
    local out="$WORK/check-$1-$2" before after status
    post "$UPSTREAM" /v1/chat/completions "$4" "$out-direct"
    before="$(upstream_count)"
    post "$3" /v1/chat/completions "$4" "$out" "${@:5}"
    after="$(upstream_count)"
    status="$(cache_status "$2" "$out.h")"
    [[ $((after - before)) -eq 1 && "$status" != HIT ]] ||
        die "$1 $2: expected the request to reach the upstream once, got $((after - before))" \
            "upstream requests and cache status '${status:-<none>}'"
    same_body "$1 $2" "$out-direct.b" "$out.b"
    say "$1 $2: functional check ok (reached the upstream, cache status ${status:-<none>}," \
        "body identical: $(wc -c <"$out.b") B)"
}

check_stream() {
    # A proxied SSE stream reaches the upstream and comes back byte for byte. The body is unique
    # to this run and no-store is sent, so no cache (today's or a future stream cache) answers it.
    local body='{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"bench'
    body+=" stream check $$ $RANDOM\"}]}"
    post_stream() { # url out-prefix
        "${CURL[@]}" --fail --no-buffer --request POST "$1/v1/chat/completions" \
            --header 'Content-Type: application/json' --header 'Authorization: Bearer sk-bench' \
            --header 'Accept: text/event-stream' --header 'Cache-Control: no-store' \
            --data-binary "$body" --dump-header "$2.h" --output "$2.b"
    }
    local before after ct status
    before="$(upstream_count)"
    post_stream "$UPSTREAM" "$WORK/stream-direct"
    post_stream "$PROXY" "$WORK/stream-proxy"
    after="$(upstream_count)"
    [[ $((after - before)) -eq 2 ]] ||
        die "upstream served $((after - before)) of 2 streamed requests (1 direct, 1 proxied)"
    ct="$(header "$WORK/stream-direct.h" content-type)"
    if [[ "$ct" != text/event-stream* ]]; then
        cat "$WORK/stream-direct.h" >&2
        die "bench upstream answered \"stream\":true with content-type '$ct', not an event stream"
    fi
    ct="$(header "$WORK/stream-proxy.h" content-type)"
    status="$(header "$WORK/stream-proxy.h" x-cache)"
    if [[ "$ct" != text/event-stream* || "$status" == HIT ]]; then
        cat "$WORK/stream-proxy.h" >&2
        die "proxied stream: expected text/event-stream and no x-cache: HIT for a unique no-store body"
    fi
    same_body "STREAM PROXY" "$WORK/stream-direct.b" "$WORK/stream-proxy.b"
    say "STREAM PROXY: functional check ok (x-cache: ${status:-<none>}, upstream reached," \
        "body identical: $(wc -c <"$WORK/stream-direct.b") B)"
}

# --- Measurement. ---
# Entries of all CPUs into an idle state other than polling: each one a CPU that stopped and had
# to be woken (in a VM, a halt that the hypervisor ends). Prints nothing without cpuidle.
idle_sleeps() {
    local state name total=0 found=""
    for state in /sys/devices/system/cpu/cpu[0-9]*/cpuidle/state[0-9]*; do
        [[ -r "$state/usage" && -r "$state/name" ]] || continue
        found=1
        name="$(<"$state/name")"
        [[ "$name" == POLL ]] || total=$((total + $(<"$state/usage")))
    done
    [[ -z "$found" ]] || echo "$total"
}

# One wrk run; appends `scenario target round req/s p50-ms requests` to $WORK/results and sets
# WRK_REQUESTS. 64 connections on 2 threads, or 1 on 1; script arguments go after the URL. A
# run on one connection also appends `scenario target round idle-sleeps requests` to
# $WORK/idle: there every request is a chain of wakeups, and what one costs depends on whether
# the CPU it lands on was asleep.
run_wrk() { # scenario target base-url connections round lua [script-args...]
    local out="$WORK/wrk-$1-$2-$5.txt" threads=2 sleeps=""
    ((${4} > 1)) || { threads=1 && sleeps="$(idle_sleeps)"; }
    timeout $((SECONDS_PER_RUN + 30)) \
        wrk -t"$threads" -c"$4" -d"${SECONDS_PER_RUN}s" --latency -s "$6" "$3" "${@:7}" >"$out" 2>&1 ||
        { cat "$out" >&2; die "wrk against $1 $2 failed (round $5)"; }
    if grep -q 'Non-2xx or 3xx responses' "$out"; then
        cat "$out" >&2
        local why=""
        [[ "$2" != NGINX ]] || ! grep -q 'could not allocate node' "$WORK/nginx/error.log" ||
            why=" (nginx's error log: its $keys_zone_mb MB keys zone is full)"
        die "wrk against $1 $2 saw non-2xx responses (round $5)$why"
    fi
    if grep -q 'Socket errors' "$out"; then
        say "warning: $1 $2 round $5: $(grep 'Socket errors' "$out" | sed 's/^ *//')"
    fi
    local rps p50
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    # wrk prints "50%  1.23ms" (us, ms or s); normalise to ms.
    p50="$(awk '$1 == "50%" {v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        f = (u == "us") ? 0.001 : (u == "s") ? 1000 : 1; printf "%.3f", v * f}' "$out")"
    WRK_REQUESTS="$(awk '/ requests in / {print $1}' "$out")"
    [[ -n "$rps" && -n "$p50" && -n "$WRK_REQUESTS" ]] ||
        { cat "$out" >&2; die "could not parse wrk output for $1 $2"; }
    echo "$1 $2 $5 $rps $p50 $WRK_REQUESTS" >>"$WORK/results"
    [[ -z "$sleeps" ]] || echo "$1 $2 $5 $(($(idle_sleeps) - sleeps)) $WRK_REQUESTS" >>"$WORK/idle"
    say "round $5 $1 $2: $rps req/s, p50 ${p50} ms"
}

url_of() {
    case "$1" in
        CEILING | DIRECT) echo "$UPSTREAM" ;;
        CEILING-HEAD) echo "$CEILING_HEAD" ;;
        NGINX) echo "$NGINX" ;;
        RELAY) echo "$RELAY" ;;
        STACK) echo "$STACK" ;;
        STACK-CACHE) echo "$STACK_CACHE" ;;
        STACK-CACHE-HEAD) echo "$STACK_CACHE_HEAD" ;;
        PROXY) echo "$PROXY" ;;
        PROXY-INFO) echo "$PROXY_INFO" ;;
        PROXY-PLAIN) echo "$PROXY_PLAIN" ;;
        PROXY-MISS) echo "$MISS_PROXY" ;;
        PROXY-L2) echo "$L2_PROXY" ;;
    esac
}

# Rounds of A B C ...; `expect` checks the upstream counter around each cache's run: `none`
# (all HITs: it must not move, or the run is void) or `all` (every completed request should
# have reached it: MISS or FORWARD; a shortfall is reported, since it is the cache's behaviour).
measure() { # scenario connections lua expect targets...
    local scenario="$1" conns="$2" lua="$3" expect="$4" round target before after
    shift 4
    for round in $(seq 1 "$ROUNDS"); do
        for target in "$@"; do
            before="$(upstream_count)"
            # MISS-unique: a nonce per run keeps bodies unique across rounds and targets.
            run_wrk "$scenario" "$target" "$(url_of "$target")" "$conns" "$round" "$lua" \
                -- "$target-$round-$$-$RANDOM"
            after="$(upstream_count)"
            [[ "$target" == CEILING* || "$target" == DIRECT ]] && continue
            if [[ "$expect" == none && "$after" != "$before" ]]; then
                die "$scenario $target round $round: upstream served $((after - before))" \
                    "requests: not all HITs"
            fi
            # Not fatal: the figure is still what a client gets; report.py lists the shortfall.
            echo "$scenario $target $round $((after - before)) $WRK_REQUESTS" >>"$WORK/upstream"
            if [[ "$expect" == all && $((after - before)) -lt "$WRK_REQUESTS" ]]; then
                say "warning: $scenario $target round $round: upstream served only" \
                    "$((after - before)) of $WRK_REQUESTS requests (coalesced or cached)"
            fi
            [[ "$target" != PROXY-MISS ]] || echo "round $(rss_kb "$MISS_PID")" >>"$WORK/miss-rss"
        done
    done
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# HIT: the 1.4 KB chat completion.
check_hit HIT NGINX "$NGINX" /v1/chat/completions "$WORK/chat.json"
check_hit HIT PROXY "$PROXY" /v1/chat/completions "$WORK/chat.json"
check_hit HIT STACK-CACHE "$STACK_CACHE" /v1/chat/completions "$WORK/chat.json"
# CEILING-HEAD: the bare handler sending the head of that proxy HIT too (all but the status line
# and the headers it sets itself), so the cost of the head is apart from the proxy's code.
# STACK-CACHE-HEAD: STACK-CACHE sending that head on a HIT, and a proxy forward's on a MISS (all
# but X-Cache, which it sets itself as STACK-CACHE does).
source "$B/head_lines.sh"
head_lines <"$WORK/check-HIT-PROXY-3.h" >"$WORK/proxy-head.txt"
head_lines x-cache <"$WORK/check-HIT-PROXY-3.h" >"$WORK/proxy-hit-head.txt"
post "$PROXY" /v1/chat/completions "$WORK/chat.json" "$WORK/proxy-forward" 'Cache-Control: no-cache'
head_lines x-cache <"$WORK/proxy-forward.h" >"$WORK/proxy-miss-head.txt"
PORT="$CEILING_HEAD_PORT" HEAD_FROM="$WORK/proxy-head.txt" target/release/examples/bench-upstream \
    >"$WORK/ceiling-head.log" 2>&1 &
PIDS+=("$!")
CEILING_HEAD_PID="$!"
PORT="$STACK_CACHE_HEAD_PORT" UPSTREAM="$UPSTREAM" CACHE_MB="$MISS_CACHE_MB" \
    HIT_HEAD_FROM="$WORK/proxy-hit-head.txt" MISS_HEAD_FROM="$WORK/proxy-miss-head.txt" \
    target/release/examples/bench-forwarder >"$WORK/stack-cache-head.log" 2>&1 &
PIDS+=("$!")
STACK_CACHE_HEAD_PID="$!"
wait_ready ceiling-head "$CEILING_HEAD_PID" "$CEILING_HEAD/count"
wait_ready stack-cache-head "$STACK_CACHE_HEAD_PID" "$STACK_CACHE_HEAD/count"
post "$CEILING_HEAD" /v1/chat/completions "$WORK/chat.json" "$WORK/check-HIT-CEILING-HEAD"
names() { tr -d '\r' <"$1" | sed 1d | awk -F: 'NF > 1 {print tolower($1)}' | sort; }
same_names() { # what headers-file proxy-headers-file
    [[ "$(names "$2")" == "$(names "$3")" ]] ||
        die "$1's header names differ from the proxy's:" "$(diff <(names "$2") <(names "$3") | tr '\n' ' ')"
}
same_names CEILING-HEAD "$WORK/check-HIT-CEILING-HEAD.h" "$WORK/check-HIT-PROXY-3.h"
same_body "HIT CEILING-HEAD" "$WORK/check-HIT-PROXY-direct.b" "$WORK/check-HIT-CEILING-HEAD.b"
say "HIT CEILING-HEAD: functional check ok (the header names of a proxy HIT," \
    "$(wc -c <"$WORK/check-HIT-CEILING-HEAD.h") B of head against the proxy's $(wc -c <"$WORK/check-HIT-PROXY-3.h") B, body identical)"
check_hit HIT STACK-CACHE-HEAD "$STACK_CACHE_HEAD" /v1/chat/completions "$WORK/chat.json"
same_names "STACK-CACHE-HEAD's HIT" "$WORK/check-HIT-STACK-CACHE-HEAD-3.h" "$WORK/check-HIT-PROXY-3.h"
same_names "STACK-CACHE-HEAD's MISS" "$WORK/check-HIT-STACK-CACHE-HEAD-1.h" "$WORK/proxy-forward.h"
check_hit HIT PROXY-INFO "$PROXY_INFO" /v1/chat/completions "$WORK/chat.json"
check_hit HIT PROXY-PLAIN "$PROXY_PLAIN" /v1/chat/completions "$WORK/chat.json"
measure HIT 64 "$B/post.lua" none CEILING CEILING-HEAD STACK-CACHE STACK-CACHE-HEAD NGINX PROXY PROXY-PLAIN \
    PROXY-INFO
stop "$CEILING_HEAD_PID"
# PROXY-INFO must have logged every request it answered: wrk's, the check's 3 and a /health.
stop "$PROXY_INFO_PID"
info_answered=$(awk '$1 == "HIT" && $2 == "PROXY-INFO" {n += $6} END {print n + 4}' "$WORK/results")
deadline=$((SECONDS + 10))
until [[ -s "$WORK/proxy-info.lines" ]] || ((SECONDS > deadline)); do sleep 0.1; done
info_lines="$(cat "$WORK/proxy-info.lines" 2>/dev/null || true)"
[[ -n "$info_lines" ]] && ((info_lines >= info_answered)) ||
    die "PROXY-INFO logged ${info_lines:-no} access lines for at least $info_answered requests"
say "HIT PROXY-INFO: $info_lines access log lines for the $info_answered requests wrk and the" \
    "checks completed (requests in flight when wrk stops are answered and logged too)"

# HIT-large: the ~32 KB embeddings answer.
check_hit HIT-large NGINX "$NGINX" /v1/embeddings "$WORK/embeddings.json"
check_hit HIT-large PROXY "$PROXY" /v1/embeddings "$WORK/embeddings.json"
measure HIT-large 64 "$B/embeddings.lua" none CEILING NGINX PROXY

# FORWARD: Cache-Control: no-cache on every request, throughput and then latency on 1 connection.
check_reaches_upstream FORWARD NGINX "$NGINX" "$WORK/chat.json" 'Cache-Control: no-cache'
check_reaches_upstream FORWARD PROXY "$PROXY" "$WORK/chat.json" 'Cache-Control: no-cache'
check_reaches_upstream FORWARD STACK "$STACK" "$WORK/chat.json" 'Cache-Control: no-cache'
# STACK-CACHE is a cache (its HITs were checked in HIT): no-cache requests reach the upstream.
check_reaches_upstream FORWARD STACK-CACHE "$STACK_CACHE" "$WORK/chat.json" 'Cache-Control: no-cache'
check_reaches_upstream FORWARD STACK-CACHE-HEAD "$STACK_CACHE_HEAD" "$WORK/chat.json" 'Cache-Control: no-cache'
same_names "STACK-CACHE-HEAD's forward" "$WORK/check-FORWARD-STACK-CACHE-HEAD.h" "$WORK/check-FORWARD-PROXY.h"
check_reaches_upstream FORWARD PROXY-PLAIN "$PROXY_PLAIN" "$WORK/chat.json" 'Cache-Control: no-cache'
measure FORWARD 64 "$B/forward.lua" all DIRECT NGINX STACK STACK-CACHE STACK-CACHE-HEAD PROXY PROXY-PLAIN
stop "$STACK_CACHE_HEAD_PID"
stop "$PROXY_PLAIN_PID"
# RELAY: one socat process per connection (`fork`), each ending with its connection.
socat TCP-LISTEN:"$RELAY_PORT",bind=127.0.0.1,reuseaddr,fork,nodelay \
    TCP:127.0.0.1:"$UPSTREAM_PORT",nodelay >"$WORK/relay.log" 2>&1 &
PIDS+=("$!")
RELAY_PID="$!"
wait_ready relay "$RELAY_PID" "$RELAY/count"
measure FORWARD-1c 1 "$B/forward.lua" all DIRECT RELAY STACK STACK-CACHE NGINX PROXY
stop "$RELAY_PID"

# MISS-unique: every body new, against a fresh proxy with a 64 MB cache whose RSS is sampled.
start_proxy "$MISS_PORT" proxy-miss MAX_CACHE_SIZE="$MISS_CACHE_MB"
MISS_PID="$STARTED_PID"
wait_ready "proxy (MISS)" "$MISS_PID" "$MISS_PROXY/health"
sleep 0.3
echo "idle $(rss_kb "$MISS_PID")" >"$WORK/miss-rss"
printf '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"bench miss check %s %s"}]}' \
    "$$" "$RANDOM" >"$WORK/unique.json"
check_reaches_upstream MISS-unique NGINX "$NGINX" "$WORK/unique.json"
check_reaches_upstream MISS-unique PROXY-MISS "$MISS_PROXY" "$WORK/unique.json"
check_reaches_upstream MISS-unique STACK-CACHE "$STACK_CACHE" "$WORK/unique.json"
(
    while kill -0 "$MISS_PID" 2>/dev/null; do
        echo "during $(rss_kb "$MISS_PID")" >>"$WORK/miss-rss"
        sleep 0.25
    done
) 2>/dev/null &
PIDS+=("$!")
SAMPLER_PID="$!"
measure MISS-unique 64 "$B/unique.lua" all NGINX STACK STACK-CACHE PROXY-MISS
stop "$SAMPLER_PID"
sleep 1
echo "after $(rss_kb "$MISS_PID")" >>"$WORK/miss-rss"
# What the cache thinks it holds, to set against the RSS (best effort: report.py copes without).
"${CURL[@]}" --fail --output "$WORK/miss-stats.json" "$MISS_PROXY/stats" || rm -f "$WORK/miss-stats.json"
stop "$MISS_PID"
stop "$STACK_PID"
stop "$STACK_CACHE_PID"

# HIT-L2: answers from Redis (L2). A writer proxy stores BENCH_L2_KEYS answers in Redis; the
# measured proxy shares that Redis with an L1 of MAX_CACHE_SIZE=1 (~500 such entries), and
# cycle.lua steps through the keys in order, so its L1 never has the next one: every request
# is an L1 miss answered from Redis (checked below with its /stats), the upstream untouched.
export BENCH_L2_KEYS="${BENCH_L2_KEYS:-20000}"
"$REDIS_BIN" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=("$!")
REDIS_PID="$!"
L2_ENV=(REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" REDIS_TIMEOUT=1s)
start_proxy "$L2W_PORT" proxy-l2-writer "${L2_ENV[@]}" MAX_CACHE_SIZE=64
L2W_PID="$STARTED_PID"
start_proxy "$L2_PORT" proxy-l2 "${L2_ENV[@]}" MAX_CACHE_SIZE=1
L2_PID="$STARTED_PID"
L2W_PROXY="http://127.0.0.1:$L2W_PORT"
L2_PROXY="http://127.0.0.1:$L2_PORT"
redis_ok() { # url: until its /health reports redis ok
    local deadline=$((SECONDS + READY_DEADLINE))
    until "${CURL[@]}" "$1/health" 2>/dev/null | grep -q '"redis":"ok"'; do
        kill -0 "$REDIS_PID" 2>/dev/null || { cat "$WORK/redis.log" >&2; die "redis-server exited"; }
        ((SECONDS < deadline)) || die "$1 never reported redis ok"
        sleep 0.1
    done
}
wait_ready "proxy (L2 writer)" "$L2W_PID" "$L2W_PROXY/health"
wait_ready "proxy (L2)" "$L2_PID" "$L2_PROXY/health"
redis_ok "$L2W_PROXY"
redis_ok "$L2_PROXY"
say "HIT-L2: storing $BENCH_L2_KEYS answers in Redis through the writer proxy"
timeout 120 wrk -t2 -c64 -d"$((BENCH_L2_KEYS / 4000 + 2))s" -s "$B/cycle.lua" "$L2W_PROXY" >"$WORK/l2-warm.txt" 2>&1 ||
    { cat "$WORK/l2-warm.txt" >&2; die "warming Redis failed"; }
stored="$("${CURL[@]}" "$L2W_PROXY/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cache"]["stores"])')"
[[ "$stored" -ge "$BENCH_L2_KEYS" ]] || die "HIT-L2: the writer stored only $stored of $BENCH_L2_KEYS answers"
l2_hits() { "${CURL[@]}" "$L2_PROXY/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["redis"]["l2_hits"])'; }
l2_before="$(l2_hits)"
measure HIT-L2 64 "$B/cycle.lua" none PROXY-L2
l2_after="$(l2_hits)"
l2_requests="$(awk '$1 == "HIT-L2" {n += $6} END {print n + 0}' "$WORK/results")"
echo "$l2_requests $((l2_after - l2_before))" >"$WORK/l2"
say "HIT-L2: $((l2_after - l2_before)) L2 hits for $l2_requests requests"
# Every counted request must have been an L2 hit (a few more lookups than completed requests
# are in flight when wrk stops).
[[ $((l2_after - l2_before)) -ge $((l2_requests * 95 / 100)) ]] ||
    die "HIT-L2: only $((l2_after - l2_before)) L2 hits for $l2_requests requests: the L1 kept answering"
stop "$L2_PID"
stop "$L2W_PID"
stop "$REDIS_PID"

# STREAM: time to first SSE byte, DIRECT and PROXY alternating; every body is unique, so each
# PROXY request is a cacheable miss (recorded and stored), and its replay right after a HIT.
check_stream
say "STREAM: $STREAM_REQUESTS streamed requests, alternating DIRECT/PROXY (each PROXY one then replayed as a HIT), ~0.1 s each, each after the same 20 ms pause"
before="$(upstream_count)"
sent="$(timeout $((STREAM_REQUESTS + 60)) python3 "$B/stream_ttfb.py" "$UPSTREAM_PORT" "$PROXY_PORT" \
    "$STREAM_REQUESTS" "$WORK/stream-direct.b" "$WORK/stream")" || die "stream TTFB client failed (see above)"
after="$(upstream_count)"
[[ $((after - before)) -eq "$sent" ]] ||
    die "upstream served $((after - before)) of $sent streamed misses: some did not reach it, or a HIT did"

# Start-up: spawn to first answered GET /health, and idle RSS, over fresh processes.
say "start-up: $STARTS fresh proxy processes"
timeout $((STARTS * 15 + 30)) "${PROXY_ENV[@]}" python3 "$B/startup.py" "$PROXY_BIN" \
    "$STARTS" >"$WORK/startup" || die "start-up timing failed (see above)"

# nginx complaining (e.g. a full cache zone) would make its figures suspect.
if grep -Eq '\[(error|crit|alert|emerg)\]' "$WORK/nginx/error.log"; then
    say "warning: nginx logged $(grep -Ec '\[(error|crit|alert|emerg)\]' "$WORK/nginx/error.log") errors;" \
        "the first: $(grep -Em1 '\[(error|crit|alert|emerg)\]' "$WORK/nginx/error.log")"
fi

python3 "$B/report.py" "$WORK" "$SECONDS_PER_RUN" "$ROUNDS" "$MISS_CACHE_MB"
