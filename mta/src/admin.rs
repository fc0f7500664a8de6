//! The admin HTTP listener (`kumo.start_http_listener`, spec §10): liveness,
//! readiness, `/healthz/live`, Prometheus metrics, the loaded config and the
//! admin endpoints. Probes are open to everyone (the kubelet must reach
//! them). Everything else, as in KumoMTA, needs a client in `trusted_hosts`
//! or HTTP Basic credentials that the policy's
//! `http_server_validate_auth_basic` event accepts; others get 401.

use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::queue::QueueManager;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::sync::Arc;

mod ready;
mod scrape;
mod trace;
mod xfer;

/// What the admin HTTP handlers share: the daemon's metrics, drain state,
/// queues, reloader and policy, and the clients trusted without credentials.
/// One per HTTP listener; they differ only in `trusted`.
#[derive(Clone)]
pub struct AdminState {
    /// The metrics `/metrics` renders; refused requests are counted here too.
    pub metrics: Arc<Metrics>,
    /// The drain state: `check-liveness`, `check-readiness` and injection
    /// answer 503 while draining.
    pub lifecycle: Arc<Lifecycle>,
    /// The queue engine: injection, admin bounce and suspend rules, the queue
    /// summary and the readiness check's spool flush.
    pub queues: Arc<QueueManager>,
    /// Reloads the policy for `bump-config-epoch` and holds the status
    /// `/api/admin/config/v1` reports.
    pub reloader: Arc<crate::reload::Reloader>,
    /// The policy whose `http_server_validate_auth_basic` event checks HTTP
    /// Basic credentials.
    pub policy: Arc<crate::policy::Policy>,
    /// Each ESMTP listener's relay policy, for `/api/admin/config/v1`.
    pub listeners: Arc<Vec<crate::listener::relay::RelayReport>>,
    /// This listener's `trusted_hosts`: clients in these networks need no
    /// credentials.
    pub trusted: Arc<Vec<IpNet>>,
    /// Storage and memory: while either is short, injection and both
    /// readiness checks answer 503.
    pub admission: Arc<crate::admission::Admission>,
    /// Shaping automation, when `configure_shaping_automation` was called.
    pub shaping: Option<Arc<crate::shaping::Shaping>>,
}

/// Lets a request through to a non-probe endpoint: from `trusted_hosts`, or
/// with HTTP Basic credentials the policy accepts; else 401 (and 500 when
/// the policy's check itself fails).
async fn authorize(
    State(s): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let ip = crate::config::listener::canonical(peer.ip());
    if s.trusted.iter().any(|n| n.contains(&ip)) {
        return next.run(request).await;
    }
    let refuse = |reason: &str, text: String| {
        s.metrics
            .admin_refused_total
            .with_label_values(&[reason])
            .inc();
        (
            StatusCode::UNAUTHORIZED,
            [(
                axum::http::header::WWW_AUTHENTICATE,
                "Basic realm=\"sluice\"",
            )],
            text,
        )
            .into_response()
    };
    let Some((user, password)) = basic_credentials(request.headers()) else {
        return refuse(
            "unauthenticated",
            format!("{ip} is not a trusted host: HTTP Basic credentials are required\n"),
        );
    };
    match s.policy.validate_auth_basic(&user, &password).await {
        Ok(true) => next.run(request).await,
        Ok(false) => refuse("bad_credentials", "invalid credentials\n".into()),
        Err(e) => {
            tracing::error!("http_server_validate_auth_basic: {e}");
            s.metrics
                .admin_refused_total
                .with_label_values(&["error"])
                .inc();
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the credentials could not be checked\n",
            )
                .into_response()
        }
    }
}

/// `Authorization: Basic base64(user:password)`.
fn basic_credentials(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// `GET /healthz/live`: the process answers, draining or not. For a
/// Kubernetes liveness probe, which must not restart a pod that is only
/// busy (draining, spool full): KumoMTA's check-liveness means "accepting".
async fn alive() -> &'static str {
    "alive\n"
}

async fn liveness(State(s): State<AdminState>) -> Response {
    if s.lifecycle.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if let Some(refusal) = s.admission.refusal() {
        return not_accepting(&refusal);
    }
    (StatusCode::OK, "OK\n").into_response()
}

/// 503 naming what is short; `Retry-After` says when to look again.
fn not_accepting(short: &crate::admission::Refusal) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "10")],
        format!("not accepting new mail: {short}\n"),
    )
        .into_response()
}

