//! SMTP AUTH credentials (RFC 4954): the PLAIN (RFC 4616) and LOGIN
//! encodings, and the per-address failure count that locks out guessing.
//! The check itself is the policy's `smtp_server_auth_plain` event.

use base64::Engine;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use tokio::time::{Duration, Instant};

/// What a client presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The identity to act as; the same as `authc` when the client gave none.
    pub authz: String,
    /// The identity the password belongs to.
    pub authc: String,
    /// The password, as sent.
    pub password: String,
}

/// Why an AUTH response could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The response is not base64.
    #[error("not valid base64")]
    Base64,
    /// The decoded response is not UTF-8.
    #[error("not valid UTF-8")]
    Utf8,
    /// A PLAIN response without exactly three NUL-separated parts, or with an
    /// empty authcid.
    #[error("PLAIN needs authzid NUL authcid NUL password")]
    Plain,
}

fn decode(b64: &str) -> Result<String, AuthError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| AuthError::Base64)?;
    String::from_utf8(bytes).map_err(|_| AuthError::Utf8)
}

/// `authzid NUL authcid NUL passwd`; an empty authzid means "as authcid",
/// as KumoMTA passes it to the event.
pub fn decode_plain(b64: &str) -> Result<Credentials, AuthError> {
    let text = decode(b64)?;
    let mut parts = text.split('\0');
    let (Some(authz), Some(authc), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Plain);
    };
    if authc.is_empty() {
        return Err(AuthError::Plain);
    }
    let authz = if authz.is_empty() { authc } else { authz };
    Ok(Credentials {
        authz: authz.to_string(),
        authc: authc.to_string(),
        password: password.to_string(),
    })
}

/// One base64 line of the LOGIN exchange (user name, then password).
pub fn decode_login(b64: &str) -> Result<String, AuthError> {
    decode(b64)
}

/// A session's failures before it is closed.
pub const SESSION_FAILURES: u32 = 3;
/// Failures from one address, across sessions, that lock it out ...
const ADDRESS_FAILURES: u32 = 10;
/// ... for this long after the first of them.
const WINDOW: Duration = Duration::from_secs(600);
/// Addresses tracked at most; the oldest windows are dropped beyond it, so
/// a flood of addresses cannot grow memory without bound.
const TRACKED: usize = 10_000;

/// Failed AUTH attempts by client address, for one listener.
#[derive(Default)]
pub struct Failures {
    by_address: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Failures {
    /// Whether `ip` has failed too often lately to be checked again.
    pub fn locked_out(&self, ip: IpAddr) -> bool {
        let mut map = self.by_address.lock();
        match map.get(&ip) {
            Some((_, since)) if since.elapsed() >= WINDOW => {
                map.remove(&ip);
                false
            }
            Some((n, _)) => *n >= ADDRESS_FAILURES,
            None => false,
        }
    }

    /// Count a failure from `ip`; a window that has run out starts over,
    /// and when too many addresses are tracked the oldest is dropped.
    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.by_address.lock();
        if map.len() >= TRACKED && !map.contains_key(&ip) {
            map.retain(|_, (_, since)| since.elapsed() < WINDOW);
            if map.len() >= TRACKED {
                let oldest = map.iter().min_by_key(|(_, (_, s))| *s).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    map.remove(&k);
                }
            }
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    /// Forget `ip`'s failures: it authenticated.
    pub fn succeeded(&self, ip: IpAddr) {
        self.by_address.lock().remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn plain_is_decoded_with_an_empty_authzid_meaning_the_authcid() {
        let c = decode_plain(&b64("\0daniel\0tiger")).unwrap();
        assert_eq!((c.authz.as_str(), c.authc.as_str()), ("daniel", "daniel"));
        assert_eq!(c.password, "tiger");
        let c = decode_plain(&b64("admin\0daniel\0tiger")).unwrap();
        assert_eq!(c.authz, "admin");
        assert_eq!(decode_plain("%%%"), Err(AuthError::Base64));
        assert_eq!(decode_plain(&b64("daniel\0tiger")), Err(AuthError::Plain));
        assert_eq!(decode_plain(&b64("\0\0tiger")), Err(AuthError::Plain));
        assert_eq!(decode_plain(&b64("a\0b\0c\0d")), Err(AuthError::Plain));
        assert_eq!(decode_login(&b64("daniel")).unwrap(), "daniel");
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_is_locked_out_after_ten_failures_for_ten_minutes() {
        let f = Failures::default();
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let other: IpAddr = "203.0.113.10".parse().unwrap();
        for _ in 0..9 {
            f.failed(ip);
        }
        assert!(!f.locked_out(ip));
        f.failed(ip);
        assert!(f.locked_out(ip));
        assert!(!f.locked_out(other));
        tokio::time::advance(Duration::from_secs(599)).await;
        assert!(f.locked_out(ip));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!f.locked_out(ip));
        // a success forgets earlier failures
        f.failed(other);
        f.succeeded(other);
        for _ in 0..9 {
            f.failed(other);
        }
        assert!(!f.locked_out(other));
    }

    #[tokio::test(start_paused = true)]
    async fn tracking_is_bounded() {
        let f = Failures::default();
        for i in 0..(TRACKED as u32 + 50) {
            f.failed(IpAddr::from(i.to_be_bytes()));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(f.by_address.lock().len() <= TRACKED);
    }
}
