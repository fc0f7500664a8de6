//! Per-provider series, bounded. A sender wants outcomes and backlog for
//! Gmail, Yahoo or Outlook, not one total; but a label per destination site
//! grows with every domain mailed (10,000 domains would be 10,000 series of
//! each metric), which is what takes a Prometheus down. So the label is the
//! provider — the egress path's `provider_name` (or the queue's), which an
//! operator sets to group sites, else the site name as KumoMTA does — and at
//! most `limit` distinct labels exist at once; the rest count under
//! `other`. A label unused for an hour gives its place to a new one (its
//! series are dropped, which Prometheus reads as a counter reset), so the
//! places go to the providers that carry mail now, not the first ones seen.
//!
//! Bound: `limit + 1` labels × 15 series (three counters, two gauges, and a
//! histogram of 7 buckets plus `+Inf`, sum and count).

use crate::log::{LogRecord, RecordType};
use parking_lot::Mutex;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Registry,
};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// The label of everything beyond the limit.
pub const OTHER: &str = "other";

/// How many providers get their own label unless configured.
pub const DEFAULT_LIMIT: usize = 100;

/// How long a label may go unused before a new provider may take its place.
const IDLE: Duration = Duration::from_secs(3600);

/// Latency buckets: coarser than the fleet-wide histogram's, as there are
/// up to `limit` of these.
const BUCKETS: [f64; 7] = [0.1, 1.0, 10.0, 60.0, 300.0, 3600.0, 86400.0];

/// The per-provider metric families and the labels in use.
pub struct ProviderMetrics {
    limit: usize,
    /// The labels in use (`other` among them once used), with their
    /// counters.
    labels: Mutex<HashMap<String, Slot>>,
    delivered: IntCounterVec,
    transfail: IntCounterVec,
    failed: IntCounterVec,
    queued: IntGaugeVec,
    connections: IntGaugeVec,
    latency: HistogramVec,
}

/// One label's place: when it was last used, and its counters (kept, so
/// that counting a record does not look the label up in each family).
struct Slot {
    used: Instant,
    delivered: IntCounter,
    transfail: IntCounter,
    failed: IntCounter,
    latency: Histogram,
}

/// One ready queue's backlog, for [`ProviderMetrics::set_backlog`].
pub struct Backlog<'a> {
    /// Its provider: the path's `provider_name`, else the site.
    pub provider: &'a str,
    /// Messages waiting in it.
    pub queued: usize,
    /// Connections serving it.
    pub connections: usize,
}

