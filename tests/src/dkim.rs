//! DKIM keys made by openssl, their public keys served as TXT records by a
//! real dnsmasq, and two verifiers that share no code with Sluice's signer:
//! OpenDKIM's (`opendkim-testmsg`) and dkimpy's.
//!
//! Both verifiers use the system resolver, so each runs in a private mount
//! namespace whose /etc/resolv.conf names this test's dnsmasq (listening on
//! port 53 of its own loopback address).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A DKIM key pair on disk and its DNS record.
pub struct DkimKey {
    /// The private key, PEM.
    pub private: PathBuf,
    /// The `v=DKIM1; k=...; p=...` record.
    pub record: String,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl DkimKey {
    /// A new RSA key of `bits` (PKCS#1 PEM, as `opendkim-genkey` writes).
    pub fn rsa(dir: &Path, name: &str, bits: u32) -> DkimKey {
        let private = dir.join(format!("{name}.pem"));
        let p = private.to_str().unwrap();
        openssl(&["genrsa", "-traditional", "-out", p, &bits.to_string()]);
        let spki = openssl(&["rsa", "-in", p, "-pubout", "-outform", "DER"]);
        DkimKey {
            private,
            record: format!("v=DKIM1; k=rsa; p={}", base64(&spki)),
        }
    }

    /// A new Ed25519 key (PKCS#8 PEM); its record holds the raw 32-byte
    /// public key (RFC 8463 §4).
    pub fn ed25519(dir: &Path, name: &str) -> DkimKey {
        let private = dir.join(format!("{name}.pem"));
        let p = private.to_str().unwrap();
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]);
        let spki = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
        DkimKey {
            private,
            record: format!("v=DKIM1; k=ed25519; p={}", base64(&spki[spki.len() - 32..])),
        }
    }
}

/// dnsmasq serving DKIM key records on port 53 of a loopback address of
/// its own, and a resolv.conf naming it.
pub struct DkimDns {
    child: Child,
    dir: tempfile::TempDir,
}

impl DkimDns {
    /// Serve `records`: (`selector._domainkey.domain`, record text).
    pub fn start(records: &[(&str, &str)]) -> DkimDns {
        static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let addr = Ipv4Addr::new(127, 53, (pid % 250) as u8 + 1, (n % 250) as u8 + 1);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("resolv.conf"),
            format!("nameserver {addr}\noptions attempts:1 timeout:2\n"),
        )
        .unwrap();
        let mut cmd = Command::new("dnsmasq");
        cmd.args(["--no-daemon", "--bind-interfaces", "--port=53"])
            .arg(format!("--listen-address={addr}"))
            .args(["--no-resolv", "--no-hosts", "--local=/test/"]);
        for (name, text) in records {
            // a TXT string holds 255 bytes at most: a 2048-bit key's record
            // is several strings, which verifiers join. dnsmasq splits the
            // argument at commas (a record has none) and would keep quotes.
            let chunks: Vec<String> = text
                .as_bytes()
                .chunks(255)
                .map(|c| std::str::from_utf8(c).unwrap().to_string())
                .collect();
            cmd.arg(format!("--txt-record={name},{}", chunks.join(",")));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq is installed (apt-get install dnsmasq-base)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((addr, 53)).is_err() {
            assert!(Instant::now() < deadline, "dnsmasq did not start on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        DkimDns { child, dir }
    }

    /// Run `program args` with this dnsmasq as the system resolver, the
    /// message on its stdin; its exit status, stdout and stderr.
    fn run(&self, message: &[u8], program: &str, args: &[&str]) -> (bool, String, String) {
        let resolv = self.dir.path().join("resolv.conf");
        let script = format!(
            "mount --bind {} /etc/resolv.conf && exec \"$0\" \"$@\"",
            resolv.display()
        );
        let mut child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
                program,
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux)");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(message).unwrap();
        let o = child.wait_with_output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// OpenDKIM's verdict on `message`: Ok, or its complaint.
    /// `opendkim-testmsg` checks every signature and is silent when all
    /// pass.
    pub fn opendkim_verify(&self, message: &[u8]) -> Result<(), String> {
        match self.run(message, "/usr/sbin/opendkim-testmsg", &[]) {
            (true, out, err) if out.trim().is_empty() && err.trim().is_empty() => Ok(()),
            (_, out, err) => Err(format!("{out}{err}")),
        }
    }

    /// dkimpy's verdict on each signature of `message`, in order: the
    /// signing domain, and None when it verified or dkimpy's reason when
    /// it did not. Debian's python3-dkim, run by Debian's python.
    pub fn dkimpy_verify(&self, message: &[u8]) -> Vec<(String, Option<String>)> {
        const SCRIPT: &str = r#"
import sys, dkim, json
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg)
n = len([h for h in d.headers if h[0].lower() == b"dkim-signature"])
out = []
for i in range(n):
    try:
        why = None if d.verify(idx=i) else "verify returned false"
    except dkim.DKIMException as e:
        why = str(e)
    out.append([d.domain.decode() if d.domain else "", why])
print(json.dumps(out))
"#;
        let (ok, out, err) = self.run(message, "/usr/bin/python3", &["-c", SCRIPT]);
        assert!(ok, "dkimpy: {out}{err}");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("dkimpy said {out:?}{err}: {e}"))
    }
}

impl Drop for DkimDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message as smtp-sink dumped it (LF line ends, its own trace headers
/// on top) back in wire form: CRLF line ends, as a receiving MTA hands it
/// to a verifier.
pub fn wire_form(dumped: &str) -> Vec<u8> {
    dumped.replace('\n', "\r\n").into_bytes()
}
