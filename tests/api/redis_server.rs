//! A real Redis server (Debian's `redis-server`) on a free loopback port, for the shared-tier
//! tests. Killed when dropped; can be stopped and started again on the same port. A server
//! that exits on its own fails the test with the end of its log.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::closed_port;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Its log file, and in cluster mode its state file (nodes.conf).
    dir: tempfile::TempDir,
    /// Cluster mode: the cluster bus port, given explicitly. By default Redis uses port +
    /// 10000 and exits when that is above 65535, which a free port above 55535 would be.
    cluster_port: Option<u16>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    async fn start_with(cluster_port: Option<u16>) -> Self {
        let mut server = Self {
            port: closed_port(),
            child: None,
            dir: tempfile::tempdir().expect("a temp dir"),
            cluster_port,
        };
        server.restart().await;
        server
    }

    async fn start_cluster_node() -> Self {
        Self::start_with(Some(closed_port())).await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts (again) on the same port, with nothing persisted, once it answers PING.
    pub async fn restart(&mut self) {
        let binary = ["/usr/bin/redis-server", "/usr/sbin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("redis-server is installed (make test installs it)");
        let mut cmd = Command::new(binary);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"));
        if let Some(bus) = self.cluster_port {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--cluster-port", &bus.to_string()]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let url = self.url();
        self.until("redis-server to answer PING", || {
            let mut conn = redis::Client::open(url.as_str())
                .ok()?
                .get_connection()
                .ok()?;
            redis::cmd("PING").query::<String>(&mut conn).ok().map(drop)
        })
        .await;
    }

    /// Polls `check` every 20 ms until it returns `Some`; fails after 20 s, or at once with
    /// the end of the server's log if the server has exited.
    pub async fn until(&mut self, what: &str, mut check: impl FnMut() -> Option<()>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            self.assert_running(what);
            if check().is_some() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what} (redis-server on port {})",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Panics, with the end of its log, if the server has exited.
    pub fn assert_running(&mut self, what: &str) {
        let Some(child) = self.child.as_mut() else {
            panic!("redis-server on port {} is stopped ({what})", self.port);
        };
        if let Ok(Some(status)) = child.try_wait() {
            let log =
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "redis-server on port {} exited ({status}) while waiting for {what}; its log ends:\n{}",
                self.port,
                tail.join("\n")
            );
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A synchronous connection for the test's own checks and plantings.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("the test reaches redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of three primaries on loopback (no replicas), made with `redis-cli --cluster
/// create`; ready once every node reports `cluster_state:ok`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_cluster_node().await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs (Debian package redis-tools)");
        for node in &mut nodes {
            node.assert_running("redis-cli --cluster create");
        }
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for node in &mut nodes {
            let url = node.url();
            node.until("cluster_state:ok", || {
                let mut conn = redis::Client::open(url.as_str())
                    .ok()?
                    .get_connection()
                    .ok()?;
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).ok()?;
                info.contains("cluster_state:ok").then_some(())
            })
            .await;
        }
        Self { nodes }
    }

    /// The seed list for REDIS_URL (with REDIS_CLUSTER=true).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}
