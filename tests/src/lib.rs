//! Harness for end-to-end tests: start the real `sluice-mta` binary on a
//! free port in a temporary directory, drive it with real clients (swaks,
//! Python's smtplib, openssl), and read what a user would see: SMTP replies,
//! log records and maildir files.

pub mod cgroup;
pub mod chart;
pub mod dkim;
pub mod fleet;
pub mod haproxy;
pub mod jobs;
pub mod kube;
pub mod netns;
pub mod pod;
pub mod projector;
pub mod rabbit;
pub mod redis;
pub mod reply_sink;
pub mod submission;
pub mod tmpfs;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (for examples/ and tests/clients/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Path of a built binary of this workspace (built by the test command
/// before the tests run; `SLUICE_BIN_DIR` overrides the directory).
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SLUICE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/<test> -> target/<profile>
            exe.parent().unwrap().parent().unwrap().to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// `sluice --endpoint http://127.0.0.1:<admin> <args>`, the operator's
/// command line: (success, stdout, stderr).
pub fn sluice_cli(admin: u16, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(binary("sluice"))
        .args(["--endpoint", &format!("http://127.0.0.1:{admin}")])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The `init` line that starts the admin HTTP listener on `admin`.
pub fn admin_listener(admin: u16) -> String {
    format!("kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `sluice-mta` with its own data directory.
pub struct Mta {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub policy_path: PathBuf,
    /// Extra command-line arguments for `sluice-mta`.
    pub args: Vec<String>,
    /// Extra environment variables for `sluice-mta` (`SSL_CERT_FILE`, ...).
    pub env: Vec<(String, String)>,
    /// A cgroup's `cgroup.procs`: the MTA runs in that cgroup from its
    /// first instruction.
    pub cgroup: Option<PathBuf>,
}

/// The init block most tests share; `{DIR}` and `{PORT}` are substituted.
pub const INIT: &str = r#"
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{DIR}/spool' }
  kumo.define_spool { name = 'meta', path = '{DIR}/spool' }
  kumo.configure_local_logs { log_dir = '{DIR}/logs' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:{PORT}' {LISTENER} }
  {INIT_EXTRA}
end)
"#;

/// A policy: the shared init block (with extra listener keys) plus `rest`.
pub fn policy(listener_extra: &str, rest: &str) -> String {
    policy_with_init("", listener_extra, rest)
}

/// As `policy`, with extra statements inside `init`.
pub fn policy_with_init(init_extra: &str, listener_extra: &str, rest: &str) -> String {
    let extra = if listener_extra.is_empty() {
        String::new()
    } else {
        format!(", {listener_extra}")
    };
    let init = INIT
        .replace("{LISTENER}", &extra)
        .replace("{INIT_EXTRA}", init_extra);
    format!("{init}\n{rest}")
}

/// A policy that delivers everything into `{DIR}/maildir` with the given queue keys.
pub fn maildir_policy(listener_extra: &str, queue_extra: &str) -> String {
    policy(
        listener_extra,
        &format!(
            "kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)\n  \
             return kumo.make_queue_config {{ protocol = {{ maildir_path = '{{DIR}}/maildir' }}, {queue_extra} }}\nend)\n"
        ),
    )
}

impl Mta {
    pub fn start(policy: &str) -> Mta {
        let mut mta = Mta::prepare(policy);
        mta.spawn();
        mta
    }

    /// The substituted policy text for this MTA's directory and port.
    pub fn render(&self, policy: &str) -> String {
        policy
            .replace("{DIR}", &self.dir.path().display().to_string())
            .replace("{PORT}", &self.port.to_string())
            .replace("{ROOT}", &workspace_root().display().to_string())
    }

    /// As `start`, without starting it: change `policy_path` or `args`,
    /// then `spawn`.
    pub fn prepare(policy: &str) -> Mta {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let policy_path = dir.path().join("policy.lua");
        let text = policy
            .replace("{DIR}", &dir.path().display().to_string())
            .replace("{PORT}", &port.to_string())
            .replace("{ROOT}", &workspace_root().display().to_string());
        std::fs::write(&policy_path, text).unwrap();
        Mta {
            child: None,
            dir,
            port,
            policy_path,
            args: vec![],
            env: vec![],
            cgroup: None,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("mta.log"))
            .unwrap();
        let mut command = match &self.cgroup {
            // the shell moves itself in, then becomes the MTA
            Some(procs) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("echo $$ > \"$SLUICE_CGROUP_PROCS\" && exec \"$0\" \"$@\"")
                    .arg(binary("sluice-mta"))
                    .env("SLUICE_CGROUP_PROCS", procs);
                c
            }
            None => Command::new(binary("sluice-mta")),
        };
        let child = command
            .arg("--policy")
            .arg(&self.policy_path)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            // each its own node, as pods are (xfer refuses a node's own mail)
            .env("SLUICE_NODE_ID", format!("mta-{}", self.port))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(probe) = TcpStream::connect(("127.0.0.1", self.port)) {
                // a full exchange, so the probe's session is over when we return
                let mut c = RawSmtp::from_stream(probe);
                // a 421 greeting (short of memory) also means it listens
                if c.reply().0 == 220 {
                    c.command("QUIT");
                    assert!(c.is_closed());
                }
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sluice-mta exited with {status}: {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "sluice-mta did not listen: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("mta.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send SIGTERM without waiting.
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }

    /// Wait up to `timeout` for the process to exit; how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        let child = self.child.as_mut()?;
        while start.elapsed() < timeout {
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// SIGTERM and wait for exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Every log record written so far, in file order.
    pub fn records(&self) -> Vec<Value> {
        log_records(&self.path("logs"))
    }

    pub fn records_of(&self, kind: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["type"] == kind)
            .collect()
    }

    /// The record of type `kind`, once exactly one is logged (panics when
    /// that does not happen within `timeout`).
    pub fn the_record(&self, kind: &str, timeout: Duration) -> Value {
        let what = format!("one {kind} record");
        let recs = self.wait_for_records(timeout, &what, |r| count(r, kind) == 1);
        recs.into_iter()
            .find(|r| r["type"] == kind)
            .expect("counted")
    }

    /// Poll the log until `cond` holds, or panic after `timeout`.
    pub fn wait_for_records(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        poll_records(timeout, what, || self.records(), cond, || self.stderr())
    }

    /// Files delivered into the maildir at `rel` (its `new/` directory).
    pub fn maildir_files(&self, rel: &str) -> Vec<PathBuf> {
        maildir_files(&self.path(rel))
    }
}

/// Polls `records` until `cond` holds; panics after `timeout` with the
/// record types seen and `stderr()`.
pub fn poll_records(
    timeout: Duration,
    what: &str,
    records: impl Fn() -> Vec<Value>,
    cond: impl Fn(&[Value]) -> bool,
    stderr: impl Fn() -> String,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let recs = records();
        if cond(&recs) {
            return recs;
        }
        if Instant::now() > deadline {
            let kinds: Vec<String> = recs.iter().map(|r| r["type"].to_string()).collect();
            // what each kind of outcome said, once per distinct reply
            let said: std::collections::BTreeSet<String> = recs
                .iter()
                .filter(|r| r["type"] != "Reception")
                .map(|r| format!("{} {}", r["type"], r["response"]))
                .collect();
            panic!(
                "timed out waiting for {what}; records: {kinds:?}\nreplies: {said:#?}\nstderr:\n{}",
                stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every log record in the segments under `dir`, in file order.
pub fn log_records(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => return vec![],
    };
    files.sort();
    let mut out = vec![];
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines() {
            // a line being written right now may be incomplete
            if let Ok(v) = serde_json::from_str(line) {
                out.push(v);
            }
        }
    }
    out
}

pub fn maildir_files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir.join("new")) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => vec![],
    }
}

impl Drop for Mta {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `(type, queue, num_attempts)` of each record, for asserting sequences.
pub fn sequence(records: &[Value]) -> Vec<(&str, &str, u64)> {
    records
        .iter()
        .map(|r| {
            (
                r["type"].as_str().unwrap(),
                r["queue"].as_str().unwrap(),
                r["num_attempts"].as_u64().unwrap(),
            )
        })
        .collect()
}

pub fn count(records: &[Value], kind: &str) -> usize {
    records.iter().filter(|r| r["type"] == kind).count()
}

/// Run swaks against the MTA.
pub fn swaks(port: u16, args: &[&str]) -> Output {
    Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}"), "--timeout", "30"])
        .args(args)
        .output()
        .expect("swaks is installed (apt-get install swaks)")
}

/// Run one of the Python clients in tests/clients with arguments.
pub fn python_client(script: &str, args: &[&str]) -> Output {
    Command::new("python3")
        .arg(workspace_root().join("tests/clients").join(script))
        .args(args)
        .output()
        .expect("python3 runs")
}

/// `sluice-mta --validate --policy <path>`.
pub fn validate_policy(path: &Path) -> Output {
    Command::new(binary("sluice-mta"))
        .arg("--validate")
        .arg("--policy")
        .arg(path)
        .output()
        .unwrap()
}

/// Write `policy` to `dir/policy.lua` and `--validate` it, which must
/// fail; what it printed on stderr.
pub fn validate_fails(dir: &Path, policy: &str) -> String {
    let path = dir.join("policy.lua");
    std::fs::write(&path, policy).unwrap();
    let o = validate_policy(&path);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    err
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A raw SMTP conversation over a plain socket, for malformed input.
pub struct RawSmtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawSmtp {
    pub fn connect(port: u16) -> RawSmtp {
        Self::from_stream(TcpStream::connect(("127.0.0.1", port)).unwrap())
    }

    pub fn from_stream(s: TcpStream) -> RawSmtp {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        RawSmtp {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Read one (possibly multi-line) reply: `(code, full text)`.
    pub fn reply(&mut self) -> (u16, String) {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap();
            assert!(n > 0, "connection closed; got so far: {all:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line[..3].parse().unwrap();
                return (code, all);
            }
        }
    }

    pub fn command(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// MAIL, RCPT and DATA (each must be accepted), then `body` and the final
    /// dot; returns the reply to the dot.
    pub fn transaction(&mut self, from: &str, to: &str, body: &str) -> (u16, String) {
        assert_eq!(self.command(&format!("MAIL FROM:<{from}>")).0, 250);
        assert_eq!(self.command(&format!("RCPT TO:<{to}>")).0, 250);
        assert_eq!(self.command("DATA").0, 354);
        self.command(&format!("{body}\r\n."))
    }

    /// One message in a session of its own (greeting, EHLO, the
    /// transaction, QUIT); asserts the 250 and returns its text.
    pub fn send_message(port: u16, to: &str, body: &str) -> String {
        let mut c = RawSmtp::connect(port);
        c.reply();
        c.command("EHLO test");
        let (code, reply) = c.transaction("sender@example.com", to, body);
        assert_eq!(code, 250, "{reply}");
        c.command("QUIT");
        reply
    }

    /// True when the server has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }
}

/// Make a self-signed certificate for `localhost` with openssl; returns (cert, key).
pub fn make_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(o.status.success(), "{}", text(&o));
    (cert, key)
}

/// A private certificate authority and one server certificate it issued
/// for `localhost` and 127.0.0.1: what a client that verifies (rustls) needs,
/// which a self-signed CA:TRUE certificate is not.
pub struct TestCa {
    /// The CA's certificate (PEM), to trust.
    pub ca: PathBuf,
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// The server's key (PEM).
    pub key: PathBuf,
}

impl TestCa {
    /// Make them with openssl in `dir` (created).
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let run = |args: &[&str]| {
            let o = Command::new("openssl")
                .current_dir(dir)
                .args(args)
                .output()
                .expect("openssl is installed");
            assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Sluice test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ]);
        TestCa {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time such as
/// `2026-11-22T00:01:14.952234Z` (what log records carry in `event_time`).
pub fn rfc3339_secs(t: &str) -> f64 {
    let (date, time) = t.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let h: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // days from the civil date (Howard Hinnant's algorithm)
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h[0] * 3600 + h[1] * 60 + h[2];
    secs as f64 + format!("0.{frac}").parse::<f64>().unwrap()
}

/// Postfix's smtp-sink on a free port: a real SMTP server that accepts (or,
/// with options, rejects) everything and dumps each message to a file.
pub struct Sink {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// Sessions made by the readiness probe, not by the code under test.
    baseline: usize,
}

impl Sink {
    /// `extra` are smtp-sink options such as `["-r", "RCPT"]` (soft-reject RCPT).
    pub fn start(extra: &[&str]) -> Sink {
        Sink::start_at(free_port(), extra)
    }

    /// A sink on `port` (e.g. one that replaces a stopped sink).
    pub fn start_at(port: u16, extra: &[&str]) -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("mail");
        std::fs::create_dir(&dump).unwrap();
        // smtp-sink drops to `nobody` before writing
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dump, std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = std::fs::File::create(dir.path().join("counters")).unwrap();
        let child = Command::new("/usr/sbin/smtp-sink")
            .args(["-c", "-u", "nobody", "-d"])
            .arg(format!("{}/%s.", dump.display()))
            .args(extra)
            .arg(format!("127.0.0.1:{port}"))
            .arg("256")
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink is installed (apt-get install postfix)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "smtp-sink did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut sink = Sink {
            child,
            port,
            dir,
            baseline: 0,
        };
        // wait for the probe's session to be counted, then leave it out
        while sink.sessions() == 0 {
            assert!(
                Instant::now() < deadline,
                "smtp-sink did not count the probe session"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sink.baseline = sink.sessions();
        sink
    }

    /// Messages received so far, as text.
    pub fn messages(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("mail"))
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
            .collect()
    }

    /// How many copies of each `X-Test-Seq` the sink received.
    pub fn seqs(&self) -> std::collections::HashMap<u64, usize> {
        seq_counts(self.messages())
    }

    /// Sessions that have ended, from smtp-sink's own counters.
    pub fn sessions(&self) -> usize {
        let text = std::fs::read_to_string(self.dir.path().join("counters")).unwrap_or_default();
        let total: usize = text
            .rsplit("sess=")
            .next()
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        total - self.baseline.min(total)
    }

    /// Established connections to the sink right now, counted by the kernel.
    pub fn open_connections(&self) -> usize {
        let o = Command::new("ss")
            .args([
                "-Htn",
                "state",
                "established",
                &format!("( sport = :{} )", self.port),
            ])
            .output()
            .expect("ss is installed (iproute2)");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }
}

impl Sink {
    /// Stop the sink; what it received stays readable until it is dropped.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A policy that relays everything to `127.0.0.1:{sink}` via mx_list, with
/// extra egress path keys (`prohibited_hosts` is emptied, as KumoMTA's own
/// tests do, so that a loopback sink may be used).
pub fn relay_policy(sink_port: u16, queue_extra: &str, path_extra: &str) -> String {
    policy(
        "",
        &format!(
            r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink_port}' }} }} }},
    {queue_extra}
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, {path_extra} }}
end)
"#
        ),
    )
}

/// dnsmasq answering for `*.test` on a loopback port, with the given
/// records (dnsmasq options such as `--mx-host=...`); other names under
/// `.test` are NXDOMAIN.
pub struct Dnsmasq {
    child: Child,
    pub port: u16,
}

impl Dnsmasq {
    pub fn start(records: &[&str]) -> Dnsmasq {
        let port = free_port();
        let child = Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
            ])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--local=/test/",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq is installed (apt-get install dnsmasq-base)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Dnsmasq { child, port }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the Python client injecting `total` messages from 20 concurrent
/// clients (20 per connection) into `mta`; results go to `client.jsonl` in
/// the MTA's directory (a file, not a pipe: a pipe read only at the end
/// would fill up and stall the clients).
pub fn start_injection(mta: &Mta, total: usize) -> Child {
    smtp_send(mta.port, total, &[], &mta.path("client.jsonl"))
}

/// The client's outcome for every message of `start_injection`.
pub fn injection_results(mta: &Mta) -> Vec<Value> {
    read_jsonl(&mta.path("client.jsonl"))
}

/// tests/clients/smtp_send.py sending `total` 2 KB messages to `port`
/// from 20 concurrent clients (20 per connection), with `extra` options;
/// one JSON line per message into `out`.
pub fn smtp_send(port: u16, total: usize, extra: &[&str], out: &Path) -> Child {
    Command::new("python3")
        .arg(workspace_root().join("tests/clients/smtp_send.py"))
        .args(["--port", &port.to_string(), "--count", &total.to_string()])
        .args([
            "--concurrency",
            "20",
            "--per-connection",
            "20",
            "--size",
            "2000",
        ])
        .args(extra)
        .stdout(std::fs::File::create(out).unwrap())
        .spawn()
        .unwrap()
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// How many copies of each `X-Test-Seq` are in the maildir at `rel`.
pub fn delivered_seqs(mta: &Mta, rel: &str) -> std::collections::HashMap<u64, usize> {
    seq_counts(
        mta.maildir_files(rel)
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default()),
    )
}

/// How many copies of each `X-Test-Seq` (smtp_send.py's header) are among
/// `messages`.
pub fn seq_counts(
    messages: impl IntoIterator<Item = String>,
) -> std::collections::HashMap<u64, usize> {
    let mut seqs = std::collections::HashMap::new();
    for m in messages {
        if let Some(seq) = m
            .lines()
            .find_map(|l| l.strip_prefix("X-Test-Seq: "))
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            *seqs.entry(seq).or_default() += 1;
        }
    }
    seqs
}

/// An HTTP request with Python's urllib to 127.0.0.1:`port`: a GET, or a
/// POST of the JSON `post`. Returns `{"status", "body"}`; for `/metrics`
/// also `"samples"`, as Prometheus' own text-format parser read them.
pub fn http_request(port: u16, path: &str, post: Option<&str>) -> Value {
    http_request_as(port, path, post, None)
}

/// [`http_request`] with HTTP Basic credentials (`user:password`).
pub fn http_request_as(port: u16, path: &str, post: Option<&str>, user: Option<&str>) -> Value {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut args = vec![url.as_str()];
    if let Some(user) = user {
        args.extend(["--user", user]);
    }
    if path == "/metrics" {
        args.push("--metrics");
    }
    if let Some(body) = post {
        args.extend(["--post", body]);
    }
    let o = python_client("http_get.py", &args);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The JSON body of an HTTP response from [`http_request`].
pub fn http_json(port: u16, path: &str, post: Option<&str>) -> Value {
    http_json_as(port, path, post, None)
}

/// [`http_json`] with HTTP Basic credentials (`user:password`).
pub fn http_json_as(port: u16, path: &str, post: Option<&str>, user: Option<&str>) -> Value {
    let r = http_request_as(port, path, post, user);
    serde_json::from_str(r["body"].as_str().unwrap()).unwrap_or_else(|e| panic!("{path}: {e}: {r}"))
}
