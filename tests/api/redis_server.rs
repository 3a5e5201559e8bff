//! A real Redis server (Debian's `redis-server`) on a free loopback port, for the shared-tier
//! tests: plain, or TLS-only (`rediss://`, a certificate from a CA made at test time) with a
//! password. Killed when dropped; can be stopped and started again on the same port. A server
//! that exits on its own fails the test with the end of its log.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::closed_port;
use crate::tls_upstream::TestCa;

/// A TLS-only server: the CA's PEM file and text (for REDIS_CA_FILE and the test's own
/// client) and the password it requires.
struct Tls {
    ca_file: std::path::PathBuf,
    ca_pem: Vec<u8>,
    password: String,
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Its log file, and in cluster mode its state file (nodes.conf).
    dir: tempfile::TempDir,
    /// Cluster mode: the cluster bus port, given explicitly. By default Redis uses port +
    /// 10000 and exits when that is above 65535, which a free port above 55535 would be.
    cluster_port: Option<u16>,
    tls: Option<Tls>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(None, None).await
    }

    /// TLS only (`--port 0`), with a certificate for 127.0.0.1 and localhost signed by `ca`,
    /// requiring `password`; clients are not asked for certificates.
    pub async fn start_tls(ca: &TestCa, password: &str) -> Self {
        Self::start_with(None, Some((ca, password))).await
    }

    async fn start_with(cluster_port: Option<u16>, tls: Option<(&TestCa, &str)>) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let tls = tls.map(|(ca, password)| {
            let (chain, key) = ca.server_pem();
            std::fs::write(dir.path().join("server.pem"), chain).expect("certificate written");
            std::fs::write(dir.path().join("server.key"), key).expect("key written");
            Tls {
                ca_file: ca.pem_path(),
                ca_pem: std::fs::read(ca.pem_path()).expect("CA PEM"),
                password: password.to_owned(),
            }
        });
        let mut server = Self {
            port: closed_port(),
            child: None,
            dir,
            cluster_port,
            tls,
        };
        server.restart().await;
        server
    }

    async fn start_cluster_node(tls: Option<(&TestCa, &str)>) -> Self {
        Self::start_with(Some(closed_port()), tls).await
    }

    /// The URL the proxy is given: `rediss://` with the password for a TLS server.
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{}/0", self.port),
            Some(tls) => format!("rediss://:{}@127.0.0.1:{}/0", tls.password, self.port),
        }
    }

    /// REDIS_URL, and for a TLS server REDIS_CA_FILE naming the CA that signed it.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![("REDIS_URL", self.url())];
        if let Some(tls) = &self.tls {
            vars.push(("REDIS_CA_FILE", tls.ca_file.display().to_string()));
        }
        vars
    }

    /// A client for the test's own checks, trusting the server's CA.
    fn client(&self) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(self.url()),
            Some(tls) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(tls.ca_pem.clone()),
                },
            ),
        }
        .expect("a redis client")
    }

    /// Starts (again) on the same port, with nothing persisted, once it answers PING.
    pub async fn restart(&mut self) {
        let binary = ["/usr/bin/redis-server", "/usr/sbin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("redis-server is installed (make test installs it)");
        let mut cmd = Command::new(binary);
        let port = self.port.to_string();
        match &self.tls {
            None => cmd.args(["--port", &port]),
            Some(tls) => cmd
                .args(["--port", "0", "--tls-port", &port])
                .arg("--tls-cert-file")
                .arg(self.dir.path().join("server.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.path().join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_file)
                .args(["--tls-auth-clients", "no", "--requirepass", &tls.password]),
        };
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"));
        if let Some(bus) = self.cluster_port {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--cluster-port", &bus.to_string()]);
            if self.tls.is_some() {
                cmd.args(["--tls-cluster", "yes"]);
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let client = self.client();
        self.until("redis-server to answer PING", || {
            let mut conn = client.get_connection().ok()?;
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
        self.client()
            .get_connection()
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
        Self::start_with(None).await
    }

    /// Every node TLS-only, the cluster bus too (`--tls-cluster yes`), with `password`.
    pub async fn start_tls(ca: &TestCa, password: &str) -> Self {
        Self::start_with(Some((ca, password))).await
    }

    async fn start_with(tls: Option<(&TestCa, &str)>) -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_cluster_node(tls).await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut cli = Command::new("redis-cli");
        if let Some((ca, password)) = tls {
            cli.arg("--tls").arg("--cacert").arg(ca.pem_path()).args([
                "-a",
                password,
                "--no-auth-warning",
            ]);
        }
        let out = cli
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
            let client = node.client();
            node.until("cluster_state:ok", || {
                let mut conn = client.get_connection().ok()?;
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).ok()?;
                info.contains("cluster_state:ok").then_some(())
            })
            .await;
        }
        Self { nodes }
    }

    /// REDIS_URL (the seed list), REDIS_CLUSTER=true, and REDIS_CA_FILE for TLS.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let seeds = self
            .nodes
            .iter()
            .map(|n| n.url().trim_end_matches("/0").to_owned())
            .collect::<Vec<_>>()
            .join(",");
        let mut vars = self.nodes[0].vars();
        vars[0].1 = seeds;
        vars.push(("REDIS_CLUSTER", "true".into()));
        vars
    }
}
