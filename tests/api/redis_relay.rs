//! A relay in front of a real Redis that holds one chosen command back until the test lets it
//! go: a proxy's calls to Redis can then be made to interleave with another's in one exact
//! order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::silent_redis::command;

pub struct RedisRelay {
    pub port: u16,
    holding: watch::Receiver<bool>,
    release: watch::Sender<bool>,
}

impl RedisRelay {
    /// Relays every connection to the Redis at `target` (a port on 127.0.0.1), except that the
    /// first command (of any connection) for which `hold` is true is not sent on, nor anything
    /// after it on that connection, until [`RedisRelay::release`].
    pub async fn start(target: u16, hold: fn(&[String]) -> bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let (held, holding) = watch::channel(false);
        let (release, released) = watch::channel(false);
        let held = Arc::new(held);
        let taken = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(("127.0.0.1", target))
                    .await
                    .expect("connect to redis");
                let (held, taken, released) = (held.clone(), taken.clone(), released.clone());
                tokio::spawn(relay(client, server, hold, held, taken, released));
            }
        });
        Self {
            port,
            holding,
            release,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Returns once a command is being held.
    pub async fn holding(&self) {
        let mut holding = self.holding.clone();
        holding.wait_for(|held| *held).await.expect("relay running");
    }

    /// Sends the held command on, and everything after it.
    pub fn release(&self) {
        self.release.send_replace(true);
    }
}

async fn relay(
    mut client: TcpStream,
    server: TcpStream,
    hold: fn(&[String]) -> bool,
    held: Arc<watch::Sender<bool>>,
    taken: Arc<AtomicBool>,
    mut released: watch::Receiver<bool>,
) {
    let (mut from_server, mut to_server) = server.into_split();
    let (mut from_client, mut to_client) = client.split();
    let answers = async {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    };
    let commands = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from_client.read(&mut chunk).await {
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some((args, used)) = command(&buf) {
                if hold(&args) && !taken.swap(true, Ordering::SeqCst) {
                    held.send_replace(true);
                    if released.wait_for(|go| *go).await.is_err() {
                        return;
                    }
                }
                if to_server.write_all(&buf[..used]).await.is_err() {
                    return;
                }
                buf.drain(..used);
            }
        }
    };
    tokio::select! {
        () = answers => {}
        () = commands => {}
    }
}
