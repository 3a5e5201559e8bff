//! `openai-cache-proxy healthcheck`: asks the running proxy's `GET /health` on the configured
//! port, for container health checks in an image that has no curl. Exit 0 when it answers
//! 200 `healthy`, 1 otherwise, with the reason on stderr.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::ExitCode;
use std::time::Duration;

use crate::Config;

/// Longer than a healthy proxy ever takes, shorter than Docker's default 30 s check timeout.
const TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(config: &Config) -> ExitCode {
    let (host, port) = config.listen_addr();
    // A wildcard listen address is reached on loopback.
    let host = match host {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    let url = match host {
        IpAddr::V4(v4) => format!("http://{v4}:{port}/health"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}/health"),
    };
    let client = awc::Client::builder().timeout(TIMEOUT).finish();
    let mut res = match client.get(&url).send().await {
        Ok(res) => res,
        Err(e) => {
            eprintln!("healthcheck: {url}: {e}");
            return ExitCode::from(1);
        }
    };
    let body = res.body().limit(64 * 1024).await.unwrap_or_default();
    let healthy =
        serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v["status"] == "healthy");
    if res.status().is_success() && healthy {
        ExitCode::SUCCESS
    } else {
        eprintln!("healthcheck: {url} answered {}", res.status());
        ExitCode::from(1)
    }
}
