//! Logs: one structured line per request, and never a secret, even at trace level.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::config::start_binary;
use crate::helpers::{CHAT_ANSWER, CHAT_BODY, client};
use crate::tinyproxy::{PROXY_PASSWORD, PROXY_USER, Tinyproxy};

const API_KEY: &str = "sk-live-DO-NOT-LOG-4f9a8b7c";
const ADMIN_TOKEN: &str = "admin-DO-NOT-LOG-1c2d3e";

#[tokio::test]
async fn no_secret_appears_in_logs_at_trace_level() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(CHAT_ANSWER, "application/json"))
        .mount(&upstream)
        .await;
    // Upstream traffic really goes through an authenticating proxy.
    let tinyproxy = Tinyproxy::start(true).await;
    let proxy_url = tinyproxy.url(Some((PROXY_USER, PROXY_PASSWORD)));
    let (child, base) = start_binary(&[
        ("OPENAI_API_URL", &upstream.uri()),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("PROXY_URL", &proxy_url),
        ("RUST_LOG", "trace"),
        ("LOG_FORMAT", "json"),
    ])
    .await;
    let http = client();

    for path in ["/v1/chat/completions", "/v1/chat/completions", "/v1/files"] {
        let res = http
            .post(format!("{base}{path}"))
            .bearer_auth(API_KEY)
            .header("openai-organization", "org-visible")
            .header("x-request-id", "trace-me-1")
            .body(CHAT_BODY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }
    for token in [ADMIN_TOKEN, "wrong"] {
        http.get(format!("{base}/stats"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    }
    // A graceful stop: a line is written when its response body ends, which may be just
    // after the client has read the last byte.
    let pid = Pid::from_raw(child.id().unwrap() as i32);
    kill(pid, Signal::SIGTERM).expect("SIGTERM delivered");
    let out = child.wait_with_output().await.unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The capture works: our request lines are there, with their fields.
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| {
            v["message"] == "request" && v["request_id"] == "trace-me-1"
        })
        .collect();
    assert_eq!(lines.len(), 3, "one line per proxied request:\n{logs}");
    let caches: Vec<&str> = lines.iter().map(|l| l["cache"].as_str().unwrap()).collect();
    assert_eq!(caches, ["MISS", "HIT", "BYPASS"]);
    assert_eq!(lines[0]["upstream_status"], 200);
    assert_eq!(lines[0]["key"].as_str().unwrap().len(), 12);
    assert!(lines[0]["latency_ms"].is_number());
    assert!(
        lines[0]["upstream_latency_ms"].is_number(),
        "a miss called upstream"
    );
    assert!(lines[1]["upstream_latency_ms"].is_null(), "a hit did not");
    for line in &lines {
        assert_eq!(line["bytes_out"], CHAT_ANSWER.len(), "{line}");
        assert_eq!(line["complete"], true);
    }
    assert_eq!(lines[0]["method"], "POST");
    assert_eq!(lines[0]["path"], "/v1/chat/completions");
    assert_eq!(lines[0]["status"], 200);

    for secret in [API_KEY, ADMIN_TOKEN, PROXY_PASSWORD, &API_KEY[3..]] {
        assert!(!logs.contains(secret), "secret {secret:?} found in logs");
    }
    assert!(
        logs.len() > 10_000,
        "trace level produced little output: {}",
        logs.len()
    );
}
