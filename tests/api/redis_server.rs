//! A real Redis server (Debian's `redis-server`) on a free loopback port, for the shared-tier
//! tests. Killed when dropped; can be stopped and started again on the same port.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{closed_port, eventually};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Cluster mode: the node's state file lives here.
    cluster_dir: Option<tempfile::TempDir>,
}

impl RedisServer {
    pub async fn start() -> Self {
        let mut server = Self {
            port: closed_port(),
            child: None,
            cluster_dir: None,
        };
        server.restart().await;
        server
    }

    async fn start_cluster_node() -> Self {
        let mut server = Self {
            port: closed_port(),
            child: None,
            cluster_dir: Some(tempfile::tempdir().expect("a temp dir")),
        };
        server.restart().await;
        server
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
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
        if let Some(dir) = &self.cluster_dir {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .arg("--dir")
                .arg(dir.path());
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let url = self.url();
        eventually(
            Duration::from_secs(10),
            "redis-server to answer PING",
            || {
                let url = url.clone();
                async move {
                    let mut conn = redis::Client::open(url).ok()?.get_connection().ok()?;
                    redis::cmd("PING").query::<String>(&mut conn).ok()
                }
            },
        )
        .await;
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
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes };
        for node in &cluster.nodes {
            let url = node.url();
            eventually(Duration::from_secs(20), "cluster_state:ok", || {
                let url = url.clone();
                async move {
                    let mut conn = redis::Client::open(url).ok()?.get_connection().ok()?;
                    let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).ok()?;
                    info.contains("cluster_state:ok").then_some(())
                }
            })
            .await;
        }
        cluster
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