async fn readiness(State(s): State<AdminState>) -> Response {
    if s.lifecycle.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if let Some(refusal) = s.admission.refusal() {
        return not_accepting(&refusal);
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

async fn config(State(s): State<AdminState>) -> Response {
    let status = s.reloader.status.lock().clone();
    let mut body = serde_json::to_value(status).unwrap_or_default();
    body["listeners"] = serde_json::to_value(s.listeners.as_ref()).unwrap_or_default();
    // config hooks failing at run time (their messages get TransientFailures)
    body["hook_errors"] =
        serde_json::to_value(crate::policy::hook_errors::snapshot()).unwrap_or_default();
    axum::Json(body).into_response()
}

/// `POST /api/admin/bump-config-epoch`: reload the policy now.
async fn bump_config_epoch(State(s): State<AdminState>) -> Response {
    match s.reloader.reload().await {
        Ok(epoch) => axum::Json(serde_json::json!({ "epoch": epoch })).into_response(),
        Err(e) => unprocessable(e),
    }
}

/// The request body as `T`, or what is wrong with it and where.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de)
}

/// 422 with `{"error": ...}`: the error says what is wrong and where.
fn unprocessable(error: impl std::fmt::Display) -> Response {
    let error = error.to_string();
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
    if s.lifecycle.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining: not accepting\n").into_response();
    }
    if let Some(refusal) = s.admission.refusal() {
        return not_accepting(&refusal);
    }
    let req: crate::inject::InjectRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return unprocessable(e),
    };
    if let Err(e) = crate::inject::check(&req) {
        return unprocessable(e);
    }
    // in a task of its own: hyper drops a handler whose client went away,
    // and a message spooled but never queued would wait for a restart
    let (queues, lifecycle) = (s.queues.clone(), s.lifecycle.clone());
    let task = tokio::spawn(async move {
        let _busy = lifecycle.session();
        crate::inject::inject(&queues, req, &peer.ip().to_string()).await
    });
    match task.await {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The body of a `DELETE` that names what to end: `{"id": ...}`.
#[derive(serde::Deserialize)]
struct IdBody {
    id: String,
}

/// `POST` adds a bounce or suspension rule, `GET` lists them, `DELETE`
/// (body `{"id": ...}`) removes one.
async fn rules(
    kind: crate::queue::admin::RuleKind,
    s: AdminState,
    method: axum::http::Method,
    body: axum::body::Bytes,
) -> Response {
    use crate::queue::admin::{RuleKind, RuleRequest};
    match method {
        axum::http::Method::GET => axum::Json(s.queues.list_rules(kind)).into_response(),
        axum::http::Method::DELETE => {
            let id: IdBody = match parse_body(&body) {
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
    method: axum::http::Method,
    body: axum::body::Bytes,
) -> Response {
    rules(crate::queue::admin::RuleKind::Bounce, s, method, body).await
}

async fn suspend(
    State(s): State<AdminState>,
    method: axum::http::Method,
    body: axum::body::Bytes,
) -> Response {
    rules(crate::queue::admin::RuleKind::Suspend, s, method, body).await
}

#[derive(serde::Deserialize)]
struct SummaryQuery {
    limit: Option<usize>,
}

/// `GET /api/admin/queue-summary/v1?limit=N`.
async fn queue_summary(
    State(s): State<AdminState>,
    axum::extract::Query(q): axum::extract::Query<SummaryQuery>,
) -> Response {
    axum::Json(s.queues.summary(q.limit.unwrap_or(1000))).into_response()
}

/// `GET /api/admin/shaping/v1`: the shaping automation actions in force on
/// this node (the fleet's, when they are shared through Redis).
async fn shaping(State(s): State<AdminState>) -> Response {
    let body = match &s.shaping {
        Some(sh) => serde_json::json!({
            "enabled": true,
            "rules": sh.rule_count(),
            "actions": sh.in_force(),
        }),
        None => serde_json::json!({ "enabled": false, "rules": 0, "actions": [] }),
    };
    axum::Json(body).into_response()
}

/// The admin routes: the probes (`/healthz/live`, `check-liveness`,
/// `check-readiness`) open to every client, the rest only to a trusted host or
/// accepted HTTP Basic credentials.
pub fn router(state: AdminState) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(scrape::metrics))
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
        .route(
            "/api/admin/suspend-ready-q/v1",
            get(ready::suspend_ready_q)
                .post(ready::suspend_ready_q)
                .delete(ready::suspend_ready_q),
        )
        .route("/api/admin/queue-summary/v1", get(queue_summary))
        .route("/api/admin/shaping/v1", get(shaping))
        .route("/api/admin/inspect-message/v1", get(xfer::inspect_message))
        .route("/api/admin/xfer/v1", axum::routing::post(xfer::xfer))
        .route("/api/admin/rebind/v1", axum::routing::post(xfer::rebind))
        .route("/api/admin/trace-smtp-server/v1", get(trace::server))
        .route("/api/admin/trace-smtp-client/v1", get(trace::client))
        .route(
            "/api/admin/xfer/cancel/v1",
            axum::routing::post(xfer::xfer_cancel),
        )
        .route(
            crate::xfer::INJECT_PATH,
            axum::routing::post(xfer::xfer_inject)
                .layer(axum::extract::DefaultBodyLimit::max(xfer::XFER_BODY_LIMIT)),
        )
        .route(
            "/api/admin/bump-config-epoch",
            axum::routing::post(bump_config_epoch),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ));
    Router::new()
        .route("/healthz/live", get(alive))
        .route("/api/check-liveness/v1", get(liveness))
        .route("/api/check-readiness/v1", get(readiness))
        .merge(guarded)
        .with_state(state)
}

/// Bind and serve; returns once bound so start-up fails early on a bad address.
pub async fn start(
    config: &crate::config::http::HttpListenerConfig,
    state: AdminState,
) -> Result<SocketAddr, crate::listener::BindError> {
    use crate::listener::BindError;
    if config.use_tls {
        return Err(BindError::Unsupported(
            "start_http_listener: use_tls is not supported by this version of sluice-mta",
        ));
    }
    let bind_error = |source| BindError::Listen {
        listen: config.listen.clone(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
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
