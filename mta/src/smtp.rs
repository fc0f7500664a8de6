//! RFC 5321 command parsing, shared by the server (and later the client).

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream an SMTP session runs over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

pub use placeholder::EmptyDuplex;

/// The rustls cipher suites ring offers, by the names KumoMTA's
/// `rustls_cipher_suites` uses.
pub fn cipher_suite_names() -> Vec<String> {
    rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .collect()
}

/// Names in `rustls_cipher_suites` that ring does not offer.
pub fn unknown_cipher_suites(names: &[String]) -> Vec<String> {
    let known = cipher_suite_names();
    names
        .iter()
        .filter(|n| !known.contains(n))
        .cloned()
        .collect()
}

mod placeholder {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    /// A closed stream that stands in while the real one is being upgraded.
    pub struct EmptyDuplex;

    impl AsyncRead for EmptyDuplex {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    impl AsyncWrite for EmptyDuplex {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}

/// ESMTP parameters such as `SIZE=100` or `SMTPUTF8`, keys uppercased.
pub type Params = Vec<(String, Option<String>)>;

/// One SMTP command line, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `EHLO domain`.
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `MAIL FROM:<address> params`.
    MailFrom {
        /// The reverse path, without angle brackets or source route; empty for
        /// the null sender `<>`.
        address: String,
        /// The ESMTP parameters.
        params: Params,
    },
    /// `RCPT TO:<address> params`.
    RcptTo {
        /// The forward path, without angle brackets or source route.
        address: String,
        /// The ESMTP parameters.
        params: Params,
    },
    /// `DATA`.
    Data,
    /// `RSET`.
    Rset,
    /// `NOOP`; any argument is ignored.
    Noop,
    /// `QUIT`.
    Quit,
    /// `STARTTLS`.
    StartTls,
    /// `VRFY`; the argument is ignored.
    Vrfy,
    /// `EXPN`; the argument is ignored.
    Expn,
    /// `HELP`; any argument is ignored.
    Help,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The SASL mechanism, uppercased.
        mechanism: String,
        /// The initial response (base64), if the client sent one.
        initial: Option<String>,
    },
    /// Any other verb, uppercased.
    Unknown(String),
}

/// A command line that does not parse: the reply to send for it.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    /// The reply code (501).
    pub code: u16,
    /// The reply text, starting with its enhanced status code.
    pub text: &'static str,
}

const BAD_ADDRESS: SyntaxError = SyntaxError {
    code: 501,
    text: "5.1.7 Invalid address",
};
const BAD_SYNTAX: SyntaxError = SyntaxError {
    code: 501,
    text: "5.5.4 Syntax error in parameters or arguments",
};

fn strip_verb<'a>(line: &'a str, verb: &str) -> Option<&'a str> {
    let head = line.get(..verb.len())?;
    if head.eq_ignore_ascii_case(verb) {
        Some(&line[verb.len()..])
    } else {
        None
    }
}

/// Parse `<addr> PARAM=value ...` after `MAIL FROM:` / `RCPT TO:`.
fn parse_path(rest: &str, allow_null: bool) -> Result<(String, Params), SyntaxError> {
    let rest = rest.trim_start();
    let (address, params) = if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>').ok_or(BAD_ADDRESS)?;
        (&inner[..end], &inner[end + 1..])
    } else {
        // be lenient with clients that omit the angle brackets
        match rest.split_once(' ') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        }
    };
    // drop a source route (`@a,@b:user@host`), which RFC 5321 says to ignore
    let address = match address.starts_with('@') {
        true => address.split_once(':').map(|(_, a)| a).ok_or(BAD_ADDRESS)?,
        false => address,
    };
    if address.is_empty() {
        if !allow_null {
            return Err(BAD_ADDRESS);
        }
    } else if !valid_address(address) {
        return Err(BAD_ADDRESS);
    }
    let mut out = vec![];
    for p in params.split_ascii_whitespace() {
        match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.push((k.to_ascii_uppercase(), Some(v.to_string())))
            }
            Some(_) => return Err(BAD_SYNTAX),
            None => out.push((p.to_ascii_uppercase(), None)),
        }
    }
    Ok((address.to_string(), out))
}

