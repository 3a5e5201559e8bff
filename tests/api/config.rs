//! The binary itself: start-up validation, and graceful shutdown.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{client, closed_port, eventually, exchange};
use crate::sse_upstream::{EVENTS, Script, SseUpstream};

pub const BINARY: &str = env!("CARGO_BIN_EXE_openai-cache-proxy");

/// The binary with a clean environment plus `vars`.
pub fn command(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BINARY);
    cmd.env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs the binary on a free loopback port with `vars`, once it answers `/health`.
pub async fn start_binary(vars: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let port = closed_port().to_string();
    let mut all = vec![("PORT", port.as_str()), ("HOST", "127.0.0.1")];
    all.extend_from_slice(vars);
    let child = command(&all).spawn().expect("the binary starts");
    let base = format!("http://127.0.0.1:{port}");
    listening(&base).await;
    (child, base)
}

/// Waits until the proxy at `base` answers `/health`.
async fn listening(base: &str) {
    let http = client();
    eventually(Duration::from_secs(10), "the proxy to listen", || async {
        http.get(format!("{base}/health"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn bad_environment_values_stop_the_process_with_exit_code_2() {
    for (var, value, shown) in [
        ("RATE_LIMIT", "abc", Some("abc")),
        ("CACHE_TTL", "forever", Some("forever")),
        ("OPENAI_API_URL", "not-a-url", Some("not-a-url")),
        ("PROXY_URL", "ftp://x", Some("ftp://x")),
        ("MAX_CACHE_SIZE", "0", Some("0")),
        ("PORT", "99999", Some("99999")),
        ("TRUSTED_PROXIES", "10.0.0.0/99", Some("10.0.0.0/99")),
        ("LOG_FORMAT", "xml", Some("xml")),
        ("ADMIN_TOKEN", " ", None),
        ("RUST_LOG", "[[[", Some("[[[")),
        ("PROXY_URL", "socks5://user:s3cr3t@host:1080", None),
        ("EXTRA_CA_FILE", "/etc/hostname", Some("/etc/hostname")),
        (
            "EXTRA_CA_FILE",
            "/nonexistent/ca.pem",
            Some("/nonexistent/ca.pem"),
        ),
        ("CONNECT_TIMEOUT", "0s", Some("0s")),
        ("CLIENT_IDLE_TIMEOUT", "250ms", Some("250ms")),
        ("PROXY_FROM_ENV", "maybe", Some("maybe")),
        ("PRICE_TABLE", "gpt-4o=2.50", Some("gpt-4o=2.50")),
        ("REDIS_URL", "http://:hunter2@cache:6379", None),
        ("REDIS_URL", "redis://:hunter2@", None),
        ("REDIS_CLUSTER", "maybe", Some("maybe")),
        ("REDIS_URL", "redis://:s3cr3t@a:1,redis://b:2", None),
        ("RATE_LIMIT_BACKEND", "redis", Some("redis")),
        ("REDIS_TIMEOUT", "soon", Some("soon")),
        ("REDIS_URL", "rediss://:hunter2@cache:6380/0#insecure", None),
        ("REDIS_CA_FILE", "/etc/hostname", Some("/etc/hostname")),
        ("CACHE_KEY_PREFIX", "ocp v1:", Some("ocp v1:")),
        ("CACHE_KEY_PREFIX", "ocp:*", Some("ocp:*")),
        ("REDIS_COALESCE_WAIT", "soon", Some("soon")),
    ] {
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            command(&[
                (var, value),
                ("PORT", if var == "PORT" { value } else { "0" }),
            ])
            .output(),
        )
        .await
        .expect("the process exits promptly")
        .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(var), "{var} not named: {stderr}");
        assert!(stderr.contains("must"), "no expectation given: {stderr}");
        if let Some(shown) = shown {
            assert!(stderr.contains(shown), "{var}: value not shown: {stderr}");
        }
        assert!(
            !stderr.contains("s3cr3t") && !stderr.contains("hunter2"),
            "secret leaked: {stderr}"
        );
    }
}

#[tokio::test]
async fn sigterm_lets_a_hundred_in_flight_requests_finish_and_refuses_new_ones() {
    // Every upstream answer is a 5 s stream; half the requests are cacheable misses (each
    // its own flight), half bypass the cache.
    let upstream = SseUpstream::start(|_| Script::Slow).await;
    let (child, base) =
        start_binary(&[("OPENAI_API_URL", &upstream.url), ("RATE_LIMIT", "0")]).await;
    let http = client();
    let requests: Vec<_> = (0..100)
        .map(|i| {
            let path = if i % 2 == 0 {
                "/v1/chat/completions"
            } else {
                "/v1/files"
            };
            let req = http
                .post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"stream":true,"n":{i}}}"#));
            tokio::spawn(async move { req.send().await?.text().await })
        })
        .collect();
    eventually(Duration::from_secs(20), "100 upstream calls", || async {
        (upstream.calls() == 100).then_some(())
    })
    .await;
    send_signal(&child, Signal::SIGTERM);

    let port = base.rsplit(':').next().unwrap();
    eventually(
        Duration::from_secs(10),
        "new connections to be refused",
        || async {
            tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    let expected = format!("{}{}{}", EVENTS[0], EVENTS[1].repeat(100), EVENTS[2]);
    for r in requests {
        let body = r.await.unwrap().expect("an in-flight request completes");
        assert_eq!(body, expected);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the process exits after draining")
        .unwrap();
    assert!(out.status.success(), "{}", out.status);
}

#[tokio::test]
async fn sigint_lets_in_flight_requests_finish() {
    stop_signal_drains(Signal::SIGINT).await;
}

async fn stop_signal_drains(signal: Signal) {
    let upstream = slow_upstream().await;
    let (child, base) = start_binary(&[("OPENAI_API_URL", &upstream.uri())]).await;
    let http = client();

    let in_flight = tokio::spawn({
        let http = http.clone();
        let url = format!("{base}/v1/files");
        async move { http.post(url).body("x").send().await?.text().await }
    });
    // Signal only once the request is inside the upstream call.
    reached(&upstream).await;
    send_signal(&child, signal);

    let answer = in_flight.await.unwrap();
    let out = exited(child).await;
    let logs = format!(
        "{}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        answer.unwrap_or_else(|e| panic!("in-flight request failed ({e}); logs:\n{logs}")),
        "finished"
    );
    assert!(out.status.success(), "{}", out.status);
    assert!(
        http.get(format!("{base}/health")).send().await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_on_every_worker_at_once() {
    // Neither CLIENT_IDLE_TIMEOUT nor SHUTDOWN_TIMEOUT may be what closes them.
    let (child, base) = start_binary(&[
        ("WORKERS", "2"),
        ("CLIENT_IDLE_TIMEOUT", "60s"),
        ("SHUTDOWN_TIMEOUT", "60s"),
    ])
    .await;
    let addr = base.trim_start_matches("http://");
    // actix-server hands connections to its workers in turn: both get two.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (status, _) = exchange(&mut sock, "GET /health HTTP/1.1\r\nHost: p\r\n\r\n").await;
        assert_eq!(status, 200);
        idle.push(sock);
    }
    send_signal(&child, Signal::SIGTERM);
    for (i, sock) in idle.iter_mut().enumerate() {
        closed_within(
            sock,
            Duration::from_secs(10),
            &format!("idle connection {i}"),
        )
        .await;
    }
    let out = exited(child).await;
    assert!(out.status.success(), "{}", out.status);
}

#[tokio::test]
async fn sigterm_answers_the_request_in_progress_and_closes_its_connection_before_the_next() {
    let upstream = slow_upstream().await;
    let (child, base) = start_binary(&[
        ("OPENAI_API_URL", &upstream.uri()),
        ("CLIENT_IDLE_TIMEOUT", "60s"),
        ("SHUTDOWN_TIMEOUT", "60s"),
    ])
    .await;
    let mut sock = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    // A second request queued behind the first (pipelined): it must not be started.
    let in_flight = tokio::spawn(async move {
        let requests = "POST /v1/files HTTP/1.1\r\nHost: p\r\nContent-Length: 1\r\n\r\nx\
                        GET /health HTTP/1.1\r\nHost: p\r\n\r\n";
        let answer = exchange(&mut sock, requests).await;
        (sock, answer)
    });
    reached(&upstream).await;
    send_signal(&child, Signal::SIGTERM);
    // Whole (`exchange` reads all of its 8 bytes), and the client is told not to reuse it.
    let (mut sock, (status, head)) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-length: 8\r\n"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    closed_within(
        &mut sock,
        Duration::from_secs(10),
        "the connection after its answer",
    )
    .await;
    let out = exited(child).await;
    assert!(out.status.success(), "{}", out.status);
}

/// An upstream that answers a POST with "finished" after 1.5 s.
async fn slow_upstream() -> MockServer {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string("finished")
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&upstream)
        .await;
    upstream
}

/// Waits until a request has reached `upstream`.
async fn reached(upstream: &MockServer) {
    eventually(
        Duration::from_secs(10),
        "the request to reach the upstream",
        || async { (!upstream.received_requests().await.unwrap().is_empty()).then_some(()) },
    )
    .await;
}

/// The process's end, which must come within 10 s.
async fn exited(child: tokio::process::Child) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("the process exits once its connections are closed")
        .unwrap()
}

fn send_signal(child: &tokio::process::Child, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id().expect("running")).unwrap());
    kill(pid, signal).expect("signal delivered");
}

