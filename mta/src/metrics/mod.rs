//! Prometheus metrics with bounded label sets: `service` is the listener or
//! the delivery protocol (a handful of values), never a queue name, so the
//! series count does not grow with the number of queues. Per-provider
//! series are capped ([`provider`]).

pub mod provider;

use crate::log::{DelayReason, LogRecord, RecordType};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The Prometheus registry and its metrics. Most are counted from log records,
/// as the log's observer; the public ones are set by other parts.
pub struct Metrics {
    registry: Registry,
    /// `total_connection_count{service}`: SMTP sessions accepted.
    pub connections_total: IntCounterVec,
    /// `connection_count{service}`: SMTP sessions open now.
    pub connections: IntGaugeVec,
    received: IntCounterVec,
    delivered: IntCounterVec,
    transfail: IntCounterVec,
    failed: IntCounterVec,
    /// Bounce, TransientFailure, Expiration and OOB records by record type and
    /// bounce classification (the rules' labels: a bounded set).
    classified: IntCounterVec,
    /// Feedback and OOB records: reports taken in by listener domains.
    reports: IntCounterVec,
    expired: IntCounter,
    /// Messages handed to another node and taken from it (XferOut, XferIn).
    xfer_out: IntCounter,
    xfer_in: IntCounter,
    rejections: IntCounter,
    delayed_rate: IntCounter,
    delayed_ready_full: IntCounter,
    /// Delayed records by reason (a handful of values).
    delayed: IntCounterVec,
    /// `scheduled_count_total`: messages in scheduled queues, set at each
    /// scrape.
    pub scheduled: IntGauge,
    /// `ready_count_total`: messages in ready queues, set at each scrape.
    pub ready: IntGauge,
    /// `message_count`: messages in the spool, set at each scrape.
    pub spooled: IntGauge,
    /// `sluice_queued_messages`: scheduled + ready, what autoscaling on
    /// queue depth divides by the pods.
    pub queued: IntGauge,
    /// `sluice_oldest_message_age_seconds`: how long ago the oldest message
    /// in the spool was received (0 when it is empty), for alerts and
    /// autoscaling on backlog age.
    pub oldest_age: IntGauge,
    /// Outcomes, backlog and latency by provider, bounded.
    pub providers: provider::ProviderMetrics,
    /// `sluice_spool_bytes`: bytes of the spool's segment files on disk,
    /// set at each scrape.
    pub spool_bytes: IntGauge,
    /// Size of each watched volume (`volume`, `path`), set at each scrape:
    /// with the free bytes, how full it is.
    pub storage_size_bytes: IntGaugeVec,
    /// `sluice_config_loaded_timestamp_seconds`: when the policy in force
    /// was loaded (start or last successful reload).
    config_loaded: IntGauge,
    /// `sluice_draining`: 1 while draining for shutdown, set at each scrape.
    pub draining: IntGauge,
    /// Policy reloads by result (`success`, `failure`), both from 0 so
    /// that an alert's `increase()` sees the first failure.
    pub reloads: IntCounterVec,
    /// `sluice_config_reload_failing`: 1 from a failed reload until one
    /// succeeds (the previous policy keeps serving meanwhile).
    pub reload_failing: IntGauge,
    config_info: IntGaugeVec,
    latency: Histogram,
    /// Per ESMTP listener (`listen` address, a handful): how many of its
    /// relay_hosts entries a masquerading proxy can impersonate.
    pub relay_private_ranges: IntGaugeVec,
    /// Sessions closed because the PROXY header they owed was missing or
    /// broken, by `reason` (read, missing, malformed).
    pub proxy_refused_total: IntCounterVec,
    /// Admin API requests refused, by `reason` (unauthenticated, bad_credentials, error).
    pub admin_refused_total: IntCounterVec,
    /// Free bytes per watched volume (`volume` spool or logs, and its `path`:
    /// a handful), set at each scrape.
    pub storage_free_bytes: IntGaugeVec,
    /// Free inodes per watched volume, set at each scrape.
    pub storage_free_inodes: IntGaugeVec,
    /// `sluice_storage_short`: 1 while new mail is refused for lack of space.
    pub storage_short: IntGauge,
    /// The working set the memory watch measured (cgroup usage less
    /// page cache), set at each scrape.
    pub memory_usage_bytes: IntGauge,
    /// The memory limits in force, by `limit` (hard, soft, low).
    pub memory_limit_bytes: IntGaugeVec,
    /// `sluice_memory_short`: 1 while new mail is refused for lack of memory.
    pub memory_short: IntGauge,
    /// Message bodies released from memory under pressure (read back from
    /// the spool when delivered).
    pub memory_bodies_released_total: IntCounter,
    /// `sluice_memory_short_total`: times the working set passed the soft
    /// limit (a spell can be shorter than the scrape interval).
    pub memory_short_total: IntCounter,
}

