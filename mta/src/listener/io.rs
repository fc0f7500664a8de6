//! Buffered SMTP I/O: lines with a hard length limit, replies batched until
//! the client has no more pipelined input, and STARTTLS upgrade.

use crate::smtp::Io;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One line as [`Conn::read_line`] read it.
pub enum Line {
    /// A line without its line ending; `bare_lf` when it ended in LF alone.
    Ok {
        /// The line's bytes, without CRLF or LF.
        bytes: Vec<u8>,
        /// It ended in a bare LF.
        bare_lf: bool,
    },
    /// Longer than the limit; the rest of it was discarded.
    TooLong,
}

/// Why reading from the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Nothing arrived within the client timeout.
    #[error("client timed out")]
    Timeout,
    /// The client closed its side.
    #[error("client closed the connection")]
    Closed,
    /// The transport failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What [`Rewrite::rewrite`] answers, in time.
pub type Rewritten<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<(u16, String)>> + Send + 'a>>;

/// Changes a reply before it is sent (`smtp_server_rewrite_response`):
/// the status and text to send instead, or `None` to send it as it is.
pub trait Rewrite: Send + Sync {
    /// Rewrite the reply `code text` to `command` (`None`: unilateral, or
    /// not a command).
    fn rewrite<'a>(&'a self, code: u16, text: &'a str, command: Option<&'a str>) -> Rewritten<'a>;
}

/// A reply waiting for [`Rewrite`]: code, text, and the command it answers.
type Pending = (u16, String, Option<String>);

/// A client connection: buffered input, batched replies.
pub struct Conn {
    /// The transport (TCP, or TLS after STARTTLS).
    pub io: Box<dyn Io>,
    buf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    timeout: Duration,
    /// The verb of the command being answered, for [`Rewrite`].
    pub command: Option<String>,
    rewrite: Option<std::sync::Arc<dyn Rewrite>>,
    /// Replies queued for `rewrite`, in order.
    pending: Vec<Pending>,
    /// A rewrite turned a reply into a 421: the session ends after it.
    hung_up: bool,
    /// Publishes the session's transcript (`crate::trace`).
    pub trace: Option<crate::trace::Tracer>,
}

impl Conn {
    /// Wrap `io`; a read waiting longer than `timeout` fails.
    pub fn new(io: Box<dyn Io>, timeout: Duration) -> Self {
        Conn {
            io,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            out: Vec::with_capacity(4096),
            timeout,
            command: None,
            rewrite: None,
            pending: vec![],
            hung_up: false,
            trace: None,
        }
    }

    /// Pass every reply through `rewrite` before it is sent.
    pub fn set_rewrite(&mut self, rewrite: std::sync::Arc<dyn Rewrite>) {
        self.rewrite = Some(rewrite);
    }

    /// Queue a reply; it is sent before the next read that would block.
    pub fn reply(&mut self, code: u16, text: &str) {
        if self.rewrite.is_some() {
            self.pending
                .push((code, text.to_string(), self.command.clone()));
            return;
        }
        self.format(code, text);
    }

