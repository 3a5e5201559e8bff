//! Soak load generator for `make soak` (tests/soak/run.sh): one phase per run, chosen by PHASE.
//!
//! Env: PHASE (`disconnect`, `mix` or `ips`), PROXY and UPSTREAM (base URLs), PROXY_PID (for
//! VmRSS and open fds from /proc), DURATION_SECS (mix, default 60), CLIENTS (mix, default 200).
//! Every response is checked; the process exits non-zero when the phase's check fails.

mod bounds;
mod disconnect;
mod ips;
mod mix;

use std::fmt::Display;
use std::process::ExitCode;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

/// Long enough for a loaded 2-core machine; a request taking longer counts as bad.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const AUTHORIZATION: &str = "Bearer sk-soak";
pub const XFF: &str = "x-forwarded-for";
/// The bench upstream answers `"stream":true` bodies with its event stream.
pub const STREAM_DONE: &[u8] = b"data: [DONE]\n\n";

pub struct Settings {
    pub proxy: String,
    pub upstream: String,
    pub duration: Duration,
    pub clients: usize,
    pub proc: Proc,
    pub http: reqwest::Client,
    /// Makes this run's bodies differ from any earlier run's.
    pub nonce: u64,
}

/// The proxy process, sampled through /proc; `None` figures when PROXY_PID is unset.
pub struct Proc(Option<u32>);

impl Proc {
    /// Whether a process is being watched: its figures must then be readable.
    pub fn watched(&self) -> bool {
        self.0.is_some()
    }

    pub fn rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn fds(&self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.0?))
                .ok()?
                .count(),
        )
    }
}

/// A figure or `n/a`.
pub fn show<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

/// Tiny deterministic PRNG (xorshift64), one per task.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        // Any non-zero state works; spread small seeds apart first (splitmix64 constant).
        Self((seed.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The `n`th address of 10.0.0.0/8 (`n` below 2^24), as an `X-Forwarded-For` value.
pub fn pool_ip(n: u32) -> HeaderValue {
    let [_, a, b, c] = n.to_be_bytes();
    HeaderValue::from_str(&format!("10.{a}.{b}.{c}")).expect("an IP is a valid header value")
}

/// A compact chat-completion request; `content` must need no JSON escaping.
pub fn chat_body(content: &str, stream: bool) -> String {
    let stream = if stream { r#","stream":true"# } else { "" };
    format!(
        r#"{{"model":"gpt-4o-mini"{stream},"messages":[{{"role":"user","content":"{content}"}}]}}"#
    )
}

pub fn headers(xff: HeaderValue) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_static(AUTHORIZATION));
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert(XFF, xff);
    h
}

/// One POST straight to the bench upstream: the bytes the proxy must reproduce.
pub async fn reference(s: &Settings, path: &str, body: String) -> Result<bytes::Bytes, String> {
    let url = format!("{}{path}", s.upstream);
    let res = s
        .http
        .post(&url)
        .headers(headers(pool_ip(1)))
        .body(body)
        .send()
        .await
        .map_err(|e| format!("reference POST {url}: {e}"))?;
    if res.status() != 200 {
        return Err(format!("reference POST {url}: status {}", res.status()));
    }
    res.bytes()
        .await
        .map_err(|e| format!("reference POST {url}: {e}"))
}

/// The proxy's `/stats` document.
pub async fn stats(s: &Settings) -> Result<serde_json::Value, String> {
    let url = format!("{}/stats", s.proxy);
    let res = s
        .http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if res.status() != 200 {
        return Err(format!("GET {url}: status {}", res.status()));
    }
    res.json().await.map_err(|e| format!("GET {url}: {e}"))
}

/// `stats[path...]` as a number, `0` when missing (and then visible as such in the output).
pub fn field(stats: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(stats, |v, k| &v[*k])
        .as_u64()
        .unwrap_or_default()
}

/// The bench upstream's request count.
pub async fn upstream_count(s: &Settings) -> Result<u64, String> {
    let url = format!("{}/count", s.upstream);
    let text = s
        .http
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("GET {url}: {e}"))?
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("GET {url}: not a number: {text:?}"))
}

/// Up to [`MAX_EXAMPLES`] descriptions of bad responses, for the report.
pub const MAX_EXAMPLES: usize = 20;

pub fn keep_example(examples: &std::sync::Mutex<Vec<String>>, example: String) {
    let mut v = examples.lock().expect("examples lock");
    if v.len() < MAX_EXAMPLES {
        v.push(example);
    }
}

/// The first bytes of a body, printable.
pub fn snippet(body: &[u8]) -> String {
    let end = body.len().min(160);
    String::from_utf8_lossy(&body[..end]).replace('\n', "\\n")
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| format!("{name} must be a number, got {v:?}")),
        _ => Ok(default),
    }
}

fn settings() -> Result<Settings, String> {
    let url = |name: &str| {
        std::env::var(name)
            .map(|v| v.trim_end_matches('/').to_owned())
            .map_err(|_| format!("{name} must be set (a base URL such as http://127.0.0.1:8080)"))
    };
    let pid = match std::env::var("PROXY_PID") {
        Ok(v) => Some(
            v.parse()
                .map_err(|_| format!("PROXY_PID must be a process id, got {v:?}"))?,
        ),
        Err(_) => None,
    };
    let clients = env_or("CLIENTS", 200usize)?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(clients.max(64))
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    Ok(Settings {
        proxy: url("PROXY")?,
        upstream: url("UPSTREAM")?,
        duration: Duration::from_secs(env_or("DURATION_SECS", 60)?),
        clients,
        proc: Proc(pid),
        http,
        nonce: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let phase = std::env::var("PHASE").unwrap_or_default();
    // Leaked: the spawned tasks of a phase share it for the life of this short process.
    let result = match settings().map(|s| &*Box::leak(Box::new(s))) {
        Err(e) => Err(e),
        Ok(s) => match phase.as_str() {
            "mix" => mix::run(s).await,
            "ips" => ips::run(s).await,
            "disconnect" => disconnect::run(s).await,
            other => Err(format!(
                "PHASE must be mix, ips or disconnect, got {other:?}"
            )),
        },
    };
    match result {
        Ok(()) => {
            println!("\nsoak {phase}: PASS");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("\nsoak {phase}: FAIL: {why}");
            ExitCode::FAILURE
        }
    }
}
