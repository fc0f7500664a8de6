//! The admin HTTP listener (`kumo.start_http_listener`, spec §10): liveness,
//! readiness, `/healthz/live`, Prometheus metrics and the loaded config. Probes are open to
//! everyone (the kubelet must reach them); everything else only to
//! `trusted_hosts`, others get 403.

use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::queue::QueueManager;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ipnet::IpNet;
use serde::Deserialize;
use sluice_common::egress::deserialize_cidrs;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListenerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default = "default_trusted", deserialize_with = "deserialize_cidrs")]
    pub trusted_hosts: Vec<IpNet>,
    /// Only plain HTTP is served; `true` is refused at start.
    #[serde(default)]
    pub use_tls: bool,
    #[serde(default = "default_body_limit")]
    pub request_body_limit: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8000".into()
}
fn default_trusted() -> Vec<IpNet> {
    vec![
        "127.0.0.1/32".parse().expect("valid"),
        "::1/128".parse().expect("valid"),
    ]
}
fn default_body_limit() -> usize {
    2 * 1024 * 1024
}

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    pub queues: Arc<QueueManager>,
    pub reloader: Arc<crate::reload::Reloader>,
    pub trusted: Arc<Vec<IpNet>>,
}

/// `None` when `peer` may use admin endpoints, else the 403 to send.
fn untrusted(state: &AdminState, peer: SocketAddr) -> Option<Response> {
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(peer.ip()),
        v4 => v4,
    };
    if state.trusted.iter().any(|n| n.contains(&ip)) {
        None
    } else {
        Some(
            (
                StatusCode::FORBIDDEN,
                format!("{ip} is not a trusted host\n"),
            )
                .into_response(),
        )
    }
}

/// `GET /healthz/live`: the process answers, draining or not. For a
/// Kubernetes liveness probe, which must not restart a pod that is only
/// busy (draining, spool full): KumoMTA's check-liveness means "accepting".
async fn alive() -> &'static str {
    "alive\n"
}