/// Register a new metric on `r`.
pub(crate) fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// Register a new metric on `r`.
pub(crate) fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// Register a new metric on `r`.
pub(crate) fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// Register a new metric on `r`.
pub(crate) fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(provider::DEFAULT_LIMIT)
    }
}

impl Metrics {
    /// The registry, for the parts that keep their own metrics on it.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A registry with every metric registered, all at zero; at most
    /// `provider_limit` providers get their own per-provider series.
    pub fn new(provider_limit: usize) -> Metrics {
        let r = Registry::new();
        let connections = IntGaugeVec::new(
            Opts::new("connection_count", "Open SMTP sessions"),
            &["service"],
        )
        .expect("valid");
        r.register(Box::new(connections.clone())).expect("unique");
        let config_info = IntGaugeVec::new(
            Opts::new(
                "sluice_config_info",
                "The loaded policy, by content hash (always 1)",
            ),
            &["hash"],
        )
        .expect("valid");
        r.register(Box::new(config_info.clone())).expect("unique");
        let latency = Histogram::with_opts(
            HistogramOpts::new("delivery_latency_seconds", "Reception to delivery").buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0,
            ]),
        )
        .expect("valid");
        r.register(Box::new(latency.clone())).expect("unique");
        let m = Metrics {
            providers: provider::ProviderMetrics::new(&r, provider_limit),
            spool_bytes: gauge(
                &r,
                "sluice_spool_bytes",
                "Bytes of the spool's segment files on disk",
            ),
            storage_size_bytes: gauge_vec(
                &r,
                "sluice_storage_size_bytes",
                "Size of a volume the MTA writes (used plus available, as df shows)",
                &["volume", "path"],
            ),
            config_loaded: gauge(
                &r,
                "sluice_config_loaded_timestamp_seconds",
                "When the policy in force was loaded (unix seconds)",
            ),
            storage_free_bytes: gauge_vec(
                &r,
                "sluice_storage_free_bytes",
                "Free bytes on a volume the MTA writes",
                &["volume", "path"],
            ),
            storage_free_inodes: gauge_vec(
                &r,
                "sluice_storage_free_inodes",
                "Free inodes on a volume the MTA writes",
                &["volume", "path"],
            ),
            storage_short: gauge(
                &r,
                "sluice_storage_short",
                "1 while new mail is refused because a volume is short of space",
            ),
            memory_usage_bytes: gauge(
                &r,
                "sluice_memory_usage_bytes",
                "Working set of the MTA: its cgroup's usage less page cache",
            ),
            memory_limit_bytes: gauge_vec(
                &r,
                "sluice_memory_limit_bytes",
                "Memory limits in force: hard, soft (refuse new mail), low (release bodies)",
                &["limit"],
            ),
            memory_short: gauge(
                &r,
                "sluice_memory_short",
                "1 while new mail is refused because the working set passed the soft limit",
            ),
            memory_bodies_released_total: {
                let c = IntCounter::new(
                    "sluice_memory_bodies_released_total",
                    "Message bodies released from memory under pressure",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            memory_short_total: {
                let c = IntCounter::new(
                    "sluice_memory_short_total",
                    "Times the working set passed the soft limit and new mail was refused",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            relay_private_ranges: gauge_vec(
                &r,
                "sluice_listener_relay_private_ranges",
                "relay_hosts entries of a listener that overlap private ranges (relaying by \
                 address alone, which a masquerading proxy defeats)",
                &["listener"],
            ),
            proxy_refused_total: counter_vec(
                &r,
                "sluice_proxy_protocol_refused_total",
                "Sessions closed for a missing or malformed PROXY protocol header",
                &["reason"],
            ),
            admin_refused_total: counter_vec(
                &r,
                "sluice_admin_refused_total",
                "Admin API requests refused",
                &["reason"],
            ),
            connections_total: counter_vec(
                &r,
                "total_connection_count",
                "SMTP sessions accepted",
                &["service"],
            ),
            connections,
            received: counter_vec(
                &r,
                "total_messages_received",
                "Messages received",
                &["service"],
            ),
            delivered: counter_vec(
                &r,
                "total_messages_delivered",
                "Messages delivered",
                &["service"],
            ),
            transfail: counter_vec(
                &r,
                "total_messages_transfail",
                "Transient failures",
                &["service"],
            ),
            failed: counter_vec(
                &r,
                "total_messages_fail",
                "Permanent failures (bounces)",
                &["service"],
            ),
            classified: counter_vec(
                &r,
                "sluice_bounce_classifications_total",
                "Failure records by type and bounce classification",
                &["type", "classification"],
            ),
            reports: counter_vec(
                &r,
                "sluice_reports_received_total",
                "ARF feedback reports (Feedback) and out-of-band bounces (OOB, per recipient) logged",
                &["type"],
            ),
            expired: counter(&r, "total_messages_expired", "Messages expired"),
            xfer_out: counter(
                &r,
                "sluice_xfer_out_total",
                "Messages handed over to another node (XferOut records)",
            ),
            xfer_in: counter(
                &r,
                "sluice_xfer_in_total",
                "Messages taken over from another node (XferIn records)",
            ),
            rejections: counter(
                &r,
                "smtp_server_rejections",
                "4xx/5xx replies sent by the SMTP server",
            ),
            delayed_rate: counter(
                &r,
                "delayed_due_to_message_rate_throttle",
                "Promotions delayed by max_message_rate",
            ),
            delayed: counter_vec(
                &r,
                "sluice_delayed_total",
                "Messages delayed without an attempt, by reason",
                &["reason"],
            ),
            delayed_ready_full: counter(
                &r,
                "delayed_due_to_ready_queue_full",
                "Promotions delayed by a full ready queue",
            ),
            scheduled: gauge(
                &r,
                "scheduled_count_total",
                "Messages waiting in scheduled queues",
            ),
            ready: gauge(&r, "ready_count_total", "Messages waiting in ready queues"),
            spooled: gauge(&r, "message_count", "Messages in the spool"),
            queued: gauge(
                &r,
                "sluice_queued_messages",
                "Messages waiting on this node: scheduled plus ready",
            ),
            oldest_age: gauge(
                &r,
                "sluice_oldest_message_age_seconds",
                "Seconds since the oldest message in the spool was received",
            ),
            draining: gauge(&r, "sluice_draining", "1 while draining for shutdown"),
            reloads: counter_vec(
                &r,
                "sluice_config_reloads_total",
                "Policy reloads, by result",
                &["result"],
            ),
            reload_failing: gauge(
                &r,
                "sluice_config_reload_failing",
                "1 while the last policy reload failed (the previous policy keeps serving)",
            ),
            config_info,
            latency,
            registry: r,
        };
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        m
    }

    /// Report which policy is loaded (one series, replaced on reload), and
    /// that it was loaded now.
    pub fn set_config(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
        self.config_loaded.set(chrono::Utc::now().timestamp());
        self.reload_failing.set(0);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = vec![];
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text encoding is UTF-8")
    }
}

impl crate::log::Observer for Metrics {
    /// Count a log record: every disposition passes through here.
    fn observe(&self, rec: &LogRecord) {
        // reception to delivery, for both latency histograms
        let age = match rec.kind {
            RecordType::Delivery => rec
                .created_at
                .map(|c| (chrono::Utc::now() - c).as_seconds_f64().max(0.0)),
            _ => None,
        };
        self.providers.observe(rec, age);
        let service = rec.delivery_protocol.as_deref().unwrap_or("none");
        if let Some(kind) = match rec.kind {
            RecordType::Bounce => Some("Bounce"),
            RecordType::TransientFailure => Some("TransientFailure"),
            RecordType::Expiration => Some("Expiration"),
            RecordType::Oob => Some("OOB"),
            _ => None,
        } {
            self.classified
                .with_label_values(&[kind, rec.bounce_classification.as_str()])
                .inc();
        }
        match rec.kind {
            RecordType::Reception => self.received.with_label_values(&["esmtp_listener"]).inc(),
            RecordType::Delivery => {
                self.delivered.with_label_values(&[service]).inc();
                if let Some(age) = age {
                    self.latency.observe(age);
                }
            }
            RecordType::TransientFailure => self.transfail.with_label_values(&[service]).inc(),
            RecordType::Bounce => self.failed.with_label_values(&[service]).inc(),
            RecordType::Expiration => self.expired.inc(),
            RecordType::Rejection => self.rejections.inc(),
            RecordType::Feedback => self.reports.with_label_values(&["Feedback"]).inc(),
            RecordType::Oob => self.reports.with_label_values(&["OOB"]).inc(),
            RecordType::XferOut => self.xfer_out.inc(),
            RecordType::XferIn => self.xfer_in.inc(),
            RecordType::Delayed => {
                if let Some(reason) = rec.delay_reason {
                    self.delayed
                        .with_label_values(&[reason.metric_label()])
                        .inc();
                    match reason {
                        DelayReason::MessageRateThrottle => self.delayed_rate.inc(),
                        DelayReason::ReadyQueueWasFull => self.delayed_ready_full.inc(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}
