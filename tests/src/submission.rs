//! A real Postfix submission service with SASL: its own instance (config,
//! queue and data directories in a temporary directory, `postfix -c`),
//! smtpd on a loopback port offering STARTTLS and, only after it, AUTH
//! PLAIN/LOGIN checked by Cyrus SASL against a sasldb of the test's users.
//! Authenticated mail is accepted and discarded; the log (`maillog_file`)
//! says who authenticated and what became of each message.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The realm the users belong to: they log in as `user@submission.test`.
pub const REALM: &str = "submission.test";

/// A running Postfix instance, stopped when dropped.
pub struct Submission {
    /// smtpd's port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) {
    let o = cmd.output().expect("command runs");
    assert!(o.status.success(), "{cmd:?}: {}", crate::text(&o));
}

impl Submission {
    /// Start one with `users` (name, password) and the TLS certificate and
    /// key it presents.
    pub fn start(users: &[(&str, &str)], cert: &Path, key: &Path) -> Submission {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // the postfix user reads its config and sasldb below here
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        for d in ["conf/sasl", "queue", "data"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        run(Command::new("chown").arg("postfix").arg(root.join("data")));
        let port = crate::free_port();
        let r = root.display();
        std::fs::write(
            root.join("conf/main.cf"),
            format!(
                "compatibility_level = 3.6\n\
                 queue_directory = {r}/queue\n\
                 data_directory = {r}/data\n\
                 mail_owner = postfix\n\
                 myhostname = {REALM}\n\
                 mydestination =\n\
                 inet_interfaces = 127.0.0.1\n\
                 inet_protocols = ipv4\n\
                 maillog_file = {r}/postfix.log\n\
                 maillog_file_prefixes = {r}\n\
                 smtpd_tls_cert_file = {}\n\
                 smtpd_tls_key_file = {}\n\
                 smtpd_tls_security_level = may\n\
                 smtpd_tls_auth_only = yes\n\
                 smtpd_sasl_auth_enable = yes\n\
                 smtpd_sasl_type = cyrus\n\
                 smtpd_sasl_path = smtpd\n\
                 smtpd_relay_restrictions = permit_sasl_authenticated, reject\n\
                 smtpd_recipient_restrictions = permit_sasl_authenticated, reject\n\
                 default_transport = discard:delivered\n\
                 alias_maps =\nalias_database =\nbiff = no\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        std::fs::write(root.join("conf/master.cf"), master_cf(port)).unwrap();
        // Debian's Postfix reads Cyrus' smtpd.conf from <config>/sasl
        std::fs::write(
            root.join("conf/sasl/smtpd.conf"),
            format!(
                "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n\
                 sasldb_path: {r}/conf/sasl/sasldb2\n"
            ),
        )
        .unwrap();
        let sasldb = root.join("conf/sasl/sasldb2");
        for (user, password) in users {
            use std::io::Write;
            let mut child = Command::new("saslpasswd2")
                .args(["-p", "-c", "-u", REALM, "-f"])
                .arg(&sasldb)
                .arg(user)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("saslpasswd2 is installed (apt-get install sasl2-bin)");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(password.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success(), "saslpasswd2 {user}");
        }
        run(Command::new("chown").arg("postfix").arg(&sasldb));
        run(Command::new("postfix")
            .arg("-c")
            .arg(root.join("conf"))
            .arg("start"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "postfix smtpd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Submission { port, dir }
    }

    /// The instance's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postfix.log")
    }

    /// Wait until the log has a line containing every one of `parts`.
    pub fn wait_for_log(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.dir.path().join("conf"))
            .arg("stop")
            .output();
    }
}

/// smtpd on `port` and the services a queued message passes through, none
/// chrooted (the instance's files are outside any chroot).
fn master_cf(port: u16) -> String {
    let services = [
        "pickup unix n - n 60 1 pickup",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "smtp unix - - n - - smtp",
        "showq unix n - n - - showq",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "discard unix - - n - - discard",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
        "tlsmgr unix - - n 1000? 1 tlsmgr",
    ];
    format!("{port} inet n - n - - smtpd\n{}\n", services.join("\n"))
}
