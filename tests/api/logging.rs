//! Logs: one structured line per request, and never a secret, even at trace level.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::config::start_binary;
use crate::helpers::{CHAT_ANSWER, CHAT_BODY, client, closed_port, eventually};
use crate::tinyproxy::{PROXY_PASSWORD, PROXY_USER, Tinyproxy};

const API_KEY: &str = "sk-live-DO-NOT-LOG-4f9a8b7c";
const ADMIN_TOKEN: &str = "admin-DO-NOT-LOG-1c2d3e";

/// Runs the binary with `vars` (JSON logs unless they set LOG_FORMAT), lets `drive` send
/// requests to its base URL, stops it gracefully and returns all it logged. The stop matters: a
/// request's line is written when its response body ends, which may be just after the client
/// read the last byte.
async fn logs_of<F, Fut>(vars: &[(&str, &str)], drive: F) -> String
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut all = vec![("LOG_FORMAT", "json")];
    all.extend_from_slice(vars);
    let (child, base) = start_binary(&all).await;
    drive(base).await;
    let pid = Pid::from_raw(child.id().unwrap() as i32);
    kill(pid, Signal::SIGTERM).expect("SIGTERM delivered");
    let out = child.wait_with_output().await.unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The access log lines (`"message":"request"`) of requests sent with this `X-Request-Id`.
