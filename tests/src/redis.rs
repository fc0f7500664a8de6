//! A real Redis (Debian's `redis-server`) per test, on a free loopback
//! port, with a password, no persistence, in its own process group; it can
//! be killed and started again on the same port.

use crate::free_port;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "s3cret-redis-pw";

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Served over TLS only, with a certificate from this CA.
    tls: Option<crate::TestCa>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_in(tempfile::tempdir().unwrap(), None)
    }

    /// A Redis that speaks only TLS (`rediss://`), its certificate for
    /// 127.0.0.1 and localhost issued by a private CA ([`Redis::ca_file`]).
    pub fn start_tls() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::TestCa::new(&dir.path().join("pki"));
        Redis::start_in(dir, Some(ca))
    }

    fn start_in(dir: tempfile::TempDir, tls: Option<crate::TestCa>) -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir,
            tls,
        };
        r.spawn();
        r
    }

    /// The URL an MTA policy names (the password is given apart).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The CA file a client must trust to reach a TLS Redis.
    pub fn ca_file(&self) -> &std::path::Path {
        &self.tls.as_ref().expect("a TLS Redis").ca
    }

    /// `node` for `configure_redis_throttles`, as Lua.
    pub fn lua_node(&self) -> String {
        format!("'{}'", self.url())
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(ca) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&ca.cert)
                .arg("--tls-key-file")
                .arg(&ca.key)
                .arg("--tls-ca-cert-file")
                .arg(&ca.ca)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args([
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("redis-server is installed (scripts/install-deps)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis-cli` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        if TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            return String::new();
        }
        let mut cmd = Command::new("redis-cli");
        if let Some(ca) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(&ca.ca);
        }
        let o = cmd
            .args([
                "-p",
                &self.port.to_string(),
                "--no-auth-warning",
                "-a",
                PASSWORD,
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// SIGKILL: no goodbye to clients, state gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tests/clients/session_sink.py`: an SMTP sink whose log says when each
/// session opened and closed and when each message arrived.
pub struct SessionSink {
    child: Child,
    pub port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// One line of the sink's log.
#[derive(Debug, Clone)]
pub struct SinkEvent {
    pub t: f64,
    pub ev: String,
    pub sid: u64,
    pub seq: Option<u64>,
}

impl SessionSink {
    /// A sink holding each message's reply `delay_ms`.
    pub fn start(delay_ms: u64) -> SessionSink {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sessions.jsonl");
        let port = free_port();
        let child = Command::new("python3")
            .arg(crate::workspace_root().join("tests/clients/session_sink.py"))
            .arg(port.to_string())
            .arg(&log)
            .args(["--delay-ms", &delay_ms.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log.exists() || TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "session_sink did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let sink = SessionSink {
            child,
            port,
            log,
            _dir: dir,
        };
        // the readiness probe's session, left out of what tests count
        while !sink.events().iter().any(|e| e.ev == "close") {
            assert!(Instant::now() < deadline, "probe session not logged");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::write(&sink.log, "").unwrap();
        sink
    }

    pub fn events(&self) -> Vec<SinkEvent> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| SinkEvent {
                t: v["t"].as_f64().unwrap(),
                ev: v["ev"].as_str().unwrap().to_string(),
                sid: v["sid"].as_u64().unwrap(),
                seq: v["seq"].as_u64(),
            })
            .collect()
    }

    /// Arrival times of the messages received.
    pub fn arrivals(&self) -> Vec<(f64, Option<u64>)> {
        self.events()
            .into_iter()
            .filter(|e| e.ev == "msg")
            .map(|e| (e.t, e.seq))
            .collect()
    }

    /// The most sessions open at once, from the open/close events in order.
    pub fn max_concurrent(&self) -> usize {
        let (mut open, mut most) = (0i64, 0i64);
        for e in self.events() {
            match e.ev.as_str() {
                "open" => open += 1,
                "close" => open -= 1,
                _ => {}
            }
            most = most.max(open);
        }
        most as usize
    }
}

impl Drop for SessionSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real three-primary Redis Cluster (`cluster-enabled`, slots assigned by
/// `redis-cli --cluster create`), with one password for clients and nodes.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = vec![];
        for p in &ports {
            // the cluster bus is port + 10000 unless named: a port no other
            // test's free_port() knows of, which an MTA started meanwhile
            // could be given (and then find Redis answering its probe)
            let bus = free_port();
            let d = dir.path().join(p.to_string());
            std::fs::create_dir(&d).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--requirepass", PASSWORD, "--masterauth", PASSWORD])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&d)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("redis-server is installed (scripts/install-deps)");
            nodes.push(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", *p)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let o = Command::new("redis-cli")
            .args(["--no-auth-warning", "-a", PASSWORD, "--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        let cluster = RedisCluster {
            nodes,
            ports,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.info().contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    fn info(&self) -> String {
        let o = Command::new("redis-cli")
            .args([
                "-p",
                &self.ports[0].to_string(),
                "--no-auth-warning",
                "-a",
                PASSWORD,
            ])
            .args(["cluster", "info"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `node` for `configure_redis_throttles`, as Lua: the seed URLs.
    pub fn lua_node(&self) -> String {
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("'redis://127.0.0.1:{p}/'"))
            .collect();
        format!("{{ {} }}", urls.join(", "))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