impl ProviderMetrics {
    /// Register the families on `r`, with at most `limit` provider labels
    /// beside `other`.
    pub fn new(r: &Registry, limit: usize) -> Self {
        let counter = |name, help| super::counter_vec(r, name, help, &["provider"]);
        let gauge = |name, help| super::gauge_vec(r, name, help, &["provider"]);
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "sluice_delivery_latency_by_provider_seconds",
                "Reception to delivery, by provider",
            )
            .buckets(BUCKETS.to_vec()),
            &["provider"],
        )
        .expect("valid metric");
        r.register(Box::new(latency.clone()))
            .expect("unique metric");
        ProviderMetrics {
            limit,
            labels: Mutex::new(HashMap::new()),
            delivered: counter(
                "total_messages_delivered_by_provider",
                "Messages delivered, by provider",
            ),
            transfail: counter(
                "total_messages_transfail_by_provider",
                "Transient failures, by provider",
            ),
            failed: counter(
                "total_messages_fail_by_provider",
                "Permanent failures (bounces), by provider",
            ),
            queued: gauge(
                "queued_count_by_provider",
                "Messages in ready queues, by provider",
            ),
            connections: gauge(
                "connection_count_by_provider",
                "Open delivery connections, by provider",
            ),
            latency,
        }
    }

    /// Run `f` on the label `provider` is counted under — itself while it
    /// has (or can get) a place, else `other` — and that label's counters.
    fn with_slot<R>(&self, provider: &str, f: impl FnOnce(&str, &Slot) -> R) -> R {
        let now = Instant::now();
        let mut labels = self.labels.lock();
        if let Some(slot) = labels.get_mut(provider) {
            slot.used = now;
            return f(provider, slot);
        }
        let label = match provider != OTHER && self.make_room(&mut labels, now) {
            true => provider,
            false => OTHER,
        };
        let slot = labels
            .entry(label.to_string())
            .or_insert_with(|| self.slot(label, now));
        slot.used = now;
        f(label, slot)
    }

    /// Whether a new label fits: under the limit, or after the stalest
    /// label idle for an hour gives its place up.
    fn make_room(&self, labels: &mut HashMap<String, Slot>, now: Instant) -> bool {
        let in_use = labels.len() - usize::from(labels.contains_key(OTHER));
        if in_use < self.limit {
            return true;
        }
        let stalest = labels
            .iter()
            .filter(|(name, _)| *name != OTHER)
            .min_by_key(|(_, slot)| slot.used)
            .map(|(name, slot)| (name.clone(), slot.used));
        match stalest {
            Some((name, used)) if now.duration_since(used) >= IDLE => {
                labels.remove(&name);
                self.forget(&name);
                true
            }
            _ => false,
        }
    }

    /// The counters of a label taking a place.
    fn slot(&self, label: &str, now: Instant) -> Slot {
        Slot {
            used: now,
            delivered: self.delivered.with_label_values(&[label]),
            transfail: self.transfail.with_label_values(&[label]),
            failed: self.failed.with_label_values(&[label]),
            latency: self.latency.with_label_values(&[label]),
        }
    }

    /// The label `provider` is counted under.
    pub fn label(&self, provider: &str) -> String {
        self.with_slot(provider, |label, _| label.to_string())
    }

    /// Drop the series of a label that gave up its place.
    fn forget(&self, label: &str) {
        for c in [&self.delivered, &self.transfail, &self.failed] {
            let _ = c.remove_label_values(&[label]);
        }
        for g in [&self.queued, &self.connections] {
            let _ = g.remove_label_values(&[label]);
        }
        let _ = self.latency.remove_label_values(&[label]);
    }

    /// Count an attempt's record under its provider; `age` is a
    /// delivery's time since reception, in seconds.
    pub fn observe(&self, rec: &LogRecord, age: Option<f64>) {
        if !matches!(
            rec.kind,
            RecordType::Delivery | RecordType::TransientFailure | RecordType::Bounce
        ) {
            return;
        }
        let Some(provider) = provider_of(rec) else {
            return;
        };
        self.with_slot(provider, |_, slot| match rec.kind {
            RecordType::Delivery => {
                slot.delivered.inc();
                if let Some(age) = age {
                    slot.latency.observe(age);
                }
            }
            RecordType::TransientFailure => slot.transfail.inc(),
            _ => slot.failed.inc(),
        });
    }

    /// Set the backlog gauges from every ready queue (at each scrape): a
    /// provider with nothing queued and no connection has no series.
    pub fn set_backlog<'a>(&self, queues: impl IntoIterator<Item = Backlog<'a>>) {
        let mut sums: HashMap<String, (i64, i64)> = HashMap::new();
        for q in queues {
            if q.queued == 0 && q.connections == 0 {
                continue;
            }
            let entry = sums.entry(self.label(q.provider)).or_default();
            entry.0 += q.queued as i64;
            entry.1 += q.connections as i64;
        }
        self.queued.reset();
        self.connections.reset();
        for (label, (queued, connections)) in sums {
            self.queued.with_label_values(&[&label]).set(queued);
            self.connections
                .with_label_values(&[&label])
                .set(connections);
        }
    }

    /// The provider labels in use now, `other` aside.
    #[cfg(test)]
    fn labels(&self) -> std::collections::HashSet<String> {
        let labels = self.labels.lock();
        labels.keys().filter(|l| *l != OTHER).cloned().collect()
    }
}

/// The provider of an attempt's record: its `provider_name`, else the site
/// of its ready queue (`source->site@protocol`); `None` without a path.
fn provider_of(rec: &LogRecord) -> Option<&str> {
    if let Some(p) = rec.provider_name.as_deref() {
        return Some(p);
    }
    site_of(&rec.site)
}

