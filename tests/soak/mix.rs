//! Phase `mix`: CLIENTS tasks for DURATION_SECS sending HIT, MISS, STREAM, REFRESH, BYPASS and ABUSIVE
//! requests from many client IPs; every response checked, RSS and fds sampled every 5 s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::HeaderValue;

mod tally;

use tally::Tally;

use crate::bounds::{MAX_FD_GROWTH, fds_within, rss_within};
use crate::{
    STREAM_DONE, Settings, XorShift, chat_body, field, headers, keep_example, pool_ip, reference,
    show, snippet, stats, upstream_count,
};

const HIT_BODIES: u64 = 20;
/// Normal clients come from this many addresses, each far below RATE_LIMIT.
const IP_POOL: u64 = 50_000;
/// The one client expected to run into RATE_LIMIT.
const ABUSIVE_IP: &str = "192.0.2.66";
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const WARM_UP: Duration = Duration::from_secs(10);
/// RSS may grow at most this much from the first sample after warm-up to the end.
const MAX_RSS_GROWTH: f64 = 0.5;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Hit,
    Miss,
    Stream,
    /// A HIT's request with `Cache-Control: no-cache`: forwarded, and the answer stored again.
    Refresh,
    Bypass,
    Abusive,
}

const KINDS: [Kind; 6] = [
    Kind::Hit,
    Kind::Miss,
    Kind::Stream,
    Kind::Refresh,
    Kind::Bypass,
    Kind::Abusive,
];