fn request_lines(logs: &str, request_id: &str) -> Vec<serde_json::Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["message"] == "request" && v["request_id"] == request_id)
        .collect()
}

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
    let vars = [
        ("OPENAI_API_URL", upstream.uri()),
        ("ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("PROXY_URL", proxy_url),
        ("RUST_LOG", "trace".to_owned()),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let logs = logs_of(&vars, |base| async move {
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
    })
    .await;

    // The capture works: our request lines are there, with their fields.
    let lines = request_lines(&logs, "trace-me-1");
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

/// Without an `X-Request-Id` from the client, the generated one (a v4 UUID) is the one the
/// response carries and the one its log line names, with JSON logs (the default), where
/// tracing-actix-web's layer is not installed.
#[tokio::test]
async fn a_generated_request_id_is_sent_and_logged() {
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sent = ids.clone();
    let logs = logs_of(&[("RUST_LOG", "info")], |base| async move {
        for _ in 0..2 {
            let res = client().get(format!("{base}/health")).send().await.unwrap();
            assert_eq!(res.status(), 200);
            let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
            sent.lock().unwrap().push(id);
        }
    })
    .await;
    let ids = ids.lock().unwrap().clone();
    assert_ne!(ids[0], ids[1], "each request gets its own id");
    for id in &ids {
        let uuid = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(uuid.get_version_num(), 4, "{id}");
        let lines = request_lines(&logs, id);
        assert_eq!(lines.len(), 1, "{id} in {logs}");
        assert_eq!(lines[0]["path"], "/health");
    }
}

#[tokio::test]
async fn the_access_log_names_the_client_ip_and_never_the_query_string() {
    const SECRET: &str = "secret-in-query";
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("{}", "application/json"))
        .mount(&upstream)
        .await;
    let uri = upstream.uri();
    let vars = [
        ("OPENAI_API_URL", uri.as_str()),
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("RUST_LOG", "trace"),
    ];
    let logs = logs_of(&vars, |base| async move {
        let http = client();
        for (path, xff) in [
            ("/v1/models", None),
            ("/v1/models", Some("203.0.113.7")),
            ("/not-a-route", None),
        ] {
            let mut req = http
                .get(format!("{base}{path}?api_key={SECRET}&x=1"))
                .header("x-request-id", "query-1");
            if let Some(xff) = xff {
                req = req.header("x-forwarded-for", xff);
            }
            let res = req.send().await.unwrap();
            assert!(!res.text().await.unwrap().contains(SECRET));
        }
    })
    .await;
    let lines = request_lines(&logs, "query-1");
    assert_eq!(lines.len(), 3, "{logs}");
    let seen: Vec<(&str, &str, u64)> = lines
        .iter()
        .map(|l| {
            let field = |k: &str| l[k].as_str().unwrap_or("<missing>");
            (
                field("client_ip"),
                field("path"),
                l["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("127.0.0.1", "/v1/models", 200),
            // From a trusted peer, the forwarded address is the client.
            ("203.0.113.7", "/v1/models", 200),
            ("127.0.0.1", "/not-a-route", 404),
        ]
    );
    assert!(!logs.contains(SECRET), "the query string was logged");
}

#[tokio::test]
async fn an_upstream_failure_is_logged_at_warn_with_its_cause() {
    let logs = logs_of_a_refused_request("json").await;
    let warned: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["message"] == "upstream request failed")
        .collect();
    assert_eq!(warned.len(), 1, "{logs}");
    assert_eq!(warned[0]["level"], "WARN", "{logs}");
    let cause = warned[0]["error"].as_str().unwrap_or_default();
    assert!(cause.contains("refused"), "the cause is named: {cause:?}");
    let lines = request_lines(&logs, "refused-1");
    assert_eq!(lines.len(), 1, "{logs}");
    assert_eq!(lines[0]["status"], 502);
}

/// What the binary logs at `info` in `format` for one chat completion (`X-Request-Id:
/// refused-1`) answered 502 because nothing listens at the upstream's address.
async fn logs_of_a_refused_request(format: &str) -> String {
    let unreachable = format!("http://127.0.0.1:{}", closed_port());
    let vars = [
        ("OPENAI_API_URL", unreachable.as_str()),
        ("LOG_FORMAT", format),
        ("RUST_LOG", "info"),
    ];
    logs_of(&vars, |base| async move {
        let res = client()
            .post(format!("{base}/v1/chat/completions"))
            .header("x-request-id", "refused-1")
            .body(CHAT_BODY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 502);
    })
    .await
}

/// A reader of stdout that stops reading (a log shipper that is down) holds requests back once
/// the queued lines fill up, and every line is written once it reads again: none is dropped.
#[tokio::test]
async fn a_stalled_stdout_holds_requests_back_and_loses_no_log_line() {
    // Well past what can wait unread: the writer thread's 1,024 queued lines, its 64 KB
    // buffer and the pipe's 64 KB (a line here is about 330 bytes, so some 1,400 lines).
    const REQUESTS: usize = 4_000;
    let (mut child, base) = start_binary(&[("LOG_FORMAT", "json")]).await;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let done = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn({
        let done = done.clone();
        let http = client();
        let url = format!("{base}/not-a-route");
        futures_util::stream::iter(0..REQUESTS)
            .map(move |_| {
                let (http, url, done) = (http.clone(), url.clone(), done.clone());
                async move {
                    let res = http.get(url).header("x-request-id", "stall-1").send().await;
                    assert_eq!(res.expect("the request is answered").status(), 404);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
    });

    // Nobody reads stdout yet: the requests must come to a stop short of the last one. A stop
    // can only be seen over time: no request answered for half a second.
    let mut last = usize::MAX;
    let held_at = eventually(
        Duration::from_secs(60),
        "requests to stop while stdout is not read",
        || {
            let now = done.load(Ordering::Relaxed);
            let still = now == last;
            last = now;
            async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                still.then_some(now)
            }
        },
    )
    .await;
    assert!(
        held_at < REQUESTS,
        "all {REQUESTS} requests were answered while nobody read stdout: lines were dropped"
    );

    let reader = tokio::spawn(async move {
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut out)
            .await
            .map(|_| out)
    });
    sender
        .await
        .expect("every request is answered once stdout is read again");
    let pid = Pid::from_raw(child.id().unwrap() as i32);
    kill(pid, Signal::SIGTERM).expect("SIGTERM delivered");
    child.wait().await.unwrap();
    let logs = reader.await.unwrap().unwrap();
    assert_eq!(request_lines(&logs, "stall-1").len(), REQUESTS);
}

/// `pretty` lines show the request span: a request's `warn` line says which request it was.
/// (JSON lines carry the request's fields on its own access log line instead.)
#[tokio::test]
async fn pretty_logs_name_the_request_on_its_warn_lines() {
    let plain = without_ansi_escapes(&logs_of_a_refused_request("pretty").await);
    let warned: Vec<&str> = plain
        .lines()
        .filter(|l| l.contains("upstream request failed"))
        .collect();
    assert_eq!(warned.len(), 1, "{plain}");
    assert!(
        warned[0].contains("request{method=POST path=/v1/chat/completions}"),
        "{}",
        warned[0]
    );
}

/// The text without its colour and style codes (`ESC [ ... m`).
fn without_ansi_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}
