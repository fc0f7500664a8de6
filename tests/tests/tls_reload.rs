//! STARTTLS certificates rotated the way cert-manager and the kubelet do it
//! (a new directory, then an atomic swap of the `..data` symlink the
//! mounted files point through): new sessions get the new certificate
//! within seconds, without a restart, and a session already in TLS keeps
//! going. Python's ssl reads the certificate the server presents.

use sluice_tests::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// STARTTLS, print the server certificate's SHA-256, wait for a line on
/// stdin, then send a message on the same session and print its result.
const CLIENT: &str = r#"
import hashlib, smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30)
s.ehlo('client.test')
s.starttls(context=ctx)
s.ehlo('client.test')
print(hashlib.sha256(s.sock.getpeercert(True)).hexdigest(), flush=True)
if sys.argv[2] == 'hold':
    sys.stdin.readline()
    refused = s.sendmail('a@example.org', ['u@example.com'], b'Subject: held\r\n\r\nbody\r\n')
    print('sent' if not refused else refused, flush=True)
s.quit()
"#;

fn client(port: u16, hold: bool) -> std::process::Child {
    Command::new("python3")
        .args([
            "-c",
            CLIENT,
            &port.to_string(),
            if hold { "hold" } else { "once" },
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn presented(port: u16) -> String {
    let o = client(port, false).wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn fingerprint(cert: &Path) -> String {
    let o = Command::new("openssl")
        .args(["x509", "-outform", "der", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    use sha2::Digest;
    sha2::Sha256::digest(&o.stdout)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Publish a new certificate version in `dir`, as the kubelet does.
fn publish(dir: &Path, version: &str) -> String {
    let v = dir.join(format!("..{version}"));
    std::fs::create_dir(&v).unwrap();
    let (cert, _) = make_certificate(&v);
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    fingerprint(&cert)
}

#[test]
fn a_rotated_certificate_is_served_to_new_sessions_without_a_restart() {
    let secret = tempfile::tempdir().unwrap();
    let first = publish(secret.path(), "v1");
    for f in ["cert.pem", "key.pem"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), secret.path().join(f)).unwrap();
    }
    let listener = format!(
        "hostname = 'localhost', tls_certificate = '{0}/cert.pem', tls_private_key = '{0}/key.pem'",
        secret.path().display()
    );
    let mta = Mta::start(&maildir_policy(&listener, ""));
    assert_eq!(presented(mta.port), first);

    // a session in TLS on the first certificate, held open over the rotation
    let mut held = client(mta.port, true);
    let mut out = BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), first);

    let second = publish(secret.path(), "v2");
    assert_ne!(first, second);
    let start = Instant::now();
    while presented(mta.port) != second {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still the first certificate after 20 s\n{}",
            mta.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "new certificate served {:?} after the swap",
        start.elapsed()
    );

    held.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "sent", "the held session still delivers");
    assert!(held.wait().unwrap().success());
    assert!(mta.stderr().contains("STARTTLS certificate reloaded"));
}
