//! A real tinyproxy on a free port, with a config and log of its own.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{closed_port, eventually};

pub struct Tinyproxy {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

pub const PROXY_USER: &str = "ocpuser";
pub const PROXY_PASSWORD: &str = "ocpSecret9";

impl Tinyproxy {
    /// Starts tinyproxy, with BasicAuth `PROXY_USER`/`PROXY_PASSWORD` when `auth` is set.
    /// Fails with a clear message when tinyproxy is not installed.
    pub async fn start(auth: bool) -> Self {
        Self::start_allowing(auth, "127.0.0.1").await
    }

    /// Like `start`, but tinyproxy serves only clients from `allow` (others get 403).
    pub async fn start_allowing(auth: bool, allow: &str) -> Self {
        let binary = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect(
                "tinyproxy not found: apt-get install tinyproxy (make test installs it as root)",
            );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = closed_port();
        let log = dir.path().join("tinyproxy.log");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 600\nLogFile \"{}\"\nLogLevel Connect\n\
             MaxClients 100\nAllow {allow}\nDisableViaHeader Yes\n",
            log.display()
        );
        if auth {
            conf.push_str(&format!("BasicAuth {PROXY_USER} {PROXY_PASSWORD}\n"));
        }
        let conf_path = dir.path().join("tinyproxy.conf");
        std::fs::write(&conf_path, conf).expect("config written");
        let child = Command::new(binary)
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy starts");
        let mut proxy = Self { port, child, dir };
        let addr = format!("127.0.0.1:{port}");
        eventually(Duration::from_secs(10), "tinyproxy to listen", || async {
            tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ())
        })
        .await;
        assert!(
            proxy.child.try_wait().unwrap().is_none(),
            "tinyproxy exited"
        );
        proxy
    }

    /// `http://[user:password@]127.0.0.1:port`
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((u, p)) => format!("http://{u}:{p}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// The CONNECT request lines tinyproxy logged, e.g. `CONNECT localhost:4443 HTTP/1.1`.
    pub fn connects(&self) -> Vec<String> {
        let log =
            std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                l.split_once("): CONNECT ")
                    .map(|(_, rest)| format!("CONNECT {rest}"))
            })
            .collect()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
