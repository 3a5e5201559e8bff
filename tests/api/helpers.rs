//! `spawn_app`: a fresh proxy on port 0 in front of a fresh recording mock upstream.

use std::sync::LazyLock;
use std::time::Duration;

use openai_cache_proxy::{Application, Config, config::LogFormat, telemetry};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Logs go nowhere, to stdout with TEST_LOG set, or with OCP_TEST_LOG_DIR set to a file of
/// this test process's own there (`make test` scans those files for secrets).
static TRACING: LazyLock<()> = LazyLock::new(|| {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = telemetry::env_filter(rust_log.as_deref(), "info").expect("RUST_LOG parses");
    if let Ok(dir) = std::env::var("OCP_TEST_LOG_DIR") {
        std::fs::create_dir_all(&dir).expect("log dir");
        let file = std::path::Path::new(&dir).join(format!("test-{}.log", std::process::id()));
        let file = std::fs::File::create(file).expect("log file");
        telemetry::init(LogFormat::Json, filter, std::sync::Mutex::new(file));
    } else if std::env::var("TEST_LOG").is_ok() {
        telemetry::init(LogFormat::Pretty, filter, std::io::stdout);
    } else {
        telemetry::init(LogFormat::Pretty, filter, std::io::sink);
    }
});

pub struct TestApp {
    pub address: String,
    pub upstream: MockServer,
    pub client: reqwest::Client,
}

/// Starts the proxy against a new `MockServer`. `overrides` are environment-style pairs
/// layered over the test defaults (rate limiting off, two workers, upstream = the mock).
pub async fn spawn_app(overrides: &[(&str, &str)]) -> TestApp {
    let upstream = MockServer::start().await;
    let uri = upstream.uri();
    let address = spawn_proxy(&uri, overrides);
    TestApp {
        address,
        upstream,
        client: client(),
    }
}

/// Starts the proxy in front of `upstream_url`; returns its base address.
pub fn spawn_proxy(upstream_url: &str, overrides: &[(&str, &str)]) -> String {
    LazyLock::force(&TRACING);
    let mut vars = vec![
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("RATE_LIMIT", "0"),
        // Two workers whatever the machine: state shared by workers is tested as such.
        ("WORKERS", "2"),
        ("OPENAI_API_URL", upstream_url),
    ];
    vars.retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
    vars.extend_from_slice(overrides);
    let config = Config::from_vars(vars).expect("test configuration is valid");
    let app = Application::build(config).expect("the app binds to a free port");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    address
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("reqwest client builds")
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// POSTs a JSON body to the proxy with the given API key.
    pub async fn post_json(&self, path: &str, key: &str, body: &str) -> reqwest::Response {
        self.post_json_via(&self.client, path, key, body).await
    }

    /// Like `post_json`, through `client` (a new client: a new connection).
    pub async fn post_json_via(
        &self,
        client: &reqwest::Client,
        path: &str,
        key: &str,
        body: &str,
    ) -> reqwest::Response {
        client
            .post(self.url(path))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request reaches the proxy")
    }

    /// Answers every POST upstream with `CHAT_ANSWER`.
    pub async fn answer_posts(&self) {
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(CHAT_ANSWER, "application/json"))
            .mount(&self.upstream)
            .await;
    }

    pub async fn upstream_calls(&self) -> usize {
        self.upstream
            .received_requests()
            .await
            .expect("request recording is on")
            .len()
    }

    pub async fn stats(&self, token: Option<&str>) -> serde_json::Value {
        let mut req = self.client.get(self.url("/stats"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("stats reachable");
        assert_eq!(res.status(), 200);
        res.json().await.expect("stats is JSON")
    }
}

pub fn x_cache(res: &reqwest::Response) -> &str {
    res.headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap())
        .unwrap_or("<none>")
}

/// Asserts an OpenAI-style error body and returns it.
pub async fn assert_openai_error(
    res: reqwest::Response,
    status: u16,
    code: &str,
) -> serde_json::Value {
    assert_eq!(res.status(), status);
    let body: serde_json::Value = res.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
    assert!(body["error"]["param"].is_null(), "{body}");
    body
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port with nothing listening on it.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

pub const CHAT_BODY: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
pub const CHAT_ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}]}"#;

/// Sends one request line exactly as given (no client-side path normalisation) and returns
/// the status code and the body.
pub async fn raw_request(address: &str, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .expect("proxy reachable");
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("request written");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("response read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Sends `request` on `sock` and reads one answer (head and `Content-Length` body): its
/// status and head.
pub async fn exchange(sock: &mut tokio::net::TcpStream, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before an answer");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(got[..head_end].to_vec()).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("a sized answer")
        .trim()
        .parse()
        .unwrap();
    while got.len() < head_end + length {
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed mid-body");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got.len(), head_end + length, "nothing after the body");
    let status = head[9..12].parse().unwrap();
    (status, head)
}
