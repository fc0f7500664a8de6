//! `/api/admin/trace-smtp-server/v1` and `/api/admin/trace-smtp-client/v1`:
//! the live transcripts of `crate::trace`, streamed as JSON lines
//! (`application/x-ndjson`) for as long as the client stays. `?source=`
//! names networks or addresses (comma-separated) the peer must be in. The
//! first line says what is being traced, so a client knows it is watching
//! before the first session; a line `{"lagged": n}` says n events were lost
//! to a client that read too slowly. When the MTA starts to drain, a last
//! line `{"ended": ...}` says so and the stream ends, so a watcher learns
//! why the trace stopped rather than seeing a broken connection.

use super::AdminState;
use crate::trace::{Filter, TraceHub};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

#[derive(serde::Deserialize)]
pub(super) struct TraceQuery {
    source: Option<String>,
}

/// `GET /api/admin/trace-smtp-server/v1`: inbound sessions.
pub(super) async fn server(State(s): State<AdminState>, Query(q): Query<TraceQuery>) -> Response {
    stream(s, &crate::trace::SERVER, "smtp-server", q)
}

/// `GET /api/admin/trace-smtp-client/v1`: outbound sessions.
pub(super) async fn client(State(s): State<AdminState>, Query(q): Query<TraceQuery>) -> Response {
    stream(s, &crate::trace::CLIENT, "smtp-client", q)
}

/// A `source` that is not an address or a network.
#[derive(Debug, thiserror::Error)]
#[error("source: {0:?} is not an address or a network")]
struct BadSource(String);

fn networks(source: Option<&str>) -> Result<Vec<ipnet::IpNet>, BadSource> {
    let items = source.into_iter().flat_map(|s| s.split(','));
    items
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| BadSource(s.to_string()))
        })
        .collect()
}

fn line(v: &impl serde::Serialize) -> Bytes {
    let mut out = serde_json::to_vec(v).expect("trace events serialise");
    out.push(b'\n');
    Bytes::from(out)
}

fn stream(s: AdminState, hub: &Arc<TraceHub>, what: &str, q: TraceQuery) -> Response {
    let nets = match networks(q.source.as_deref()) {
        Ok(n) => n,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let first = line(&serde_json::json!({
        "tracing": what,
        "source": nets.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
    }));
    let state = Stream {
        watch: hub.subscribe(),
        filter: Filter { nets },
        session: s.lifecycle.owned_session(),
        next: Some(first),
        ended: false,
    };
    let events = futures_util::stream::unfold(state, |mut st| async move {
        let out = st.next_line().await?;
        Some((Ok::<_, Infallible>(out), st))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(events),
    )
        .into_response()
}

/// One watcher's stream: the events it wants, then a last line when the
/// MTA drains.
struct Stream {
    watch: crate::trace::Watch,
    filter: Filter,
    /// Counted as a session: the drain waits until the last line has gone
    /// out (and the stream is dropped), so the process does not exit
    /// before it.
    session: crate::lifecycle::OwnedSession,
    /// A line to send before any event (the first).
    next: Option<Bytes>,
    /// The last line is sent.
    ended: bool,
}

impl Stream {
    async fn next_line(&mut self) -> Option<Bytes> {
        if let Some(first) = self.next.take() {
            return Some(first);
        }
        if self.ended {
            return None;
        }
        loop {
            let event = tokio::select! {
                e = self.watch.rx.recv() => e,
                _ = self.session.lifecycle().draining() => {
                    self.ended = true;
                    return Some(line(&serde_json::json!({ "ended": "the MTA is draining" })));
                }
            };
            return Some(match event {
                Ok(e) if self.filter.wants(&e) => line(&*e),
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => line(&serde_json::json!({ "lagged": n })),
                Err(RecvError::Closed) => return None,
            });
        }
    }
}