fn valid_address(addr: &str) -> bool {
    if addr.eq_ignore_ascii_case("postmaster") {
        return true;
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !addr
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
}

/// A command line's verb, uppercased, and the rest.
pub fn verb(line: &str) -> (String, &str) {
    let verb_end = line.find(' ').unwrap_or(line.len());
    (line[..verb_end].to_ascii_uppercase(), &line[verb_end..])
}

/// Parse one command line (without its CRLF). An unknown verb is
/// [`Command::Unknown`]; a known one with bad arguments is an error.
pub fn parse_command(line: &str) -> Result<Command, SyntaxError> {
    let (verb, arg) = verb(line);
    let arg = arg.trim();
    Ok(match verb.as_str() {
        "EHLO" | "HELO" => {
            if arg.is_empty() || arg.contains(' ') {
                return Err(BAD_SYNTAX);
            }
            if verb == "EHLO" {
                Command::Ehlo(arg.to_string())
            } else {
                Command::Helo(arg.to_string())
            }
        }
        "MAIL" => {
            let rest = strip_verb(line, "MAIL FROM:").ok_or(BAD_SYNTAX)?;
            let (address, params) = parse_path(rest, true)?;
            Command::MailFrom { address, params }
        }
        "RCPT" => {
            let rest = strip_verb(line, "RCPT TO:").ok_or(BAD_SYNTAX)?;
            let (address, params) = parse_path(rest, false)?;
            Command::RcptTo { address, params }
        }
        "DATA" if arg.is_empty() => Command::Data,
        "RSET" if arg.is_empty() => Command::Rset,
        "NOOP" => Command::Noop,
        "QUIT" if arg.is_empty() => Command::Quit,
        "STARTTLS" if arg.is_empty() => Command::StartTls,
        "DATA" | "RSET" | "QUIT" | "STARTTLS" => return Err(BAD_SYNTAX),
        "VRFY" => Command::Vrfy,
        "EXPN" => Command::Expn,
        "HELP" => Command::Help,
        "AUTH" => {
            let mut words = arg.split_ascii_whitespace();
            let mechanism = words.next().ok_or(BAD_SYNTAX)?.to_ascii_uppercase();
            let initial = words.next().map(str::to_string);
            if words.next().is_some() {
                return Err(BAD_SYNTAX);
            }
            Command::Auth { mechanism, initial }
        }
        _ => Command::Unknown(verb),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse_command("EHLO client.example").unwrap(),
            Command::Ehlo("client.example".into())
        );
        assert_eq!(parse_command("helo x").unwrap(), Command::Helo("x".into()));
        assert_eq!(
            parse_command("MAIL FROM:<a@b.c> SIZE=100 BODY=8BITMIME").unwrap(),
            Command::MailFrom {
                address: "a@b.c".into(),
                params: vec![
                    ("SIZE".into(), Some("100".into())),
                    ("BODY".into(), Some("8BITMIME".into()))
                ]
            }
        );
        assert_eq!(
            parse_command("mail from: <>").unwrap(),
            Command::MailFrom {
                address: "".into(),
                params: vec![]
            }
        );
        assert_eq!(
            parse_command("RCPT TO:<u@d>").unwrap(),
            Command::RcptTo {
                address: "u@d".into(),
                params: vec![]
            }
        );
        assert_eq!(
            parse_command("RCPT TO:<@relay.example:u@d>").unwrap(),
            Command::RcptTo {
                address: "u@d".into(),
                params: vec![]
            }
        );
        assert_eq!(parse_command("DATA").unwrap(), Command::Data);
        assert_eq!(parse_command("noop whatever").unwrap(), Command::Noop);
        assert_eq!(
            parse_command("XYZZY").unwrap(),
            Command::Unknown("XYZZY".into())
        );
    }

    #[test]
    fn rejects_bad_syntax_with_the_right_code() {
        assert_eq!(parse_command("RCPT TO:<>").unwrap_err().code, 501);
        assert_eq!(parse_command("RCPT TO:<nobody>").unwrap_err(), BAD_ADDRESS);
        assert_eq!(parse_command("MAIL FROM:<a@b").unwrap_err(), BAD_ADDRESS);
        assert_eq!(parse_command("MAIL TO:<a@b>").unwrap_err(), BAD_SYNTAX);
        assert_eq!(parse_command("EHLO").unwrap_err(), BAD_SYNTAX);
        assert_eq!(parse_command("DATA now").unwrap_err(), BAD_SYNTAX);
        assert_eq!(
            parse_command("RCPT TO:<postmaster>").unwrap(),
            Command::RcptTo {
                address: "postmaster".into(),
                params: vec![]
            }
        );
    }
}
