//! A "Redis" that accepts connections and never answers a command: either nothing at all, or
//! nothing but the connection handshake (redis-rs's `CLIENT SETINFO`), so that the proxy
//! connects and then every real call has to be given up after REDIS_TIMEOUT; or nothing but
//! the commands a test chooses to answer.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct SilentRedis {
    pub port: u16,
    /// Names of the commands received and never answered, in order.
    unanswered: Arc<Mutex<Vec<String>>>,
}

impl SilentRedis {
    /// With `handshake`, `CLIENT ...` commands get `+OK` so that connections open.
    pub async fn start(handshake: bool) -> Self {
        let handshake: fn(&str) -> Option<&'static [u8]> = if handshake {
            |name| (name == "CLIENT").then_some(b"+OK\r\n")
        } else {
            |_| None
        };
        Self::answering(handshake).await
    }

    /// Answers a command with `reply(name)` when that is `Some`, and never otherwise. Replies
    /// come in order, so once a connection has a command left unanswered it gets no more.
    pub async fn answering(reply: fn(&str) -> Option<&'static [u8]>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let unanswered = Arc::new(Mutex::new(Vec::new()));
        let seen = unanswered.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut stuck = false;
                    while let Ok(n) = socket.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some((name, used)) = command(&buf) {
                            buf.drain(..used);
                            match reply(&name).filter(|_| !stuck) {
                                Some(answer) => {
                                    if socket.write_all(answer).await.is_err() {
                                        return;
                                    }
                                }
                                None => {
                                    stuck = true;
                                    seen.lock().unwrap().push(name);
                                }
                            }
                        }
                    }
                });
            }
        });
        Self { port, unanswered }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn unanswered(&self) -> Vec<String> {
        self.unanswered.lock().unwrap().clone()
    }
}

/// The first complete command in `buf` (a RESP array of bulk strings): its upper-cased name
/// and the bytes it takes.
fn command(buf: &[u8]) -> Option<(String, usize)> {
    let mut at = 0;
    let line = |at: &mut usize| -> Option<&[u8]> {
        let end = buf[*at..].windows(2).position(|w| w == b"\r\n")? + *at;
        let text = &buf[*at..end];
        *at = end + 2;
        Some(text)
    };
    let count: usize = std::str::from_utf8(line(&mut at)?.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut name = None;
    for _ in 0..count {
        let len: usize = std::str::from_utf8(line(&mut at)?.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        if buf.len() < at + len + 2 {
            return None;
        }
        let arg = &buf[at..at + len];
        name.get_or_insert_with(|| String::from_utf8_lossy(arg).to_uppercase());
        at += len + 2;
    }
    Some((name?, at))
}
