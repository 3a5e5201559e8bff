//! A hand-written upstream for streams and faults wiremock cannot script: chunked SSE held
//! mid-way, streams without `[DONE]`, resets, and connections closed before any answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub const EVENTS: [&str; 3] = [
    "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
    "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
    "data: [DONE]\n\n",
];

/// What the upstream does on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// All of `EVENTS`, then the end of the chunked body.
    Complete,
    /// The first event, then waits for `release()` before the rest (or notices the client
    /// leaving, see `closed_early`).
    HoldAfterFirst,
    /// The first two events and a clean end, but no `[DONE]`.
    NoDone,
    /// The first event, then half a chunk, then the connection closes.
    CutMidChunk,
    /// Reads the request, waits for `release()`, and closes without answering.
    CloseAfterRelease,
    /// The first event, then 100 more every 50 ms; notices a write failing (client gone).
    Slow,
    /// Like `Complete`, after `release()`.
    CompleteAfterRelease,
    /// A JSON response announcing 100 bytes, sending 11, then closing.
    ShortBody,
    /// A reply that is not HTTP at all.
    Garbage,
    /// Reads the request, then resets the connection (RST, not FIN) without answering.
    ResetBeforeHead,
    /// A JSON response announcing 100 bytes, sending 11, then a reset at `cut()`.
    ResetMidJson,
    /// The first event, then a reset at `cut()`.
    ResetMidStream,
    /// All of `EVENTS` under this status instead of 200.
    Status(u16),
    /// `large_stream(n)`: n events, then `[DONE]`.
    Large(usize),
    /// `BINARY` as a complete chunked `application/octet-stream` body (no length).
    ChunkedBinary,
}

/// The body of `Script::ChunkedBinary`, in two chunks.
pub const BINARY: [&str; 2] = ["%PDF-1.7 first part ", "second part %%EOF"];

/// The body of `Script::Large(n)`: the first of `EVENTS`, `n` numbered events, `[DONE]`.
pub fn large_stream(n: usize) -> Vec<String> {
    let numbered = (0..n).map(|i| {
        format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"event {i:05}\"}}}}]}}\n\n")
    });
    [EVENTS[0].to_owned()]
        .into_iter()
        .chain(numbered)
        .chain([EVENTS[2].to_owned()])
        .collect()
}

/// Ends the connection with a TCP reset: SO_LINGER 0, then close.
fn reset(sock: TcpStream) {
    sock.set_zero_linger().expect("SO_LINGER 0 is settable");
    drop(sock);
}

pub struct SseUpstream {
    pub url: String,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    release: Arc<Notify>,
    /// Notified when a held connection saw the client leave.
    pub closed_early: Arc<Notify>,
    cut: Arc<Notify>,
}

/// What the test and the connections signal each other.
#[derive(Clone)]
struct Signals {
    release: Arc<Notify>,
    closed: Arc<Notify>,
    cut: Arc<Notify>,
}

impl SseUpstream {
    /// Serves connection `n` (0-based) with `script(n)`.
    pub async fn start(script: impl Fn(usize) -> Script + Send + Sync + 'static) -> Self {
        Self::start_on(0, script).await
    }

    /// Like `start`, on the given loopback port (0: any free one).
    pub async fn start_on(
        port: u16,
        script: impl Fn(usize) -> Script + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let signals = Signals {
            release: Arc::new(Notify::new()),
            closed: Arc::new(Notify::new()),
            cut: Arc::new(Notify::new()),
        };
        let (count, each) = (connections.clone(), signals.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(sock, script(n), each.clone()));
            }
        });
        Self {
            url,
            connections,
            release: signals.release,
            closed_early: signals.closed,
            cut: signals.cut,
        }
    }

    /// Serves connection 0 with `first`, every later one with `Script::Complete`.
    pub async fn first_then_complete(first: Script) -> Self {
        Self::start(move |n| if n == 0 { first } else { Script::Complete }).await
    }

    /// Lets held connections (present and future) send the rest.
    pub fn release(&self) {
        self.release.notify_waiters();
        self.release.notify_one();
    }

    /// Lets one connection waiting to be reset (now or next) reset.
    pub fn cut(&self) {
        self.cut.notify_one();
    }

    pub fn calls(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn chunk(s: &str) -> String {
    format!("{:x}\r\n{s}\r\n", s.len())
}

async fn serve(mut sock: TcpStream, script: Script, signals: Signals) {
    let Signals {
        release,
        closed,
        cut,
    } = signals;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    match script {
        Script::CloseAfterRelease => {
            release.notified().await;
            return;
        }
        Script::ResetBeforeHead => return reset(sock),
        Script::ShortBody | Script::ResetMidJson => {
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
            let _ = sock
                .write_all(format!("{head}{{\"partial\":").as_bytes())
                .await;
            if script == Script::ResetMidJson {
                cut.notified().await;
                reset(sock);
            }
            return;
        }
        Script::ChunkedBinary => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let body: String = BINARY.iter().map(|c| chunk(c)).collect();
            let _ = sock
                .write_all(format!("{head}{body}0\r\n\r\n").as_bytes())
                .await;
            let _ = sock.read(&mut buf).await;
            return;
        }
        Script::Garbage => {
            let _ = sock.write_all(b"SMTP ready, not HTTP\r\n\r\n").await;
            return;
        }
        _ => {}
    }
    if script == Script::CompleteAfterRelease {
        release.notified().await;
    }
    // `connection: close`: a pooled connection would carry the next request to a script
    // that serves one response per connection.
    let status = match script {
        Script::Status(code) => code,
        _ => 200,
    };
    let start = format!(
        "HTTP/1.1 {status} Whatever\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let first = format!("{start}{}", chunk(EVENTS[0]));
    if sock.write_all(first.as_bytes()).await.is_err() {
        return;
    }
    let rest: &[&str] = match script {
        Script::HoldAfterFirst => {
            tokio::select! {
                _ = release.notified() => {}
                // The proxy closing the connection shows up as end of input.
                _ = sock.read(&mut buf) => {
                    closed.notify_one();
                    return;
                }
            }
            &EVENTS[1..]
        }
        Script::NoDone => &EVENTS[1..2],
        Script::Slow => {
            for _ in 0..100 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                if sock.write_all(chunk(EVENTS[1]).as_bytes()).await.is_err() {
                    closed.notify_one();
                    return;
                }
            }
            &EVENTS[2..]
        }
        Script::ResetMidStream => {
            cut.notified().await;
            return reset(sock);
        }
        Script::Large(n) => {
            let events = large_stream(n);
            let body: String = events[1..].iter().map(|e| chunk(e)).collect();
            let _ = sock.write_all(format!("{body}0\r\n\r\n").as_bytes()).await;
            let _ = sock.read(&mut buf).await;
            return;
        }
        Script::CutMidChunk => {
            // Drop with unread request bytes pending would reset; close the write side abruptly
            // instead by shutting down mid-chunk: the body ends without its terminator.
            let _ = sock.write_all(b"5\r\nda").await;
            return;
        }
        _ => &EVENTS[1..],
    };
    let body: String = rest.iter().map(|e| chunk(e)).collect();
    let _ = sock.write_all(format!("{body}0\r\n\r\n").as_bytes()).await;
    let _ = sock.flush().await;
    // Keep the connection open for reuse until the client closes it.
    let _ = sock.read(&mut buf).await;
}

/// The whole body of a response, or the error that cut it off.
pub async fn read_all(mut res: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(c) = res.chunk().await? {
        body.extend_from_slice(&c);
    }
    Ok(body)
}