/// Waits up to `limit` for the proxy to close `sock` (end of stream or reset), with nothing
/// more sent on it.
async fn closed_within(sock: &mut tokio::net::TcpStream, limit: Duration, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    match tokio::time::timeout(limit, sock.read(&mut buf)).await {
        Err(_) => panic!("{what}: still open {limit:?} after the signal"),
        Ok(Ok(n)) => assert_eq!(
            n,
            0,
            "{what}: sent {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}"),
    }
}

#[tokio::test]
async fn the_healthcheck_subcommand_answers_for_the_running_proxy() {
    let (_child, base) = start_binary(&[]).await;
    let port = base.rsplit(':').next().unwrap().to_owned();
    let check = |vars: Vec<(&'static str, String)>, args: &'static [&'static str]| async move {
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out =
            tokio::time::timeout(Duration::from_secs(10), command(&pairs).args(args).output())
                .await
                .expect("the healthcheck ends within its timeout")
                .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // HOST=0.0.0.0 (the default) is reached on loopback.
    let (code, stderr) = check(vec![("PORT", port.clone())], &["healthcheck"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let closed = closed_port().to_string();
    let (code, stderr) = check(vec![("PORT", closed.clone())], &["healthcheck"]).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("127.0.0.1:{closed}/health")),
        "{stderr}"
    );
    let (code, stderr) = check(
        vec![("PORT", port.clone()), ("CACHE_TTL", "forever".into())],
        &["healthcheck"],
    )
    .await;
    assert_eq!(
        code,
        Some(1),
        "a broken environment is unhealthy, not exit 2: {stderr}"
    );
    assert!(stderr.contains("CACHE_TTL"), "{stderr}");
    let (code, stderr) = check(vec![("PORT", port)], &["serve-please"]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unknown command"), "{stderr}");
}

#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_limit_at_start_up() {
    // A client connection holds two descriptors (CLIENT_IDLE_TIMEOUT keeps a duplicate), so
    // a soft limit of 256 would halve how many connections the proxy can hold.
    let port = closed_port().to_string();
    let mut child = Command::new("prlimit")
        .args(["--nofile=256:", BINARY])
        .env_clear()
        .envs([("PORT", port.as_str()), ("HOST", "127.0.0.1")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit (util-linux) runs the binary");
    listening(&format!("http://127.0.0.1:{port}")).await;
    let pid = child.id().expect("running");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line")
        .split_whitespace()
        .collect();
    // "Max open files <soft> <hard> files"
    let (soft, hard) = (open_files[3], open_files[4]);
    assert_ne!(soft, "256", "{limits}");
    assert_eq!(soft, hard, "{limits}");
    child.kill().await.unwrap();
}
