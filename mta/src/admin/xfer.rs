//! The admin API's routes that move queued mail: xfer
//! (`/api/admin/xfer/v1`, its cancel, and `/api/xfer/inject/v1` where
//! another node's transfers arrive) and `/api/admin/rebind/v1`; and
//! `inspect-message`.

use super::{AdminState, parse_body, unprocessable};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;

/// `POST /api/admin/xfer/v1`.
pub(super) async fn xfer(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    match parse_body(&body) {
        Ok(req) => refused_or(s.queues.admin_xfer(req)),
        Err(e) => unprocessable(e),
    }
}

/// `POST /api/admin/xfer/cancel/v1`.
pub(super) async fn xfer_cancel(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    match parse_body(&body) {
        Ok(req) => refused_or(s.queues.admin_xfer_cancel(req)),
        Err(e) => unprocessable(e),
    }
}

/// `POST /api/admin/rebind/v1`.
pub(super) async fn rebind(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    match parse_body(&body) {
        Ok(req) => refused_or(s.queues.admin_rebind(req)),
        Err(e) => unprocessable(e),
    }
}

fn refused_or(r: Result<serde_json::Value, crate::queue::xfer::XferRefused>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, axum::Json(serde_json::json!({ "error": e.text }))).into_response()
        }
    }
}

/// `POST /api/xfer/inject/v1`: a message another node transfers. 200 once
/// it is in the spool; 503 while this node cannot take it (draining, the
/// spool refusing), so the sender keeps it and retries.
pub(super) async fn xfer_inject(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    use crate::queue::xfer::AcceptError;
    if s.lifecycle.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let ip = crate::config::listener::canonical(peer.ip());
    // in a task of its own: hyper drops a handler whose client went away (a
    // sender killed mid-transfer), and a message spooled but never queued
    // would be answered "held already" when the sender retries, and wait
    // here for a restart
    let queues = s.queues.clone();
    let task = tokio::spawn(async move { queues.accept_xfer(&body, ip).await });
    let Ok(accepted) = task.await else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the transfer task failed\n",
        )
            .into_response();
    };
    match accepted {
        Ok(id) => axum::Json(serde_json::json!({ "id": id })).into_response(),
        Err(e @ (AcceptError::Decode(_) | AcceptError::Loop(_))) => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Err(e @ AcceptError::Spool(_)) => {
            tracing::error!("xfer from {ip}: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
    }
}

#[derive(serde::Deserialize)]
pub(super) struct InspectQuery {
    id: String,
}

/// `GET /api/admin/inspect-message/v1?id=...`: a spooled message's
/// envelope, meta, attempts, due time and scheduling, as its latest META
/// record has them.
pub(super) async fn inspect_message(
    State(s): State<AdminState>,
    axum::extract::Query(q): axum::extract::Query<InspectQuery>,
) -> Response {
    let Some(id) = crate::message::MessageId::parse(&q.id) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a message id\n", q.id),
        )
            .into_response();
    };
    let meta = s.queues.spool().read_meta(id).ok();
    let meta = meta.and_then(|m| serde_json::from_slice::<serde_json::Value>(&m).ok());
    match meta {
        Some(m) => {
            axum::Json(serde_json::json!({ "id": id.to_string(), "message": m })).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            format!("no message {id} in the spool\n"),
        )
            .into_response(),
    }
}

/// The largest transfer taken in, whatever `request_body_limit` says: a
/// message this node's peers accepted must fit.
pub(super) const XFER_BODY_LIMIT: usize = 256 * 1024 * 1024;
