//! Phase `disconnect`: streamed misses whose client leaves after the first chunk; the proxy
//! must end every upstream call (`in_flight` back to 0) and close what it opened.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{
    Settings, chat_body, field, headers, keep_example, pool_ip, reference, show, snippet, stats,
    upstream_count,
};

const STREAMS: u64 = 1000;
const TASKS: u64 = 16;
const TIME_LIMIT: Duration = Duration::from_secs(120);
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);
const MAX_FD_GROWTH: usize = 50;
/// Addresses of 10.0.0.0/8 not used by the other phases' pools.
const IP_BASE: u32 = 0x00E0_0000;

pub async fn run(s: &'static Settings) -> Result<(), String> {
    let expected: &'static [u8] = reference(s, "/v1/chat/completions", chat_body("soak d", true))
        .await?
        .to_vec()
        .leak();
    let before = (s.proc.rss_kb(), s.proc.fds());
    let count_before = upstream_count(s).await?;
    let stores_before = field(&stats(s).await?, &["cache", "stores"]);
    println!(
        "## disconnect: {STREAMS} streamed misses, {TASKS} at a time, each dropped after its \
         first chunk\n"
    );

    let started = Instant::now();
    let deadline = started + TIME_LIMIT;
    let next = Arc::new(AtomicU64::new(0));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let examples = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (next, ok, bad, examples) =
                (next.clone(), ok.clone(), bad.clone(), examples.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= STREAMS || Instant::now() >= deadline {
                        return;
                    }
                    match first_chunk_then_leave(s, i, expected).await {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(why) => {
                            keep_example(&examples, why);
                            bad.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| format!("a client task failed: {e}"))?;
    }
    let (ok, bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    println!(
        "{} streams started in {:.1} s: first chunk ok {ok}, bad {bad}",
        ok + bad,
        started.elapsed().as_secs_f64()
    );

    // Poll until no upstream call or client is left in flight and the fds are back.
    let settling = Instant::now();
    let mut last = stats(s).await?;
    let mut settled = false;
    while settling.elapsed() < SETTLE_DEADLINE {
        last = stats(s).await?;
        let idle = field(&last, &["cache", "in_flight"]) == 0
            && field(&last, &["cache", "in_flight_clients"]) == 0;
        let fds_back = match (before.1, s.proc.fds()) {
            (Some(b), Some(a)) => a <= b + MAX_FD_GROWTH,
            _ => true,
        };
        if idle && fds_back {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let in_flight = field(&last, &["cache", "in_flight"]);
    let in_flight_clients = field(&last, &["cache", "in_flight_clients"]);
    let after = (s.proc.rss_kb(), s.proc.fds());
    // An abandoned stream must be cancelled, not read to its end and stored.
    let stored = field(&last, &["cache", "stores"]).saturating_sub(stores_before);
    println!(
        "after {:.1} s: in_flight {in_flight}, in_flight_clients {in_flight_clients}, \
         streams stored {stored}, upstream served {} requests",
        settling.elapsed().as_secs_f64(),
        upstream_count(s).await? - count_before
    );
    println!("\n| point | proxy RSS (kB) | proxy open fds |\n|---|---:|---:|");
    println!("| before | {} | {} |", show(before.0), show(before.1));
    println!("| after | {} | {} |", show(after.0), show(after.1));

    let examples = examples.lock().expect("examples lock");
    if !examples.is_empty() {
        println!("\nbad responses (first {}):", examples.len());
        for e in examples.iter() {
            println!("- {e}");
        }
    }
    let mut failures = Vec::new();
    if ok + bad < STREAMS {
        failures.push(format!(
            "only {} of {STREAMS} streams within {} s",
            ok + bad,
            TIME_LIMIT.as_secs()
        ));
    }
    if bad > 0 {
        failures.push(format!("{bad} bad responses"));
    }
    if !settled && (in_flight != 0 || in_flight_clients != 0) {
        failures.push(format!(
            "in_flight {in_flight} / in_flight_clients {in_flight_clients} after {} s",
            SETTLE_DEADLINE.as_secs()
        ));
    }
    if stored > 0 {
        failures.push(format!("{stored} abandoned streams were stored"));
    }
    if let (Some(b), Some(a)) = (before.1, after.1)
        && a > b + MAX_FD_GROWTH
    {
        failures.push(format!(
            "open fds grew from {b} to {a} (limit +{MAX_FD_GROWTH})"
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Starts stream `i` (a unique body), checks the head and first chunk, then drops the response.
async fn first_chunk_then_leave(s: &Settings, i: u64, expected: &[u8]) -> Result<(), String> {
    let body = chat_body(&format!("soak disconnect {} {i}", s.nonce), true);
    let mut res = s
        .http
        .post(format!("{}/v1/chat/completions", s.proxy))
        .headers(headers(pool_ip(IP_BASE + i as u32)))
        .header("accept", "text/event-stream")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if status != 200 || !content_type.starts_with("text/event-stream") {
        let body = res.bytes().await.unwrap_or_default();
        return Err(format!(
            "status {status}, content-type {content_type:?}: {}",
            snippet(&body)
        ));
    }
    let chunk = res
        .chunk()
        .await
        .map_err(|e| format!("first chunk failed: {e}"))?
        .unwrap_or_default();
    if chunk.is_empty() || !expected.starts_with(&chunk) {
        return Err(format!(
            "first chunk is not the start of the stream: {}",
            snippet(&chunk)
        ));
    }
    drop(res);
    Ok(())
}