impl Kind {
    /// 35% HIT, 20% MISS, 15% STREAM, 10% REFRESH, 10% BYPASS, 10% ABUSIVE.
    fn pick(r: u64) -> Self {
        match r % 100 {
            0..35 => Self::Hit,
            35..55 => Self::Miss,
            55..70 => Self::Stream,
            70..80 => Self::Refresh,
            80..90 => Self::Bypass,
            _ => Self::Abusive,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stream => "STREAM",
            Self::Refresh => "REFRESH",
            Self::Bypass => "BYPASS",
            Self::Abusive => "ABUSIVE",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The `X-Cache` values a correct proxy may answer with.
    fn allowed_cache(self) -> &'static [&'static str] {
        match self {
            Self::Hit | Self::Abusive => &["HIT", "MISS", "COALESCED"],
            Self::Miss | Self::Stream | Self::Refresh => &["MISS"],
            Self::Bypass => &["BYPASS"],
        }
    }
}

struct Shared {
    s: &'static Settings,
    json: Bytes,
    stream: Bytes,
    examples: Mutex<Vec<String>>,
}

pub async fn run(s: &'static Settings) -> Result<(), String> {
    let shared = Arc::new(Shared {
        s,
        json: reference(
            s,
            "/v1/chat/completions",
            chat_body("soak reference", false),
        )
        .await?,
        stream: reference(s, "/v1/chat/completions", chat_body("soak ref", true)).await?,
        examples: Mutex::new(Vec::new()),
    });
    let files = reference(s, "/v1/files", r#"{"purpose":"soak"}"#.to_owned()).await?;
    if files != shared.json || !shared.stream.ends_with(STREAM_DONE) {
        return Err("the bench upstream's reference answers are not what this soak expects".into());
    }
    let stats_before = stats(s).await?;
    let count_before = upstream_count(s).await?;
    println!(
        "## mix: {} clients for {} s, proxy {} (pid {})\n",
        s.clients,
        s.duration.as_secs(),
        s.proxy,
        show(s.proc.0)
    );

    let started = Instant::now();
    let deadline = started + s.duration;
    let mut samples = vec![(0, s.proc.rss_kb(), s.proc.fds())];
    let tasks: Vec<_> = (0..s.clients)
        .map(|task| tokio::spawn(client_loop(shared.clone(), task as u64, deadline)))
        .collect();
    samples.extend(sample(s, started, deadline).await);
    let mut tallies = Vec::with_capacity(tasks.len());
    for task in tasks {
        tallies.push(
            task.await
                .map_err(|e| format!("a client task failed: {e}"))?,
        );
    }
    let end = (started.elapsed().as_secs(), s.proc.rss_kb(), s.proc.fds());
    if samples.last().is_some_and(|(t, _, _)| *t == end.0) {
        samples.pop();
    }
    samples.push(end);
    let elapsed = started.elapsed().as_secs_f64();

    let mut per_kind = [Tally::default(); KINDS.len()];
    for t in &tallies {
        for (sum, one) in per_kind.iter_mut().zip(t) {
            sum.add(one);
        }
    }
    let mut total = Tally::default();
    println!(
        "| kind | requests | ok | bad | 5xx | 429 | X-Cache HIT | MISS | COALESCED | BYPASS | none/other |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for kind in KINDS {
        let t = &per_kind[kind.index()];
        total.add(t);
        println!("{}", t.row(kind.name()));
    }
    println!("{}", total.row("**total**"));
    println!(
        "\n{} requests in {elapsed:.1} s: {:.0} req/s",
        total.requests,
        total.requests as f64 / elapsed
    );

    println!("\n| t (s) | proxy RSS (kB) | proxy open fds |\n|---:|---:|---:|");
    for (t, rss, fds) in &samples {
        println!("| {t} | {} | {} |", show(*rss), show(*fds));
    }
    // From the first sample after warm-up to the end: the cache is full by then, so growth
    // means a leak, not a fill.
    let warm = samples
        .iter()
        .find(|(t, rss, _)| *t >= WARM_UP.as_secs() && rss.is_some());
    let mut failures = Vec::new();
    match (warm, samples.last()) {
        (Some(&(t0, r0, f0)), Some(&(t1, r1, f1))) => {
            println!(
                "\nafter warm-up (t={t0} s) -> end (t={t1} s): RSS {} -> {} kB (limit +{:.0}%), \
                 fds {} -> {} (limit +{MAX_FD_GROWTH})",
                show(r0),
                show(r1),
                MAX_RSS_GROWTH * 100.0,
                show(f0),
                show(f1)
            );
            let what = "mix, after warm-up to end";
            failures.extend(rss_within(&s.proc, what, r0, r1, MAX_RSS_GROWTH, 0).err());
            failures.extend(fds_within(&s.proc, what, f0, f1).err());
        }
        _ if s.proc.watched() => failures.push(format!(
            "no RSS sample after the {} s warm-up (SOAK_SECONDS too short?)",
            WARM_UP.as_secs()
        )),
        _ => println!("\nRSS: no sample after the {} s warm-up", WARM_UP.as_secs()),
    }

    let after = stats(s).await?;
    let count_after = upstream_count(s).await?;
    let c = |k: &str| field(&after, &["cache", k]);
    println!(
        "\n/stats at the end: hits={} misses={} coalesced={} bypasses={} rate_limited_total={} \
         (upstream_errors_total={} item_count={} size_bytes={} evictions={} stores={} \
         rate_limit_tracked_clients={})",
        c("hits"),
        c("misses"),
        c("coalesced"),
        c("bypasses"),
        field(&after, &["rate_limited_total"]),
        field(&after, &["upstream_errors_total"]),
        c("item_count"),
        c("size_bytes"),
        c("evictions"),
        c("stores"),
        field(&after, &["rate_limit_tracked_clients"]),
    );
    let delta = |k: &str| c(k).saturating_sub(field(&stats_before, &["cache", k]));
    println!(
        "during mix: upstream served {} requests; proxy counted misses + bypasses = {}",
        count_after.saturating_sub(count_before),
        delta("misses") + delta("bypasses")
    );

    let examples = shared.examples.lock().expect("examples lock");
    if !examples.is_empty() {
        println!("\nbad responses (first {}):", examples.len());
        for e in examples.iter() {
            println!("- {e}");
        }
    }
    if total.bad > 0 {
        failures.push(format!("{} bad responses", total.bad));
    }
    if total.server_errors > 0 {
        failures.push(format!("{} 5xx responses", total.server_errors));
    }
    if per_kind[Kind::Abusive.index()].limited == 0 {
        println!(
            "note: the abusive client was never limited (too few requests to exceed RATE_LIMIT?)"
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// RSS and fds every [`SAMPLE_EVERY`] until `deadline`.
async fn sample(
    s: &Settings,
    started: Instant,
    deadline: Instant,
) -> Vec<(u64, Option<u64>, Option<usize>)> {
    let mut out = Vec::new();
    let mut at = started + SAMPLE_EVERY;
    while at <= deadline {
        tokio::time::sleep_until(at.into()).await;
        out.push((
            started.elapsed().as_secs_f64().round() as u64,
            s.proc.rss_kb(),
            s.proc.fds(),
        ));
        at += SAMPLE_EVERY;
    }
    out
}

async fn client_loop(shared: Arc<Shared>, task: u64, deadline: Instant) -> [Tally; KINDS.len()] {
    let mut rng = XorShift::new(shared.s.nonce ^ task);
    let mut tallies = [Tally::default(); KINDS.len()];
    let mut seq = 0u64;
    while Instant::now() < deadline {
        seq += 1;
        let kind = Kind::pick(rng.next_u64());
        let t = &mut tallies[kind.index()];
        t.requests += 1;
        let unique = format!("soak {} {task} {seq}", shared.s.nonce);
        match one(&shared, kind, &mut rng, &unique, t).await {
            Ok(()) => t.ok += 1,
            Err(why) => {
                t.bad += 1;
                keep_example(&shared.examples, format!("{}: {why}", kind.name()));
            }
        }
    }
    tallies
}

/// Sends one request of `kind` and checks its answer.
async fn one(
    shared: &Shared,
    kind: Kind,
    rng: &mut XorShift,
    unique: &str,
    t: &mut Tally,
) -> Result<(), String> {
    let s = shared.s;
    let xff = if kind == Kind::Abusive {
        HeaderValue::from_static(ABUSIVE_IP)
    } else {
        pool_ip((rng.next_u64() % IP_POOL) as u32 + 1)
    };
    let (path, body) = match kind {
        Kind::Hit | Kind::Refresh | Kind::Abusive => (
            "/v1/chat/completions",
            chat_body(&format!("soak hit {}", rng.next_u64() % HIT_BODIES), false),
        ),
        Kind::Miss => ("/v1/chat/completions", chat_body(unique, false)),
        Kind::Stream => ("/v1/chat/completions", chat_body(unique, true)),
        Kind::Bypass => ("/v1/files", format!(r#"{{"purpose":"{unique}"}}"#)),
    };
    let mut req = s
        .http
        .post(format!("{}{path}", s.proxy))
        .headers(headers(xff))
        .body(body);
    if kind == Kind::Stream {
        req = req.header("accept", "text/event-stream");
    }
    if kind == Kind::Refresh {
        req = req.header("cache-control", "no-cache");
    }
    let res = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = res.status().as_u16();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let cache = header("x-cache");
    let content_type = header("content-type");
    let retry_after = header("retry-after");
    match cache.as_str() {
        "HIT" => t.hit += 1,
        "MISS" => t.miss += 1,
        "COALESCED" => t.coalesced += 1,
        "BYPASS" => t.bypass += 1,
        _ => t.other += 1,
    }
    let body = res
        .bytes()
        .await
        .map_err(|e| format!("status {status}, x-cache {cache:?}: body failed: {e}"))?;
    let what = || {
        format!(
            "status {status}, x-cache {cache:?}, content-type {content_type:?}, {} B: {}",
            body.len(),
            snippet(&body)
        )
    };
    if status >= 500 {
        t.server_errors += 1;
        return Err(what());
    }
    if status == 429 && kind == Kind::Abusive {
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| format!("429 body not JSON: {}", what()))?;
        if json["error"]["code"] != "rate_limit_exceeded" || retry_after.is_empty() {
            return Err(format!("429 without code or Retry-After: {}", what()));
        }
        t.limited += 1;
        return Ok(());
    }
    if status != 200 {
        return Err(what());
    }
    if !kind.allowed_cache().contains(&cache.as_str()) {
        return Err(format!("unexpected x-cache: {}", what()));
    }
    let expected = if kind == Kind::Stream {
        if !content_type.starts_with("text/event-stream") {
            return Err(format!("not an event stream: {}", what()));
        }
        if !body.ends_with(STREAM_DONE) {
            return Err(format!("stream does not end with [DONE]: {}", what()));
        }
        &shared.stream
    } else {
        &shared.json
    };
    if body != expected {
        return Err(format!(
            "body differs from the upstream's ({} B expected): {}",
            expected.len(),
            what()
        ));
    }
    Ok(())
}
