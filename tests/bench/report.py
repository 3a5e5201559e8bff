"""The Markdown table and the ratio summary of run.sh, from the files it left in its work dir.

Usage: report.py WORK_DIR SECONDS ROUNDS MISS_CACHE_MB
Reads WORK_DIR/results (`scenario target round req/s p50_ms requests` per wrk run),
WORK_DIR/upstream (`scenario target round upstream_requests wrk_requests` per cache run),
WORK_DIR/stream (`target ttfb_ms head_ms`), WORK_DIR/miss-rss (`idle|during|round|after kB`),
WORK_DIR/startup (`ms kB` per start), WORK_DIR/l2 (`requests l2_hits` of HIT-L2) and, if present,
WORK_DIR/miss-stats.json (the MISS proxy's GET /stats), WORK_DIR/idle (`scenario target round
idle_sleeps requests` per one-connection run) and WORK_DIR/idle-setting (how the CPUs idled).
Medians are over rounds; spread is (max - min) / median. A ratio between two targets is the
median of its per-round ratios: within a round the two ran seconds apart, on the same machine
state, so each round's ratio cancels most of the drift that moves absolute numbers between
rounds (the ratio of the two medians is printed beside it). The summary gives each
per-round target figure an interval for its median (`median_interval`) and says whether the
target lies outside it.
"""

import json
import math
import statistics
import sys

SCENARIOS = (
    ("HIT", "64 conns, 1.4 KB answer from cache",
     ("CEILING", "CEILING-HEAD", "STACK-CACHE", "STACK-CACHE-HEAD", "NGINX", "PROXY", "PROXY-PLAIN",
      "PROXY-INFO")),
    ("HIT-large", "64 conns, 32 KB answer from cache", ("CEILING", "NGINX", "PROXY")),
    ("FORWARD", "64 conns, Cache-Control: no-cache",
     ("DIRECT", "NGINX", "STACK", "STACK-CACHE", "STACK-CACHE-HEAD", "PROXY", "PROXY-PLAIN")),
    ("FORWARD-1c", "1 conn, Cache-Control: no-cache",
     ("DIRECT", "RELAY", "STACK", "STACK-CACHE", "NGINX", "PROXY")),
    ("MISS-unique", "64 conns, every body new", ("NGINX", "STACK", "STACK-CACHE", "PROXY-MISS")),
    ("HIT-L2", "64 conns, 1.4 KB answers from Redis, L1 too small to keep them", ("PROXY-L2",)),
)


def p90(xs):  # nearest rank
    return sorted(xs)[math.ceil(0.9 * len(xs)) - 1]


def mb(kb):
    return kb / 1024


def median_interval(xs, confidence=0.95):
    """A distribution-free interval for the median of what xs were drawn from: the order
    statistics x(k) and x(n-k+1), with k the largest whose coverage, 1 - 2 P(Binomial(n, 1/2) < k),
    is at least `confidence` (k = 1 when even the whole range falls short: 5 rounds give 93.75%).
    Returns (low, high, coverage)."""
    xs = sorted(xs)
    n = len(xs)

    def coverage(k):
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return xs[k - 1], xs[n - k], coverage(k)


def miss_cache_note(work):
    """The MISS proxy's own count of what it stores, from its GET /stats, if run.sh got it."""
    try:
        with open(f"{work}/miss-stats.json") as f:
            cache = json.load(f)["cache"]
        return (f"; its /stats: {cache['item_count']} entries, {mb(cache['size_bytes'] / 1024):.1f}"
                f" of {mb(cache['max_size_bytes'] / 1024):.0f} MB, {cache['evictions']} evictions")
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def idle_note(work):
    """Per FORWARD-1c target, the CPUs' idle sleeps per request (the median over rounds), if
    run.sh could count them: each is a CPU that stopped and had to be woken for the request."""
    per = {}
    try:
        for line in open(f"{work}/idle"):
            scenario, target, _, sleeps, requests = line.split()
            if scenario == "FORWARD-1c" and int(requests) > 0:
                per.setdefault(target, []).append(int(sleeps) / int(requests))
        setting = open(f"{work}/idle-setting").read().strip()
    except (OSError, ValueError):
        return ""
    if not per:
        return ""
    return ("FORWARD-1c CPU idle sleeps per request (entries of all CPUs into an idle state other"
            " than polling, each a CPU woken again; the median over rounds): "
            + ", ".join(f"{t} {statistics.median(v):.2f}" for t, v in per.items())
            + f". {setting}")