/// The site part of a ready queue's name; `None` for no name.
fn site_of(ready_queue: &str) -> Option<&str> {
    let (_, site) = crate::log::split_ready_queue(ready_queue);
    (!ready_queue.is_empty()).then_some(site)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Response;
    use std::collections::HashSet;

    fn delivery(site: &str, provider: Option<&str>) -> LogRecord {
        let mut rec = LogRecord::new(RecordType::Delivery, "id".into(), Response::new(250, "ok"));
        rec.site = format!("unspecified->{site}@smtp_client");
        rec.provider_name = provider.map(str::to_string);
        rec.created_at = Some(chrono::Utc::now());
        rec
    }

    impl ProviderMetrics {
        fn observe_now(&self, rec: &LogRecord) {
            self.observe(rec, Some(0.5));
        }
    }

    fn series(r: &Registry, family: &str) -> Vec<(String, u64)> {
        r.gather()
            .iter()
            .filter(|f| f.name() == family)
            .flat_map(|f| f.get_metric().iter())
            .map(|m| {
                let label = m.get_label()[0].value().to_string();
                (label, m.get_counter().get_value() as u64)
            })
            .collect()
    }

    #[test]
    fn the_provider_name_groups_sites_and_the_site_stands_in_without_one() {
        let r = Registry::new();
        let m = ProviderMetrics::new(&r, 10);
        m.observe_now(&delivery(
            "(alt1|alt2).gmail-smtp-in.l.google.com",
            Some("gmail"),
        ));
        m.observe_now(&delivery("gmail-smtp-in.l.google.com", Some("gmail")));
        m.observe_now(&delivery("mx.example.com", None));
        let mut got = series(&r, "total_messages_delivered_by_provider");
        got.sort();
        assert_eq!(
            got,
            [("gmail".into(), 2), ("mx.example.com".into(), 1)],
            "{got:?}"
        );
    }

    #[test]
    fn providers_beyond_the_limit_count_as_other() {
        let r = Registry::new();
        let m = ProviderMetrics::new(&r, 3);
        for i in 0..10_000 {
            m.observe_now(&delivery(&format!("mx.d{i}.example"), None));
        }
        let got = series(&r, "total_messages_delivered_by_provider");
        assert_eq!(got.len(), 4, "three providers and other: {got:?}");
        let other = got.iter().find(|(l, _)| l == OTHER).expect("other");
        assert_eq!(other.1, 9_997);
        assert_eq!(got.iter().map(|(_, n)| n).sum::<u64>(), 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_label_idle_for_an_hour_gives_its_place_to_a_new_provider() {
        let r = Registry::new();
        let m = ProviderMetrics::new(&r, 2);
        m.observe_now(&delivery("a", None));
        m.observe_now(&delivery("b", None));
        tokio::time::advance(Duration::from_secs(1800)).await;
        m.observe_now(&delivery("b", None));
        m.observe_now(&delivery("c", None));
        assert_eq!(m.label("c"), OTHER, "no label is idle yet");
        tokio::time::advance(Duration::from_secs(1800)).await;
        // a has been idle an hour; b only half of one
        assert_eq!(m.label("c"), "c");
        assert_eq!(m.labels(), HashSet::from(["b".into(), "c".into()]));
        let labels: HashSet<String> = series(&r, "total_messages_delivered_by_provider")
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        assert!(!labels.contains("a"), "a's series are dropped: {labels:?}");
    }

    #[test]
    fn backlog_gauges_sum_the_ready_queues_of_a_provider() {
        let r = Registry::new();
        let m = ProviderMetrics::new(&r, 10);
        let q = |provider, queued, connections| Backlog {
            provider,
            queued,
            connections,
        };
        m.set_backlog([q("gmail", 5, 1), q("gmail", 7, 2), q("idle", 0, 0)]);
        let gauges: Vec<(String, i64)> = r
            .gather()
            .iter()
            .filter(|f| f.name() == "queued_count_by_provider")
            .flat_map(|f| f.get_metric().iter())
            .map(|m| {
                (
                    m.get_label()[0].value().to_string(),
                    m.get_gauge().get_value() as i64,
                )
            })
            .collect();
        assert_eq!(gauges, [("gmail".to_string(), 12)]);
    }

    #[test]
    fn the_site_is_the_middle_of_a_ready_queue_name() {
        assert_eq!(
            site_of("pool-a->mx.example.com@smtp_client"),
            Some("mx.example.com")
        );
        assert_eq!(site_of("maildir@maildir"), Some("maildir"));
        assert_eq!(site_of(""), None);
    }
}