async fn liveness(State(s): State<AdminState>) -> Response {
    match s.lifecycle.is_draining() {
        false => (StatusCode::OK, "OK\n").into_response(),
        true => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

async fn readiness(State(s): State<AdminState>) -> Response {
    if s.lifecycle.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let spool_ok =
        tokio::time::timeout(std::time::Duration::from_secs(2), s.queues.spool().flush())
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
    match spool_ok {
        true => (StatusCode::OK, "ready\n").into_response(),
        false => (StatusCode::SERVICE_UNAVAILABLE, "spool unhealthy\n").into_response(),
    }
}

async fn metrics(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(forbidden) = untrusted(&s, peer) {
        return forbidden;
    }
    s.metrics.scheduled.set(s.queues.delayed_count() as i64);
    s.metrics.ready.set(
        s.queues
            .egress()
            .ready_queues()
            .iter()
            .map(|q| q.len() as i64)
            .sum(),
    );
    s.metrics.spooled.set(s.queues.spool().len() as i64);
    s.metrics.draining.set(i64::from(s.lifecycle.is_draining()));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn config(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(forbidden) = untrusted(&s, peer) {
        return forbidden;
    }
    let status = s.reloader.status.lock().clone();
    axum::Json(status).into_response()
}

/// `POST /api/admin/bump-config-epoch`: reload the policy now.
async fn bump_config_epoch(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(forbidden) = untrusted(&s, peer) {
        return forbidden;
    }
    match s.reloader.reload().await {
        Ok(epoch) => axum::Json(serde_json::json!({ "epoch": epoch })).into_response(),
        Err(e) => unprocessable(e),
    }
}

/// The request body as `T`, or what is wrong with it and where.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

/// 422 with `{"error": ...}`.
fn unprocessable(error: String) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        axum::Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

/// `POST /api/inject/v1`.
async fn inject(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(forbidden) = untrusted(&s, peer) {
        return forbidden;
    }
    if s.lifecycle.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining: not accepting\n").into_response();
    }
    let req: crate::inject::InjectRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return unprocessable(e),
    };
    if let Err(e) = crate::inject::check(&req) {
        return unprocessable(e);
    }
    let _busy = s.lifecycle.session();
    axum::Json(crate::inject::inject(&s.queues, req, &peer.ip().to_string()).await).into_response()
}

/// `POST` adds a bounce or suspension rule, `GET` lists them, `DELETE`
/// (body `{"id": ...}`) removes one.
async fn rules(
    kind: crate::queue::admin::RuleKind,
    s: AdminState,
    peer: SocketAddr,
    method: axum::http::Method,
    body: axum::body::Bytes,
) -> Response {
    use crate::queue::admin::{RuleKind, RuleRequest};
    if let Some(forbidden) = untrusted(&s, peer) {
        return forbidden;
    }
    match method {
        axum::http::Method::GET => axum::Json(s.queues.rules().list(kind)).into_response(),
        axum::http::Method::DELETE => {
            #[derive(serde::Deserialize)]
            struct Id {
                id: String,
            }
            let id: Id = match parse_body(&body) {
                Ok(i) => i,
                Err(e) => return unprocessable(e),
            };
            match s.queues.delete_rule(&id.id) {
                Some(info) => axum::Json(info).into_response(),
                None => (StatusCode::NOT_FOUND, "no such rule\n").into_response(),
            }
        }
        _ => {
            let req: RuleRequest = match parse_body(&body) {
                Ok(r) => r,
                Err(e) => return unprocessable(e),
            };
            let info = match kind {
                RuleKind::Bounce => s.queues.admin_bounce(req),
                RuleKind::Suspend => s.queues.admin_suspend(req),
            };
            axum::Json(info).into_response()
        }
    }
}

async fn bounce(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: axum::http::Method,
    body: axum::body::Bytes,
) -> Response {
    rules(crate::queue::admin::RuleKind::Bounce, s, peer, method, body).await
}

async fn suspend(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: axum::http::Method,
    body: axum::body::Bytes,
) -> Response {
    rules(
        crate::queue::admin::RuleKind::Suspend,
        s,
        peer,
        method,
        body,
    )
    .await
}

#[derive(serde::Deserialize)]
struct SummaryQuery {
    limit: Option<usize>,
}

/// `GET /api/admin/queue-summary/v1?limit=N`.
async fn queue_summary(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::extract::Query(q): axum::extract::Query<SummaryQuery>,
) -> Response {
    if let Some(forbidden) = untrusted(&s, peer) {
        return forbidden;
    }
    axum::Json(s.queues.summary(q.limit.unwrap_or(1000))).into_response()
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz/live", get(alive))
        .route("/api/check-liveness/v1", get(liveness))
        .route("/api/check-readiness/v1", get(readiness))
        .route("/metrics", get(metrics))
        .route("/api/admin/config/v1", get(config))
        .route("/api/inject/v1", axum::routing::post(inject))
        .route(
            "/api/admin/bounce/v1",
            get(bounce).post(bounce).delete(bounce),
        )
        .route(
            "/api/admin/suspend/v1",
            get(suspend).post(suspend).delete(suspend),
        )
        .route("/api/admin/queue-summary/v1", get(queue_summary))
        .route(
            "/api/admin/bump-config-epoch",
            axum::routing::post(bump_config_epoch),
        )
        .with_state(state)
}

/// Bind and serve; returns once bound so start-up fails early on a bad address.
pub async fn start(config: &HttpListenerConfig, state: AdminState) -> anyhow::Result<SocketAddr> {
    if config.use_tls {
        anyhow::bail!(
            "start_http_listener: use_tls is not supported by this version of sluice-mta"
        );
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let app = router(state).layer(axum::extract::DefaultBodyLimit::max(
        config.request_body_limit,
    ));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        {
            tracing::error!("admin listener failed: {e}");
        }
    });
    Ok(addr)
}