    fn format(&mut self, code: u16, text: &str) {
        let mut lines = text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            if let Some(t) = self.trace.as_ref().filter(|t| t.watched()) {
                t.write(&format!("{code}{sep}{line}"));
            }
            self.out
                .extend_from_slice(format!("{code}{sep}{line}\r\n").as_bytes());
        }
    }

    /// Trace a line the session read (see `crate::trace`).
    pub fn trace_read(&self, line: &str) {
        if let Some(t) = &self.trace {
            t.read(line);
        }
    }

    /// Send the queued replies.
    pub async fn flush(&mut self) -> io::Result<()> {
        if let Some(rewrite) = self.rewrite.clone() {
            for (code, text, command) in std::mem::take(&mut self.pending) {
                match rewrite.rewrite(code, &text, command.as_deref()).await {
                    Some((new, new_text)) => {
                        self.hung_up |= new == 421 && code != 421;
                        self.format(new, &new_text);
                    }
                    None => self.format(code, &text),
                }
            }
        }
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.io.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// True when pipelined input is already buffered.
    pub fn has_buffered_input(&self) -> bool {
        self.pos < self.buf.len()
    }

    /// Read more input, which must come by `deadline`.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<(), ReadError> {
        self.flush().await?;
        if self.hung_up {
            // the policy made a reply a 421: closing, as a 421 means
            return Err(ReadError::Closed);
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let start = self.buf.len();
        // read into spare capacity: no zeroing of 16 KiB per read
        self.buf.reserve(16 * 1024);
        let n = match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
            Err(_) => {
                self.buf.truncate(start);
                return Err(ReadError::Timeout);
            }
            Ok(Err(e)) => {
                self.buf.truncate(start);
                return Err(e.into());
            }
            Ok(Ok(n)) => n,
        };
        self.buf.truncate(start + n);
        if n == 0 {
            return Err(ReadError::Closed);
        }
        Ok(())
    }

    /// Read one line of at most `limit` bytes (line ending excluded). The
    /// whole line must arrive within the client timeout: a client dribbling
    /// a byte every few seconds (slowloris) cannot hold a session forever.
    pub async fn read_line(&mut self, limit: usize) -> Result<Line, ReadError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut too_long = false;
        loop {
            let avail = &self.buf[self.pos..];
            if let Some(i) = memchr::memchr(b'\n', avail) {
                let mut line = &avail[..i];
                let bare_lf = !line.ends_with(b"\r");
                if !bare_lf {
                    line = &line[..line.len() - 1];
                }
                let result = if too_long || line.len() > limit {
                    Line::TooLong
                } else {
                    Line::Ok {
                        bytes: line.to_vec(),
                        bare_lf,
                    }
                };
                self.pos += i + 1;
                return Ok(result);
            }
            if avail.len() > limit + 2 {
                // discard what we have of an over-long line and keep scanning
                too_long = true;
                self.pos = self.buf.len();
            }
            self.fill(deadline).await?;
        }
    }

    /// Read exactly `n` bytes (the binary PROXY header); what follows stays
    /// buffered for the SMTP dialogue.
    pub async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        while self.buf.len() - self.pos < n {
            self.fill(deadline).await?;
        }
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(out)
    }

    /// Read a DATA body up to the lone `.`; dot-unstuffed, CRLF line endings.
    pub async fn read_data(
        &mut self,
        max_size: usize,
        line_limit: usize,
    ) -> Result<DataBody, ReadError> {
        let mut body = DataBody::default();
        loop {
            match self.read_line(line_limit).await? {
                Line::TooLong => body.line_too_long = true,
                Line::Ok { bytes, bare_lf } => {
                    if bytes == b"." {
                        return Ok(body);
                    }
                    body.bare_line_ending |= bare_lf || memchr::memchr(b'\r', &bytes).is_some();
                    let line = bytes.strip_prefix(b".").unwrap_or(&bytes);
                    if body.data.len() + line.len() + 2 > max_size {
                        body.too_big = true;
                    }
                    if !body.too_big {
                        body.data.extend_from_slice(line);
                        body.data.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
    }

    /// Hand the transport over for a TLS upgrade; refuses when the client
    /// pipelined data after STARTTLS (that plaintext must not leak into TLS).
    pub fn take_for_tls(&mut self) -> Option<Box<dyn Io>> {
        if self.has_buffered_input() {
            return None;
        }
        self.buf.clear();
        self.pos = 0;
        let placeholder: Box<dyn Io> = Box::new(crate::smtp::EmptyDuplex);
        Some(std::mem::replace(&mut self.io, placeholder))
    }
}

/// A DATA body as [`Conn::read_data`] read it.
#[derive(Default)]
pub struct DataBody {
    /// The body, dot-unstuffed, CRLF line endings (empty past the limit).
    pub data: Vec<u8>,
    /// It was larger than the size limit.
    pub too_big: bool,
    /// A line was longer than the line limit (and was dropped).
    pub line_too_long: bool,
    /// A line ended in a bare LF, or held a bare CR.
    pub bare_line_ending: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte every 500 ms keeps every single read within a 2 s timeout;
    /// the line as a whole still times out 2 s after it began.
    #[tokio::test(start_paused = true)]
    async fn a_dribbled_line_times_out_as_a_whole() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = Conn::new(Box::new(server), Duration::from_secs(2));
        tokio::spawn(async move {
            for _ in 0..100 {
                if client.write_all(b"N").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let start = tokio::time::Instant::now();
        let result = conn.read_line(1000).await;
        assert!(matches!(result, Err(ReadError::Timeout)));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    /// A line that arrives in pieces within the timeout is read whole.
    #[tokio::test(start_paused = true)]
    async fn a_line_in_pieces_within_the_timeout_is_read() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = Conn::new(Box::new(server), Duration::from_secs(2));
        tokio::spawn(async move {
            for piece in [&b"NO"[..], b"OP", b"\r\n"] {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        match conn.read_line(1000).await {
            Ok(Line::Ok { bytes, bare_lf }) => {
                assert_eq!(bytes, b"NOOP");
                assert!(!bare_lf);
            }
            _ => panic!("the line was not read"),
        }
    }
}
