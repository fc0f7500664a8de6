//! `/api/admin/suspend-ready-q/v1` (KumoMTA's API): suspensions of one
//! ready queue, by the name the queue summary gives it.

use super::{AdminState, IdBody, parse_body, unprocessable};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// `POST` suspends a ready queue (KumoMTA's `{name, reason, duration}`),
/// `GET` lists the suspensions, `DELETE` (`{"id"}`) ends one.
pub(super) async fn suspend_ready_q(
    State(s): State<AdminState>,
    method: axum::http::Method,
    body: axum::body::Bytes,
) -> Response {
    match method {
        axum::http::Method::GET => axum::Json(s.queues.ready_suspensions()).into_response(),
        axum::http::Method::DELETE => {
            let id: IdBody = match parse_body(&body) {
                Ok(i) => i,
                Err(e) => return unprocessable(e),
            };
            match s.queues.cancel_ready_suspension(&id.id) {
                Some(info) => axum::Json(info).into_response(),
                None => (StatusCode::NOT_FOUND, "no such suspension\n").into_response(),
            }
        }
        _ => {
            let req = match parse_body(&body) {
                Ok(r) => r,
                Err(e) => return unprocessable(e),
            };
            match s.queues.suspend_ready_queue(req) {
                Ok(info) => axum::Json(info).into_response(),
                Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
            }
        }
    }
}
