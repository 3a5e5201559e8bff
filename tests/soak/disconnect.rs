//! Phase `disconnect`: streamed misses whose client leaves after the first chunk; the proxy
//! must end every upstream call (`in_flight` back to 0), close what it opened and keep its
//! memory: RSS is judged from after the first [`WARM_UP_STREAMS`] to the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bounds::{MAX_FD_GROWTH, fds_within, rss_within};
use crate::{
    Settings, chat_body, field, headers, keep_example, pool_ip, reference, show, snippet, stats,
    upstream_count,
};

const STREAMS: u64 = 1000;
const TASKS: u64 = 16;
const TIME_LIMIT: Duration = Duration::from_secs(120);
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);
/// Streams that warm the proxy up (allocator arenas, pools) before RSS is judged.
const WARM_UP_STREAMS: u64 = 100;
/// From after warm-up to the end, RSS may grow by this fraction plus [`RSS_SLACK_KB`]: on the
/// development machine it went 10.7 -> 11.8 MB (limit 14.3), so keeping a few kilobytes of
/// each of the 900 streams would break it.
const MAX_RSS_GROWTH: f64 = 0.15;
const RSS_SLACK_KB: u64 = 2048;
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
    let examples = Arc::new(Mutex::new(Vec::new()));
    let (ok1, bad1) = drop_streams(s, 0..WARM_UP_STREAMS, deadline, expected, &examples).await?;
    let (_, warm_settled, _) = settle(s, before.1).await?;
    let warm = (s.proc.rss_kb(), s.proc.fds());
    let (ok2, bad2) =
        drop_streams(s, WARM_UP_STREAMS..STREAMS, deadline, expected, &examples).await?;
    let (ok, bad) = (ok1 + ok2, bad1 + bad2);
    println!(
        "{} streams started in {:.1} s: first chunk ok {ok}, bad {bad}",
        ok + bad,
        started.elapsed().as_secs_f64()
    );

    let (last, settled, took) = settle(s, before.1).await?;
    let in_flight = field(&last, &["cache", "in_flight"]);
    let in_flight_clients = field(&last, &["cache", "in_flight_clients"]);
    let after = (s.proc.rss_kb(), s.proc.fds());
    // An abandoned stream must be cancelled, not read to its end and stored.
    let stored = field(&last, &["cache", "stores"]).saturating_sub(stores_before);
    println!(
        "after {took:.1} s: in_flight {in_flight}, in_flight_clients {in_flight_clients}, \
         streams stored {stored}, upstream served {} requests",
        upstream_count(s).await? - count_before
    );
    println!("\n| point | proxy RSS (kB) | proxy open fds |\n|---|---:|---:|");
    println!("| before | {} | {} |", show(before.0), show(before.1));
    println!(
        "| after {WARM_UP_STREAMS} streams (warm) | {} | {} |",
        show(warm.0),
        show(warm.1)
    );
    println!(
        "| after {STREAMS} streams | {} | {} |",
        show(after.0),
        show(after.1)
    );

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
    if !warm_settled {
        failures.push(format!(
            "still streams in flight {} s after the first {WARM_UP_STREAMS}",
            SETTLE_DEADLINE.as_secs()
        ));
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
    failures.extend(fds_within(&s.proc, "disconnect", before.1, after.1).err());
    let what = "disconnect, after warm-up to the end";
    failures.extend(rss_within(&s.proc, what, warm.0, after.0, MAX_RSS_GROWTH, RSS_SLACK_KB).err());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Streams `range` (each its own body and client IP), [`TASKS`] at a time, each dropped after
/// its first chunk; returns how many started well and how many did not.
async fn drop_streams(
    s: &'static Settings,
    range: std::ops::Range<u64>,
    deadline: Instant,
    expected: &'static [u8],
    examples: &Arc<Mutex<Vec<String>>>,
) -> Result<(u64, u64), String> {
    let next = Arc::new(AtomicU64::new(range.start));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (next, ok, bad, examples) =
                (next.clone(), ok.clone(), bad.clone(), examples.clone());
            let end = range.end;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end || Instant::now() >= deadline {
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
    Ok((ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed)))
}

/// Polls until no upstream call or client is left in flight and the fds are back near
/// `fds_before`, for at most [`SETTLE_DEADLINE`]; returns the last `/stats`, whether it
/// settled, and the seconds it took.
async fn settle(
    s: &Settings,
    fds_before: Option<usize>,
) -> Result<(serde_json::Value, bool, f64), String> {
    let settling = Instant::now();
    loop {
        let last = stats(s).await?;
        let idle = field(&last, &["cache", "in_flight"]) == 0
            && field(&last, &["cache", "in_flight_clients"]) == 0;
        let fds_back = match (fds_before, s.proc.fds()) {
            (Some(b), Some(a)) => a <= b + MAX_FD_GROWTH,
            _ => true,
        };
        let took = settling.elapsed();
        if (idle && fds_back) || took >= SETTLE_DEADLINE {
            return Ok((last, idle && fds_back, took.as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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
