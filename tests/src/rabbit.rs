//! A real RabbitMQ broker (Debian's `rabbitmq-server`) per test: its own
//! node name, ports and data directory, a user with a password, and a
//! lapin consumer that reads back what the MTA published.

use crate::free_port;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "sluice";
pub const PASSWORD: &str = "s3cret-broker-pw";

pub struct Rabbit {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

/// One message read back from a queue.
#[derive(Debug)]
pub struct Received {
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
}

impl Rabbit {
    pub fn start() -> Rabbit {
        Rabbit::start_on(free_port())
    }

    /// Start a broker on `port` (a test may pick the port before the broker
    /// exists, to see what the MTA does while it is down).
    pub fn start_on(port: u16) -> Rabbit {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("mnesia")).unwrap();
        std::fs::create_dir_all(d.join("log")).unwrap();
        std::fs::create_dir_all(d.join("config")).unwrap();
        std::fs::write(d.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(
            d.join("rabbitmq.conf"),
            format!("default_user = {USER}\ndefault_pass = {PASSWORD}\nloopback_users = none\n"),
        )
        .unwrap();
        // the server script itself, not Debian's wrapper that switches to
        // the rabbitmq user: the node then lives in our process group
        let child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", format!("sluice{port}@localhost"))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_GENERATED_CONFIG_DIR", d.join("config"))
            .env("RABBITMQ_SCHEMA_DIR", d.join("config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server is installed (apt-get install rabbitmq-server)");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let rabbit = Rabbit {
            child,
            port,
            _dir: dir,
            rt,
        };
        rabbit.wait_ready();
        rabbit
    }

    pub fn url(&self) -> String {
        format!("amqp://{USER}:{PASSWORD}@127.0.0.1:{}/%2f", self.port)
    }

    fn wait_ready(&self) {
        // Erlang boots slowly on a loaded 2-core machine (60 s was once too few)
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.connect().is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "rabbitmq-server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn connect(&self) -> lapin::Result<Connection> {
        self.rt.block_on(Connection::connect(
            &self.url(),
            ConnectionProperties::default(),
        ))
    }

    /// Declare a durable queue (bound to the default exchange by its name).
    pub fn declare_queue(&self, name: &str, arguments: &[(&str, AMQPValue)]) {
        let conn = self.connect().unwrap();
        self.rt.block_on(async {
            let ch = conn.create_channel().await.unwrap();
            let mut args = FieldTable::default();
            for (k, v) in arguments {
                args.insert((*k).into(), v.clone());
            }
            ch.queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .unwrap();
            let _ = conn.close(200, "done".into()).await;
        });
    }

    /// Read messages off `queue` until `want` have arrived or `timeout`
    /// passes; then read a little longer to catch any extra (duplicates).
    pub fn take(&self, queue: &str, want: usize, timeout: Duration) -> Vec<Received> {
        let conn = self.connect().unwrap();
        self.rt.block_on(async {
            let ch = conn.create_channel().await.unwrap();
            let mut out = vec![];
            let deadline = Instant::now() + timeout;
            let mut extra_until: Option<Instant> = None;
            loop {
                match ch
                    .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                    .await
                    .unwrap()
                {
                    Some(msg) => out.push(Received {
                        routing_key: msg.delivery.routing_key.to_string(),
                        payload: msg.delivery.data.clone(),
                        content_type: msg
                            .delivery
                            .properties
                            .content_type()
                            .as_ref()
                            .map(|s| s.to_string()),
                    }),
                    None => {
                        let now = Instant::now();
                        if out.len() >= want {
                            let until =
                                *extra_until.get_or_insert(now + Duration::from_millis(500));
                            if now >= until {
                                break;
                            }
                        } else if now >= deadline {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            let _ = conn.close(200, "done".into()).await;
            out
        })
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        // the whole node: the script, beam and its helpers
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