def main():
    work, seconds, rounds, miss_mb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    runs = {}
    by_round = {}
    for line in open(f"{work}/results"):
        scenario, target, rnd, rps, p50, _ = line.split()
        runs.setdefault((scenario, target), []).append((float(rps), float(p50)))
        by_round[scenario, target, int(rnd)] = (float(rps), float(p50))
    med = {}
    rows = []
    for scenario, what, targets in SCENARIOS:
        for target in targets:
            rps = [r for r, _ in runs[scenario, target]]
            m = statistics.median(rps)
            p50 = statistics.median(p for _, p in runs[scenario, target])
            med[scenario, target] = (m, p50)
            spread = (max(rps) - min(rps)) / m * 100
            rows.append((f"{scenario} ({what})", target, f"{m:.0f}", f"{spread:.1f}%", f"{p50:.3f}"))

    ttfb = {}
    for line in open(f"{work}/stream"):
        target, first, head = line.split()
        ttfb.setdefault(target, []).append((float(first), float(head)))
    stream = {}
    for target in ("DIRECT", "PROXY", "PROXY-HIT"):
        first = [f for f, _ in ttfb[target]]
        stream[target] = (statistics.median(first), p90(first))
        what = {"PROXY": "cacheable misses", "PROXY-HIT": "replays from the cache"}.get(target, "requests")
        rows.append((f"STREAM ({len(first)} {what}, p50 is time to first byte)", target,
                     "-", "-", f"{stream[target][0]:.3f}"))

    rss = {"idle": [], "during": [], "round": [], "after": []}
    for line in open(f"{work}/miss-rss"):
        kind, kb = line.split()
        rss[kind].append(int(kb))
    starts = [tuple(map(float, line.split())) for line in open(f"{work}/startup")]
    startup_ms = statistics.median(ms for ms, _ in starts)
    idle_mb = mb(statistics.median(kb for _, kb in starts))

    print(f"\nwrk -d{seconds}s --latency (64 conns: -t2 -c64; 1 conn: -t1 -c1), {rounds} interleaved"
          " rounds, 127.0.0.1; PROXY-MISS is a fresh proxy with"
          f" MAX_CACHE_SIZE={miss_mb}\n")
    print("| scenario | target | median req/s | spread | p50 ms |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")

    short = []
    miss_stored = 0
    for line in open(f"{work}/upstream"):
        scenario, target, rnd, reached, requests = line.split()
        if (scenario, target) == ("MISS-unique", "PROXY-MISS"):
            miss_stored += int(reached)
        if scenario.startswith(("FORWARD", "MISS")) and int(reached) < int(requests):
            short.append(f"{scenario} {target} round {rnd}: {reached} of {requests}")
    if short:
        print("\nWARNING: not every request reached the upstream (coalesced or served from cache),"
              " so these figures are not of forwarding alone: " + "; ".join(short))

    def ratio(scenario, a, b):
        """Median req/s of a in scenario over b's (b None: over the proxy's L1 HIT)."""
        base = med["HIT", "PROXY"] if b is None else med[scenario, b]
        return med[scenario, a][0] / base[0]

    def paired(scenario, a, b):
        """req/s of a over b's in each round, and the median of those."""
        per = [by_round[scenario, a, r][0] / by_round[scenario, b, r][0]
               for r in range(1, rounds + 1)]
        return statistics.median(per), per

    def paired_added(a):
        """FORWARD-1c p50 of a minus DIRECT's in each round (ms), and the median of those."""
        per = [by_round["FORWARD-1c", a, r][1] - by_round["FORWARD-1c", "DIRECT", r][1]
               for r in range(1, rounds + 1)]
        return statistics.median(per), per

    added_ttfb = stream["PROXY"][0] - stream["DIRECT"][0]
    added_ttfb_p90 = stream["PROXY"][1] - stream["DIRECT"][1]
    peak = mb(max(rss["during"] + rss["round"] + rss["after"]))
    print(f"\nSTREAM added TTFB (PROXY MISS - DIRECT): p50 {added_ttfb:.3f} ms, p90 {added_ttfb_p90:.3f} ms;"
          f" a HIT's first byte p50 {stream['PROXY-HIT'][0] - stream['DIRECT'][0]:+.3f} ms against DIRECT")
    if stream["PROXY"][0] > 50:
        print("WARNING: proxied TTFB is over half the ~100 ms stream: is the proxy buffering it?")
    print(f"MISS-unique PROXY-MISS VmRSS (MB = MiB): idle {mb(rss['idle'][0]):.1f},"
          f" peak while measured {peak:.1f} ({len(rss['during'])} samples), at the end of each round"
          f" {', '.join(f'{mb(kb):.1f}' for kb in rss['round'])}, 1 s after the last"
          f" {mb(rss['after'][0]):.1f}; {miss_stored} unique answers reached the upstream"
          f"{miss_cache_note(work)}")
    l2_requests, l2_hits = map(int, open(f"{work}/l2").read().split())
    # The proxy also counts the lookups of requests still in flight when wrk stops, which wrk
    # does not count as completed: the hits can outnumber the requests.
    print(f"HIT-L2: {l2_hits} L2 hits (Redis) counted by the proxy for {l2_requests} requests"
          f" wrk completed (lookups in flight when wrk stops count too), the upstream untouched;"
          f" L2 hit / L1 hit throughput {ratio('HIT-L2', 'PROXY-L2', None):.2f}")
    added = {t: med["FORWARD-1c", t][1] - med["FORWARD-1c", "DIRECT"][1]
             for t in ("RELAY", "STACK", "STACK-CACHE", "NGINX", "PROXY")}
    print("FORWARD-1c added p50 over DIRECT, ms: "
          + ", ".join(f"{t} {v:+.3f}" for t, v in added.items())
          + " (RELAY: socat copying bytes, no HTTP: the least a second hop adds here; STACK: a bare"
          " actix-web + awc forwarder, the least a proxy on this stack adds; STACK-CACHE: STACK"
          " with the least a cache adds, a SHA-256 key and moka's lookup and store)")
    sleeps = idle_note(work)
    if sleeps:
        print(sleeps)
    print("STACK, the bare actix-web + awc forwarder, against NGINX (what the stack alone reaches):"
          f" FORWARD {ratio('FORWARD', 'STACK', 'NGINX'):.2f},"
          f" MISS-unique {ratio('MISS-unique', 'STACK', 'NGINX'):.2f};"
          f" PROXY / STACK: FORWARD {ratio('FORWARD', 'PROXY', 'STACK'):.2f},"
          f" MISS-unique {ratio('MISS-unique', 'PROXY-MISS', 'STACK'):.2f},"
          f" FORWARD-1c added p50 over STACK {added['PROXY'] - added['STACK']:+.3f} ms")
    print("STACK-CACHE, STACK with the least a cache does, against NGINX (what a cache on this"
          f" stack reaches): FORWARD {ratio('FORWARD', 'STACK-CACHE', 'NGINX'):.2f},"
          f" MISS-unique {ratio('MISS-unique', 'STACK-CACHE', 'NGINX'):.2f};"
          f" PROXY / STACK-CACHE: FORWARD {ratio('FORWARD', 'PROXY', 'STACK-CACHE'):.2f},"
          f" MISS-unique {ratio('MISS-unique', 'PROXY-MISS', 'STACK-CACHE'):.2f},"
          f" FORWARD-1c added p50 over STACK-CACHE {added['PROXY'] - added['STACK-CACHE']:+.3f} ms")
    miss_vs_forward = {t: med["MISS-unique", m][0] / med["FORWARD", t][0]
                       for t, m in (("NGINX", "NGINX"), ("PROXY", "PROXY-MISS"))}
    print("MISS-unique / FORWARD throughput (what a new body costs over a forwarded one): "
          + ", ".join(f"{t} {v:.2f}" for t, v in miss_vs_forward.items()))
    print(f"Start-up to first 200 from GET /health, ms: {', '.join(f'{ms:.1f}' for ms, _ in starts)};"
          f" VmRSS 0.3 s later, MB: {', '.join(f'{mb(kb):.1f}' for _, kb in starts)}")


    def fig(name, value, fmt, op, target, rounds_of=None):
        def met(x):
            return x >= target if op == ">=" else x <= target

        def show(x):  # 0.7996 would print as 0.80, next to a ✗
            shown = f"{x:{fmt}}"
            return f"{x:{fmt[:-2]}4f}" if float(shown) == target and not met(x) else shown

        noise = ""
        if rounds_of is not None:
            # Whether the rounds' spread leaves the verdict in doubt: the median's interval
            # lying wholly on one side of the target, or across it.
            low, high, cover = median_interval(rounds_of)
            doubt = "clear" if met(low) == met(high) else "within noise"
            noise = f"; {cover:.1%} interval of the median {show(low)}..{show(high)}: {doubt}"
        return f"{name} {show(value)} ({'✓' if met(value) else '✗'} {op} {target:g}{noise})"

    pairs = {
        "HIT/CEILING": ("HIT", "PROXY", "CEILING"),
        "HIT/NGINX": ("HIT", "PROXY", "NGINX"),
        "HIT-large/NGINX": ("HIT-large", "PROXY", "NGINX"),
        "FORWARD/NGINX": ("FORWARD", "PROXY", "NGINX"),
        "MISS-unique/NGINX": ("MISS-unique", "PROXY-MISS", "NGINX"),
        "CEILING/NGINX (HIT)": ("HIT", "CEILING", "NGINX"),
        "CEILING-HEAD/CEILING (HIT)": ("HIT", "CEILING-HEAD", "CEILING"),
        "PROXY/CEILING-HEAD (HIT)": ("HIT", "PROXY", "CEILING-HEAD"),
        "STACK-CACHE/NGINX (HIT)": ("HIT", "STACK-CACHE", "NGINX"),
        "PROXY/STACK-CACHE (HIT)": ("HIT", "PROXY", "STACK-CACHE"),
        "STACK-CACHE-HEAD/NGINX (HIT)": ("HIT", "STACK-CACHE-HEAD", "NGINX"),
        "PROXY/STACK-CACHE-HEAD (HIT)": ("HIT", "PROXY", "STACK-CACHE-HEAD"),
        "STACK-CACHE-HEAD/NGINX (FORWARD)": ("FORWARD", "STACK-CACHE-HEAD", "NGINX"),
        "PROXY/STACK-CACHE-HEAD (FORWARD)": ("FORWARD", "PROXY", "STACK-CACHE-HEAD"),
        "PROXY/PROXY-PLAIN (HIT)": ("HIT", "PROXY", "PROXY-PLAIN"),
        "PROXY-PLAIN/NGINX (HIT)": ("HIT", "PROXY-PLAIN", "NGINX"),
        "PROXY-PLAIN/CEILING (HIT)": ("HIT", "PROXY-PLAIN", "CEILING"),
        "PROXY/PROXY-PLAIN (FORWARD)": ("FORWARD", "PROXY", "PROXY-PLAIN"),
        "PROXY-PLAIN/NGINX (FORWARD)": ("FORWARD", "PROXY-PLAIN", "NGINX"),
        "PROXY-INFO/PROXY (HIT)": ("HIT", "PROXY-INFO", "PROXY"),
        "PROXY-INFO/CEILING (HIT)": ("HIT", "PROXY-INFO", "CEILING"),
        "CEILING/NGINX (HIT-large)": ("HIT-large", "CEILING", "NGINX"),
        "PROXY/CEILING (HIT-large)": ("HIT-large", "PROXY", "CEILING"),
        "STACK/NGINX (MISS-unique)": ("MISS-unique", "STACK", "NGINX"),
        "PROXY/STACK (MISS-unique)": ("MISS-unique", "PROXY-MISS", "STACK"),
        "STACK-CACHE/NGINX (MISS-unique)": ("MISS-unique", "STACK-CACHE", "NGINX"),
        "PROXY/STACK-CACHE (MISS-unique)": ("MISS-unique", "PROXY-MISS", "STACK-CACHE"),
    }
    paired_of = {name: paired(*args) for name, args in pairs.items()}
    added_p50, added_rounds = paired_added("PROXY")
    print("\nRatios round by round (the summary takes their median; in brackets the ratio of"
          " the medians):")
    for name, (m, per) in paired_of.items():
        print(f"  {name}: {', '.join(f'{x:.2f}' for x in per)} -> {m:.2f}"
              f" [{ratio(*pairs[name]):.2f}]")
    for t in ("RELAY", "STACK", "STACK-CACHE", "NGINX", "PROXY"):
        m, per = paired_added(t)
        print(f"  FORWARD-1c {t} added p50 ms: {', '.join(f'{x:+.3f}' for x in per)} -> {m:+.3f}")
    print("\nCEILING-HEAD, the bare handler sending a proxy HIT's head too (X-Cache, Age, Cache-Status,"
          " X-Cache-Key, X-Cache-Timestamp, X-Request-Id, X-Proxy): CEILING-HEAD / CEILING"
          f" {paired_of['CEILING-HEAD/CEILING (HIT)'][0]:.2f} (what that head costs),"
          f" PROXY / CEILING-HEAD {paired_of['PROXY/CEILING-HEAD (HIT)'][0]:.2f} (what the proxy's"
          " code costs on a HIT)")
    print("STACK-CACHE on a HIT, the least a cache on this stack does (SHA-256 key, one moka lookup,"
          " the stored bytes with Content-Type and X-Cache): STACK-CACHE / NGINX"
          f" {paired_of['STACK-CACHE/NGINX (HIT)'][0]:.2f} (what a cache on this stack reaches),"
          f" PROXY / STACK-CACHE {paired_of['PROXY/STACK-CACHE (HIT)'][0]:.2f} (what the proxy's"
          " features cost a HIT: its head, request id, access log, ledger, alias index)")
    print("STACK-CACHE-HEAD, STACK-CACHE sending the proxy's head as fixed bytes (a HIT's, a"
          " forward's), the least a cache on this stack does with the head issues 2 and 4 require:"
          f" STACK-CACHE-HEAD / NGINX HIT {paired_of['STACK-CACHE-HEAD/NGINX (HIT)'][0]:.2f},"
          f" FORWARD {paired_of['STACK-CACHE-HEAD/NGINX (FORWARD)'][0]:.2f} (what such a cache"
          " reaches here, against the targets 1.6 and 1.2); PROXY / STACK-CACHE-HEAD HIT"
          f" {paired_of['PROXY/STACK-CACHE-HEAD (HIT)'][0]:.2f}, FORWARD"
          f" {paired_of['PROXY/STACK-CACHE-HEAD (FORWARD)'][0]:.2f} (what the proxy's code costs"
          " beyond sending that head)")
    print("PROXY-PLAIN, the same code as a plain release build (no profile-guided optimisation):"
          f" PROXY / PROXY-PLAIN HIT {paired_of['PROXY/PROXY-PLAIN (HIT)'][0]:.2f}, FORWARD"
          f" {paired_of['PROXY/PROXY-PLAIN (FORWARD)'][0]:.2f} (what the profile gives);"
          f" PROXY-PLAIN / NGINX HIT {paired_of['PROXY-PLAIN/NGINX (HIT)'][0]:.2f}, FORWARD"
          f" {paired_of['PROXY-PLAIN/NGINX (FORWARD)'][0]:.2f}; PROXY-PLAIN / CEILING HIT"
          f" {paired_of['PROXY-PLAIN/CEILING (HIT)'][0]:.2f}")
    print("PROXY-INFO, the proxy at its default RUST_LOG=info (an access log line per request, to a"
          f" pipe): PROXY-INFO / PROXY {paired_of['PROXY-INFO/PROXY (HIT)'][0]:.2f} (what the log"
          f" costs a HIT), PROXY-INFO / CEILING {paired_of['PROXY-INFO/CEILING (HIT)'][0]:.2f}")

    def per_round(name, target):  # a ratio that must reach target, from its rounds
        m, per = paired_of[name]
        return fig(name, m, ".2f", ">=", target, per)

    figures = [
        per_round("HIT/CEILING", 0.80),
        per_round("HIT/NGINX", 1.6),
        per_round("HIT-large/NGINX", 1.5),
        per_round("FORWARD/NGINX", 1.2),
        fig("FORWARD added p50 vs DIRECT (1 conn) ms", added_p50, "+.3f", "<=", 0.05,
            added_rounds),
        per_round("MISS-unique/NGINX", 2.0),
        fig("MISS RSS peak MB", peak, ".1f", "<=", miss_mb * 1.25 + 32),
        fig("idle RSS MB", idle_mb, ".1f", "<=", 16),
        fig("start-up ms", startup_ms, ".1f", "<=", 50),
        fig("STREAM added TTFB p50 ms", added_ttfb, "+.3f", "<=", 1),
    ]
    print("\nSummary: " + " · ".join(figures))


if __name__ == "__main__":
    main()
