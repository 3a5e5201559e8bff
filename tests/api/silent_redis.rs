//! A "Redis" that accepts connections and never answers a command: either nothing at all, or
//! nothing but the connection handshake (redis-rs's `CLIENT SETINFO`), so that the proxy
//! connects and then every real call has to be given up after REDIS_TIMEOUT; or nothing but
//! the commands a test chooses to answer.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a command (its arguments, the name first and upper-cased) is answered with, if at all.
pub type Reply = fn(&[String]) -> Option<&'static [u8]>;

pub struct SilentRedis {
    pub port: u16,
    /// Names of the commands received and never answered, in order.
    unanswered: Arc<Mutex<Vec<String>>>,
}

impl SilentRedis {
    /// With `handshake`, `CLIENT ...` commands get `+OK` so that connections open.
    pub async fn start(handshake: bool) -> Self {
        let handshake: Reply = if handshake {
            |command| (command[0] == "CLIENT").then_some(b"+OK\r\n")
        } else {
            |_| None
        };
        Self::answering(handshake).await
    }

    /// Answers a command with `reply(command)` when that is `Some`, and never otherwise.
    /// Replies come in order, so once a connection has a command left unanswered it gets no
    /// more.
    pub async fn answering(reply: Reply) -> Self {
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
                        while let Some((args, used)) = command(&buf) {
                            buf.drain(..used);
                            match reply(&args).filter(|_| !stuck) {
                                Some(answer) => {
                                    if socket.write_all(answer).await.is_err() {
                                        return;
                                    }
                                }
                                None => {
                                    stuck = true;
                                    seen.lock().unwrap().push(args[0].clone());
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

/// The first complete command in `buf` (a RESP array of bulk strings): its arguments, the
/// first (the command's name) upper-cased, and the bytes it takes.
pub fn command(buf: &[u8]) -> Option<(Vec<String>, usize)> {
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
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let len: usize = std::str::from_utf8(line(&mut at)?.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        if buf.len() < at + len + 2 {
            return None;
        }
        let arg = &buf[at..at + len];
        let arg = String::from_utf8_lossy(arg);
        args.push(if args.is_empty() {
            arg.to_uppercase()
        } else {
            arg.into_owned()
        });
        at += len + 2;
    }
    (!args.is_empty()).then_some((args, at))
}
