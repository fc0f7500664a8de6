//! The operator's Prometheus metrics and its health and metrics endpoint.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The operator's Prometheus metrics, in a registry of their own.
pub struct Metrics {
    registry: Registry,
    /// `sluice_operator_reconciles_total`: reconcile passes.
    pub reconciles: IntCounter,
    /// `sluice_operator_reconcile_failures_total`: failed passes, by `error`
    /// label ([`Error::metric_label`](crate::controller::Error::metric_label)).
    pub failures: IntCounterVec,
    /// `sluice_operator_reconcile_duration_seconds`: time of one pass.
    pub duration: Histogram,
    /// `sluice_operator_pods_updated`: MTA pods running the rendered config.
    pub pods_updated: IntGauge,
    /// `sluice_operator_pods`: MTA pods the selector finds.
    pub pods_total: IntGauge,
    /// `sluice_operator_configmap_writes_total`: writes of the generated ConfigMap.
    pub configmap_writes: IntCounter,
    /// Set once the watches are running.
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let reconciles =
            IntCounter::new("sluice_operator_reconciles_total", "Reconcile passes").unwrap();
        let failures = IntCounterVec::new(
            Opts::new(
                "sluice_operator_reconcile_failures_total",
                "Failed reconcile passes, by error",
            ),
            &["error"],
        )
        .unwrap();
        let duration = Histogram::with_opts(HistogramOpts::new(
            "sluice_operator_reconcile_duration_seconds",
            "Time of one reconcile pass",
        ))
        .unwrap();
        let pods_updated = IntGauge::new(
            "sluice_operator_pods_updated",
            "MTA pods running the rendered config",
        )
        .unwrap();
        let pods_total = IntGauge::new("sluice_operator_pods", "MTA pods found").unwrap();
        let configmap_writes = IntCounter::new(
            "sluice_operator_configmap_writes_total",
            "Writes of the generated ConfigMap (one per new config)",
        )
        .unwrap();
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(pods_updated.clone()),
            Box::new(pods_total.clone()),
            Box::new(configmap_writes.clone()),
        ] {
            registry.register(c).unwrap();
        }
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            pods_updated,
            pods_total,
            configmap_writes,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// The metrics in the Prometheus text format, for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("utf-8")
    }
}

/// `/metrics`, `/healthz` (the process answers) and `/readyz` (watching).
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::net::SocketAddr> {
    use axum::{Router, extract::State, http::StatusCode, routing::get};
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not watching yet")
                }
            }),
        )
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(bound)
}
