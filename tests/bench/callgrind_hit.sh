#!/usr/bin/env bash
# Instructions per cache HIT, counted by callgrind over a fixed number of requests: stable on
# a shared machine where times are not. Builds an optimised binary with symbols (no LTO, for
# build speed) in target/callgrind, runs it under valgrind behind the bench upstream, warms
# the cache, resets the counters, sends HIT_REQUESTS identical requests and prints the
# instructions per request plus the top inclusive costs of our own functions.
# CALLGRIND_MODE=forward counts a forwarded request (Cache-Control: no-cache: upstream call and
# store) instead of a HIT; CALLGRIND_MODE=miss counts a MISS of a body never seen before (upstream
# call, canonical key, store and, with the 1 MB cache it then runs with, eviction), as in the bench's
# MISS-unique scenario; CALLGRIND_MODE=ceiling counts the same requests answered by the bare
# actix-web handler of `make bench` (CEILING), the floor a HIT is compared with;
# CALLGRIND_MODE=stack counts the same no-cache requests through the bench's bare actix-web + awc
# forwarder (STACK), the floor a forward or a miss is compared with; CALLGRIND_MODE=stack-cache
# counts the same HITs answered by that forwarder with its cache (STACK-CACHE: key, lookup,
# stored bytes out), the least a HIT costs on this stack; CALLGRIND_MODE=stack-cache-miss counts
# the MISS requests through that forwarder with a 1 MB cache (key, lookup, upstream call, store
# and eviction), the least a MISS costs on this stack; CALLGRIND_MODE=stack-cache-forward counts
# the no-cache requests through that forwarder with its cache (key, upstream call, store), the
# least a FORWARD costs on this stack. CALLGRIND_MODE=stack-cache-head and stack-cache-head-forward
# count the HITs and the no-cache requests of stack-cache and stack-cache-forward with the
# proxy's own head added (STACK-CACHE-HEAD: copied from a HIT and a forward of the proxy, run
# natively first), the least a HIT and a FORWARD cost on this stack with the head the proxy must
# send.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${HIT_REQUESTS:-2000}
MODE=${CALLGRIND_MODE:-hit}
case "$MODE" in
  hit) extra=() ;;
  forward) extra=(no-cache) ;;
  miss) extra=(unique) ;;
  ceiling) extra=() ;;
  stack) extra=(no-cache) ;;
  stack-cache) extra=() ;;
  stack-cache-miss) extra=(unique) ;;
  stack-cache-forward) extra=(no-cache) ;;
  stack-cache-head) extra=() ;;
  stack-cache-head-forward) extra=(no-cache) ;;
  *) echo "CALLGRIND_MODE must be hit, forward, miss, ceiling, stack, stack-cache, stack-cache-miss, stack-cache-forward, stack-cache-head or stack-cache-head-forward, got '$MODE'" >&2; exit 2 ;;
esac
command -v valgrind >/dev/null || { echo "valgrind not found: apt-get install valgrind" >&2; exit 1; }
# CALLGRIND_BUILD=shipped counts the binaries as `make bench` runs them instead: the proxy as
# `make release` builds it (profile-guided), the bench's targets as release builds (LTO);
# CALLGRIND_BUILD=plain the same with the proxy as a plain release build. Both are stripped, so
# only the totals are printed.
case "${CALLGRIND_BUILD:-symbols}" in
  symbols)
    export CARGO_TARGET_DIR=target/callgrind
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
      CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=1 \
      cargo build --release --bin openai-cache-proxy --example bench-upstream --example bench-forwarder
    bin=$CARGO_TARGET_DIR/release proxy_bin=$CARGO_TARGET_DIR/release/openai-cache-proxy ;;
  shipped | plain)
    unset CARGO_TARGET_DIR
    if [ "$CALLGRIND_BUILD" = shipped ]; then
      proxy_bin=$(bash .ci/release | tail -n 1)
    else
      cargo build --release --bin openai-cache-proxy
      proxy_bin=target/release/openai-cache-proxy
    fi
    cargo build --release --example bench-upstream --example bench-forwarder
    bin=target/release ;;
  *) echo "CALLGRIND_BUILD must be symbols, shipped or plain, got '$CALLGRIND_BUILD'" >&2; exit 2 ;;
esac
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
out=$(mktemp -d)
up=$(free_port)
PORT=$up "$bin/examples/bench-upstream" >/dev/null 2>&1 & up_pid=$!
# KEEP_CALLGRIND=DIR keeps the two profiles there, for callgrind_annotate. CALLGRIND_SIM=1 adds
# callgrind's cache and branch simulation and prints every event per request (L1 and last-level
# misses, mispredicted branches): what costs time beyond the instructions.
head_pid=""
trap 'kill $up_pid $head_pid 2>/dev/null || true; [ -z "${KEEP_CALLGRIND:-}" ] || cp "$out"/cg.* "$KEEP_CALLGRIND"/; rm -rf "$out"' EXIT

