//! A real HAProxy in front of an MTA, speaking the PROXY protocol to it:
//! one frontend sending v1 headers (`send-proxy`), one sending v2
//! (`send-proxy-v2`). HAProxy reaches the MTA from [`Haproxy::SOURCE`].

use crate::free_port;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Haproxy {
    child: Child,
    /// Frontends that forward to the backend with a v1 / a v2 header.
    pub v1_port: u16,
    pub v2_port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// The address HAProxy connects to the backend from.
    pub const SOURCE: &str = "127.0.0.9";

    pub fn start(backend: u16) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let (v1_port, v2_port) = (free_port(), free_port());
        let config = format!(
            "global\n  maxconn 256\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend v1\n  bind 127.0.0.1:{v1_port}\n  default_backend mta_v1\n\
             frontend v2\n  bind 127.0.0.1:{v2_port}\n  default_backend mta_v2\n\
             backend mta_v1\n  server mta 127.0.0.1:{backend} send-proxy source {source}\n\
             backend mta_v2\n  server mta 127.0.0.1:{backend} send-proxy-v2 source {source}\n",
            source = Self::SOURCE,
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is installed (scripts/install-deps)");
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [v1_port, v2_port] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "haproxy did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Haproxy {
            child,
            v1_port,
            v2_port,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
