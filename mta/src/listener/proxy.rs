//! The PROXY protocol header (HAProxy's v1 text and v2 binary forms) that a
//! load balancer sends before the SMTP dialogue, naming the real client.
//! Only listeners (or `peer` blocks) with `require_proxy_protocol` read it;
//! anywhere else the same bytes are just a bad SMTP command.
//!
//! The framing is read here (so nothing past the header is consumed); the
//! header itself is decoded by the `ppp` crate.

use super::io::{Conn, Line, ReadError};
use std::net::SocketAddr;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;

/// The addresses a PROXY header names. `None` from [`read_header`] means the
/// header carried none (v1 `UNKNOWN`, v2 `LOCAL`: the proxy's own
/// connection, such as a health check), and the socket's addresses stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxied {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("the connection did not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
}

impl ProxyError {
    /// A stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ProxyError::Read(_) => "read",
            ProxyError::Missing => "missing",
            ProxyError::Malformed(_) => "malformed",
        }
    }
}

/// Read the header at the start of `conn`.
pub async fn read_header(conn: &mut Conn) -> Result<Option<Proxied>, ProxyError> {
    let mut header = conn.read_exact(V2_SIGNATURE.len()).await?;
    if header == V2_SIGNATURE {
        // version/command, family/protocol, then the length of the rest
        let fixed = conn.read_exact(4).await?;
        let len = u16::from_be_bytes([fixed[2], fixed[3]]) as usize;
        header.extend_from_slice(&fixed);
        header.extend_from_slice(&conn.read_exact(len).await?);
        return parse_v2(&header);
    }
    if !header.starts_with(b"PROXY ") {
        return Err(ProxyError::Missing);
    }
    match conn.read_line(V1_MAX - header.len() - 2).await? {
        Line::Ok {
            bytes,
            bare_lf: false,
        } => header.extend_from_slice(&bytes),
        _ => {
            return Err(ProxyError::Malformed(
                "a v1 header is one CRLF-terminated line of at most 107 bytes".into(),
            ));
        }
    }
    header.extend_from_slice(b"\r\n");
    parse_v1(&header)
}

fn parse_v1(line: &[u8]) -> Result<Option<Proxied>, ProxyError> {
    use ppp::v1::{Addresses, Header};
    let text = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("not ASCII".into()))?;
    let header = Header::try_from(text).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    Ok(match header.addresses {
        Addresses::Unknown => None,
        Addresses::Tcp4(a) => Some(Proxied {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        Addresses::Tcp6(a) => Some(Proxied {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
    })
}

fn parse_v2(bytes: &[u8]) -> Result<Option<Proxied>, ProxyError> {
    use ppp::v2::{Addresses, Command, Header};
    let header = Header::try_from(bytes).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if header.command == Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => Some(Proxied {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        Addresses::IPv6(a) => Some(Proxied {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// The header read from `input`, and the next SMTP line after it.
    async fn read(input: &[u8]) -> (Result<Option<Proxied>, ProxyError>, Option<Vec<u8>>) {
        let (client, server) = tokio::io::duplex(4096);
        let mut client = client;
        client.write_all(input).await.unwrap();
        drop(client);
        let mut conn = Conn::new(Box::new(server), std::time::Duration::from_secs(1));
        let header = read_header(&mut conn).await;
        let next = match conn.read_line(1000).await {
            Ok(Line::Ok { bytes, .. }) => Some(bytes),
            _ => None,
        };
        (header, next)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn v1_names_the_client_and_leaves_the_dialogue() {
        let (h, next) = read(b"PROXY TCP4 203.0.113.7 10.0.0.5 40000 25\r\nEHLO x\r\n").await;
        assert_eq!(
            h.unwrap(),
            Some(Proxied {
                source: addr("203.0.113.7:40000"),
                destination: addr("10.0.0.5:25"),
            })
        );
        assert_eq!(next.as_deref(), Some(&b"EHLO x"[..]));
        let (h, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 587\r\n").await;
        assert_eq!(h.unwrap().unwrap().source, addr("[2001:db8::1]:1234"));
        let (h, _) = read(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(h.unwrap(), None);
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        out.extend_from_slice(addresses);
        out
    }

    #[tokio::test]
    async fn v2_names_the_client_and_local_keeps_the_socket() {
        // TCP over IPv4: source, destination, source port, destination port
        let mut input = v2(1, 0x11, &[198, 51, 100, 9, 10, 0, 0, 5, 0x9c, 0x40, 0, 25]);
        input.extend_from_slice(b"QUIT\r\n");
        let (h, next) = read(&input).await;
        assert_eq!(
            h.unwrap(),
            Some(Proxied {
                source: addr("198.51.100.9:40000"),
                destination: addr("10.0.0.5:25"),
            })
        );
        assert_eq!(next.as_deref(), Some(&b"QUIT"[..]));
        let (h, _) = read(&v2(0, 0x00, &[])).await;
        assert_eq!(h.unwrap(), None);
    }

    #[tokio::test]
    async fn a_missing_or_broken_header_is_an_error() {
        let (h, _) = read(b"EHLO client.example\r\n").await;
        assert!(matches!(h, Err(ProxyError::Missing)), "{h:?}");
        let (h, _) = read(b"PROXY TCP4 not-an-address 10.0.0.5 1 2\r\n").await;
        assert!(matches!(h, Err(ProxyError::Malformed(_))), "{h:?}");
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        let (h, _) = read(long.as_bytes()).await;
        assert!(matches!(h, Err(ProxyError::Malformed(_))), "{h:?}");
        // a v2 header cut short
        let mut cut = v2(1, 0x11, &[198, 51, 100, 9, 10, 0, 0, 5, 0x9c, 0x40, 0, 25]);
        cut.truncate(20);
        let (h, _) = read(&cut).await;
        assert!(matches!(h, Err(ProxyError::Read(_))), "{h:?}");
    }
}
