//! Phase `ips`: a million cached GETs, each from its own client IP, then the rate limiter must
//! forget the idle clients (it prunes every 60 s) and RSS must come back near where it was.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bounds::rss_within;
use crate::{Settings, field, headers, keep_example, pool_ip, show, snippet, stats};

const REQUESTS: u64 = 1_000_000;
const TASKS: u64 = 64;
const TIME_LIMIT: Duration = Duration::from_secs(300);
const PRUNE_DEADLINE: Duration = Duration::from_secs(150);
const POLL_EVERY: Duration = Duration::from_secs(5);
/// Tracked clients must fall below this once the flood has stopped.
const TRACKED_AFTER_PRUNE: u64 = 1000;
/// Once pruned, RSS may be at most this much above its level before the flood (which adds
/// about 95% on the development machine; pruning has given nearly all of it back).
const MAX_RSS_AFTER_PRUNE: f64 = 0.25;

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    ok: AtomicU64,
    bad: AtomicU64,
    server_errors: AtomicU64,
}

pub async fn run(s: &'static Settings) -> Result<(), String> {
    let url: &'static str = format!("{}/v1/models", s.proxy).leak();
    let reference = s
        .http
        .get(format!("{}/v1/models", s.upstream))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("reference GET /v1/models: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("reference GET /v1/models: {e}"))?;
    let reference: &'static [u8] = reference.to_vec().leak();
    println!(
        "## ips: {REQUESTS} GET /v1/models, {TASKS} tasks, a distinct X-Forwarded-For each, \
         at most {} s\n",
        TIME_LIMIT.as_secs()
    );
    let before = (s.proc.rss_kb(), tracked(s).await?, s.proc.fds());

    let started = Instant::now();
    let deadline = started + TIME_LIMIT;
    let next = Arc::new(AtomicU64::new(0));
    let counts = Arc::new(Counts::default());
    let examples = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (next, counts, examples) = (next.clone(), counts.clone(), examples.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= REQUESTS || Instant::now() >= deadline {
                        return;
                    }
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                    // 10.0.0.1, 10.0.0.2, ...: every request its own client.
                    let xff = pool_ip(i as u32 + 1);
                    match get(s, url, xff, reference).await {
                        Ok(()) => counts.ok.fetch_add(1, Ordering::Relaxed),
                        Err((status, why)) => {
                            if status >= 500 {
                                counts.server_errors.fetch_add(1, Ordering::Relaxed);
                            }
                            keep_example(&examples, why);
                            counts.bad.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    let mut progress = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(30),
        Duration::from_secs(30),
    );
    let mut all = Box::pin(async {
        for t in tasks {
            t.await.map_err(|e| format!("a client task failed: {e}"))?;
        }
        Ok::<(), String>(())
    });
    loop {
        tokio::select! {
            done = &mut all => { done?; break; }
            _ = progress.tick() => println!(
                "  t={:.0} s: {} sent, RSS {} kB",
                started.elapsed().as_secs_f64(),
                counts.sent.load(Ordering::Relaxed),
                show(s.proc.rss_kb())
            ),
        }
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let sent = counts.sent.load(Ordering::Relaxed);
    let bad = counts.bad.load(Ordering::Relaxed);
    let server_errors = counts.server_errors.load(Ordering::Relaxed);
    println!(
        "\n{sent} requests in {flood_secs:.1} s ({:.0} req/s): ok {}, bad {bad}, 5xx {server_errors}",
        sent as f64 / flood_secs,
        counts.ok.load(Ordering::Relaxed)
    );
    let after = (s.proc.rss_kb(), tracked(s).await?, s.proc.fds());

    // Pruned means few clients tracked and RSS back near where it was before the flood
    // (the limiter's map is shrunk after each pruning pass); polled until both hold.
    let pruning = Instant::now();
    let mut pruned = None;
    let mut last = (s.proc.rss_kb(), after.1, s.proc.fds());
    while pruning.elapsed() < PRUNE_DEADLINE {
        tokio::time::sleep(POLL_EVERY).await;
        last = (s.proc.rss_kb(), tracked(s).await?, s.proc.fds());
        println!(
            "  +{:.0} s: rate_limit_tracked_clients {}, RSS {} kB",
            pruning.elapsed().as_secs_f64(),
            last.1,
            show(last.0)
        );
        let returned = rss_within(&s.proc, "", before.0, last.0, MAX_RSS_AFTER_PRUNE, 0);
        if last.1 < TRACKED_AFTER_PRUNE && returned.is_ok() {
            pruned = Some(pruning.elapsed().as_secs());
            break;
        }
    }

    println!(
        "\n| point | proxy RSS (kB) | rate_limit_tracked_clients | open fds |\n|---|---:|---:|---:|"
    );
    println!(
        "| before | {} | {} | {} |",
        show(before.0),
        before.1,
        show(before.2)
    );
    println!(
        "| right after {sent} requests | {} | {} | {} |",
        show(after.0),
        after.1,
        show(after.2)
    );
    let point = match pruned {
        Some(t) => format!("pruned (+{t} s)"),
        None => format!("not pruned after {} s", PRUNE_DEADLINE.as_secs()),
    };
    println!(
        "| {point} | {} | {} | {} |",
        show(last.0),
        last.1,
        show(last.2)
    );

    let examples = examples.lock().expect("examples lock");
    if !examples.is_empty() {
        println!("\nbad responses (first {}):", examples.len());
        for e in examples.iter() {
            println!("- {e}");
        }
    }
    let mut failures = Vec::new();
    if sent < REQUESTS {
        failures.push(format!(
            "only {sent} of {REQUESTS} distinct client IPs within the {} s time limit",
            TIME_LIMIT.as_secs()
        ));
    }
    if bad > 0 {
        failures.push(format!("{bad} bad responses ({server_errors} 5xx)"));
    }
    if last.1 >= TRACKED_AFTER_PRUNE {
        failures.push(format!(
            "rate_limit_tracked_clients still {} (limit < {TRACKED_AFTER_PRUNE}) {} s after the flood",
            last.1,
            PRUNE_DEADLINE.as_secs()
        ));
    }
    let what = "ips, before the flood to pruned";
    failures.extend(rss_within(&s.proc, what, before.0, last.0, MAX_RSS_AFTER_PRUNE, 0).err());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

async fn tracked(s: &Settings) -> Result<u64, String> {
    Ok(field(&stats(s).await?, &["rate_limit_tracked_clients"]))
}

/// One GET whose answer must be a 200 with the upstream's bytes (a cache HIT after the first).
async fn get(
    s: &Settings,
    url: &str,
    xff: reqwest::header::HeaderValue,
    reference: &[u8],
) -> Result<(), (u16, String)> {
    let res = s
        .http
        .get(url)
        .headers(headers(xff))
        .send()
        .await
        .map_err(|e| (0, format!("request failed: {e}")))?;
    let status = res.status().as_u16();
    let body = res
        .bytes()
        .await
        .map_err(|e| (status, format!("status {status}: body failed: {e}")))?;
    if status != 200 || body != reference {
        return Err((
            status,
            format!("status {status}, {} B: {}", body.len(), snippet(&body)),
        ));
    }
    Ok(())
}