# STACK-CACHE-HEAD's heads: a proxy HIT's and a proxy forward's, all but what the forwarder sets
# itself (as `run.sh` makes them).
if [[ "$MODE" == stack-cache-head* ]]; then
  source tests/bench/head_lines.sh
  px=$(free_port)
  env -i PORT="$px" HOST=127.0.0.1 OPENAI_API_URL="http://127.0.0.1:$up" RATE_LIMIT=0 RUST_LOG=warn \
    CACHE_TTL=1h "$proxy_bin" >"$out/head-proxy.log" 2>&1 & head_pid=$!
  for _ in $(seq 1 150); do curl -s -o /dev/null "http://127.0.0.1:$px/health" && break; sleep 0.1; done
  python3 tests/bench/hits.py "$px" 2 >/dev/null
  head_of() { # extra curl arguments...: the head of one more request, less what the forwarder sets
    curl -s --fail -o /dev/null -D - "$@" -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-bench' \
      --data '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"head"}]}' \
      "http://127.0.0.1:$px/v1/chat/completions" | head_lines x-cache
  }
  head_of >/dev/null
  head_of >"$out/hit-head"
  head_of -H 'Cache-Control: no-cache' >"$out/miss-head"
  kill "$head_pid"; wait "$head_pid" || true
  head_pid=""
  grep -qi '^age:' "$out/hit-head" || { echo "no proxy HIT head: $(cat "$out/hit-head")" >&2; exit 1; }
fi

# One run under callgrind: start, warm with 20 requests, send $1 more, stop with SIGTERM (a
# clean exit writes the profile). The difference of two runs is the cost of the extra hits.
run() {
  local px; px=$(free_port)
  local target=$proxy_bin
  [ "$MODE" = ceiling ] && target=$bin/examples/bench-upstream
  local cache_mb=()
  case "$MODE" in
    stack) target=$bin/examples/bench-forwarder ;;
    stack-cache | stack-cache-forward) target=$bin/examples/bench-forwarder cache_mb=(CACHE_MB=64) ;;
    stack-cache-miss) target=$bin/examples/bench-forwarder cache_mb=(CACHE_MB=1) ;;
    stack-cache-head*) target=$bin/examples/bench-forwarder
      cache_mb=(CACHE_MB=64 HIT_HEAD_FROM="$out/hit-head" MISS_HEAD_FROM="$out/miss-head") ;;
  esac
  local size=100
  [ "$MODE" = miss ] && size=1
  env -i PORT="$px" MAX_CACHE_SIZE="$size" HOST=127.0.0.1 OPENAI_API_URL="http://127.0.0.1:$up" UPSTREAM="http://127.0.0.1:$up" RATE_LIMIT=0 RUST_LOG=warn \
    CACHE_TTL=1h "${cache_mb[@]}" valgrind --tool=callgrind "${sim[@]}" --callgrind-out-file="$out/cg.$1" "$target" \
    >"$out/proxy.$1.log" 2>&1 &
  local vg=$!
  for _ in $(seq 1 150); do curl -s -o /dev/null "http://127.0.0.1:$px/health" && break; sleep 0.2; done
  python3 tests/bench/hits.py "$px" 20 >/dev/null
  [ "$1" -gt 0 ] && python3 tests/bench/hits.py "$px" "$1" "${extra[@]}" >&2
  kill -TERM "$vg"; wait "$vg" || true
  callgrind_annotate "$out/cg.$1" | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}'
}
sim=()
[ "${CALLGRIND_SIM:-0}" = 1 ] && sim=(--cache-sim=yes --branch-sim=yes)
base=$(run 0)
with=$(run "$N")
echo "instructions per ${MODE^^}: $(( (with - base) / N )) (callgrind, $N requests, difference of two runs)"
if [ "${#sim[@]}" -gt 0 ]; then
  python3 - "$out/cg.0" "$out/cg.$N" "$N" <<'PY'
import sys
def totals(path):
    events = None
    for line in open(path):
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith(("summary:", "totals:")):
            return events, [int(x) for x in line.split()[1:]]
(events, base), (_, with_n) = totals(sys.argv[1]), totals(sys.argv[2])
n = int(sys.argv[3])
print("per request (Ir instructions, Dr/Dw data reads/writes, I1mr/D1mr/D1mw L1 misses, ILmr/DLmr/DLmw"
      " last-level misses, Bc/Bi branches, Bcm/Bim mispredicted): "
      + ", ".join(f"{e} {(b - a) / n:,.1f}" for e, a, b in zip(events, base, with_n)))
PY
fi
[[ "$MODE" == ceiling || "$MODE" == stack* || "${CALLGRIND_BUILD:-symbols}" != symbols ]] && exit 0
callgrind_annotate --inclusive=yes "$out/cg.$N" | grep -E 'openai_cache_proxy::' | head -15 \
  | sed -E 's|/root/.cargo/registry/src/[^/]+/||; s| \[.*||' | cut -c1-150
