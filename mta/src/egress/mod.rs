//! Egress: sources, pools and paths (spec §4), and one ready queue per egress
//! path (source × site). A ready queue's dispatcher opens connections up to
//! `connection_limit`, reuses each for up to `max_deliveries_per_connection`
//! messages, closes it after `idle_timeout` without work, and applies the
//! path's message and connection rates. Outcomes go back to the queue manager.

pub mod dns;
pub mod site;

use crate::delivery::smtp::{ClientError, Reply, SmtpClient};
use crate::delivery::{Attempt, Outcome, RecipientResult};
use crate::log::{PeerAddress, Response};
use crate::message::MessageRef;
use crate::policy::{Fetched, Policy};
use crate::queue::QueueManager;
use parking_lot::Mutex;
use site::Site;
use sluice_common::egress::{EgressPathConfig, EgressPool, EgressSource};
use sluice_common::queue_config::QueueConfig;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A message waiting in a ready queue, with the scheduled queue it came from.
pub struct Ready {
    pub msg: MessageRef,
    pub queue: String,
    pub config: Arc<QueueConfig>,
}

/// How a ready queue delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Proto {
    Smtp,
    /// custom_lua; the constructor gets the (domain, tenant, campaign) of the
    /// scheduled queue that created the ready queue, as KumoMTA passes one
    /// representative feeding queue.
    Lua {
        constructor: String,
        domain: String,
        tenant: Option<String>,
        campaign: Option<String>,
        batch: LuaBatch,
    },
    /// The `deferred_smtp_inject.kumomta.internal` dispatcher (spec §6.4).
    DeferredInject,
}

/// custom_lua batching (spec §5.3): `send` for one message at a time, or
/// `send_batch` with `min..=size` messages, waiting up to `max_latency` for
/// the minimum.
#[derive(Debug, Clone, PartialEq)]
pub struct LuaBatch {
    pub size: usize,
    pub min: usize,
    pub max_latency: Duration,
}

impl Proto {
    fn label(&self) -> String {
        match self {
            Proto::Smtp => "smtp_client".into(),
            Proto::Lua { constructor, .. } => format!("lua:{constructor}"),
            Proto::DeferredInject => "defersmtpinject".into(),
        }
    }
}

pub struct ReadyQueue {
    pub name: String,
    pub source: Arc<EgressSource>,
    pub site: Site,
    pub proto: Proto,
    config: Mutex<crate::policy::Fetched<EgressPathConfig>>,
    items: Mutex<VecDeque<Ready>>,
    connections: AtomicUsize,
    work: Notify,
}

impl ReadyQueue {
    pub fn config(&self) -> Arc<EgressPathConfig> {
        self.config.lock().value.clone()
    }

    pub fn len(&self) -> usize {
        self.items.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pop(&self) -> Option<Ready> {
        self.items.lock().pop_front()
    }
}

/// Weighted round robin over a pool's entries (spec §4.3).
#[derive(Default, Debug)]
pub struct Wrr {
    idx: usize,
    cw: i64,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Wrr {
    /// The next entry, or `None` when every weight is zero.
    pub fn next(&mut self, weights: &[u32]) -> Option<usize> {
        let max = *weights.iter().max()? as i64;
        if max == 0 {
            return None;
        }
        if weights.len() == 1 {
            return Some(0);
        }
        let g = weights.iter().copied().fold(0, gcd) as i64;
        loop {
            self.idx = (self.idx + 1) % weights.len();
            if self.idx == 0 {
                self.cw -= g;
                if self.cw <= 0 {
                    self.cw = max;
                }
            }
            if i64::from(weights[self.idx]) >= self.cw {
                return Some(self.idx);
            }
        }
    }
}

pub struct Egress {
    policy: Arc<Policy>,
    pub dns: dns::Dns,
    pools: Mutex<HashMap<String, (Arc<EgressPool>, Instant)>>,
    sources: Mutex<HashMap<String, (Arc<EgressSource>, Instant)>>,
    ready: Mutex<HashMap<String, Arc<ReadyQueue>>>,
}

pub enum Placement {
    Queued,
    /// The ready queue holds `max_ready` messages already.
    Full,
}

impl Egress {
    pub fn new(policy: Arc<Policy>, dns: dns::Dns) -> Self {
        Egress {
            policy,
            dns,
            pools: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            ready: Mutex::new(HashMap::new()),
        }
    }

    pub async fn pool(&self, name: &str) -> Result<Arc<EgressPool>, String> {
        if let Some((p, at)) = self.pools.lock().get(name)
            && at.elapsed() < p.ttl
        {
            return Ok(p.clone());
        }
        let pool = Arc::new(
            self.policy
                .get_egress_pool(name)
                .await
                .map_err(|e| e.to_string())?,
        );
        // resolving a pool resolves all its sources: any error fails it
        for e in &pool.entries {
            self.source(&e.name).await?;
        }
        self.pools
            .lock()
            .insert(name.to_string(), (pool.clone(), Instant::now()));
        Ok(pool)
    }

    pub async fn source(&self, name: &str) -> Result<Arc<EgressSource>, String> {
        if let Some((s, at)) = self.sources.lock().get(name)
            && at.elapsed() < s.ttl
        {
            return Ok(s.clone());
        }
        let source = Arc::new(
            self.policy
                .get_egress_source(name)
                .await
                .map_err(|e| e.to_string())?,
        );
        self.sources
            .lock()
            .insert(name.to_string(), (source.clone(), Instant::now()));
        Ok(source)
    }

    /// The ready queue for (source, site), created with its path config on
    /// first use and refreshed when `refresh_interval` has passed.
    pub async fn ready_queue(
        &self,
        source: Arc<EgressSource>,
        site: Site,
        routing_domain: &str,
        proto: Proto,
    ) -> Result<Arc<ReadyQueue>, String> {
        let name = format!("{}->{}@{}", source.name, site.name, proto.label());
        let existing = self.ready.lock().get(&name).cloned();
        let epoch = self.policy.epoch();
        if let Some(rq) = &existing {
            let fetched = rq.config.lock();
            let c = &fetched.value;
            if fetched.is_fresh(c.refresh_strategy, c.refresh_interval, epoch) {
                return Ok(rq.clone());
            }
        }
        let config = self
            .policy
            .get_egress_path_config(routing_domain, &source.name, &site.name)
            .await;
        let config = match (config, existing) {
            (Ok(c), Some(rq)) => {
                *rq.config.lock() = Fetched::new(Arc::new(c), epoch);
                return Ok(rq);
            }
            (Err(e), Some(rq)) => {
                tracing::error!(
                    ready_queue = name,
                    "get_egress_path_config failed, keeping previous config: {e}"
                );
                let old = rq.config();
                *rq.config.lock() = Fetched::new(old, epoch);
                return Ok(rq);
            }
            (Ok(c), None) => Arc::new(c),
            (Err(e), None) => return Err(format!("get_egress_path_config for {name}: {e}")),
        };
        let rq = Arc::new(ReadyQueue {
            name: name.clone(),
            source,
            site,
            proto,
            config: Mutex::new(Fetched::new(config, epoch)),
            items: Mutex::new(VecDeque::new()),
            connections: AtomicUsize::new(0),
            work: Notify::new(),
        });
        Ok(self.ready.lock().entry(name).or_insert(rq).clone())
    }

    pub fn ready_queues(&self) -> Vec<Arc<ReadyQueue>> {
        self.ready.lock().values().cloned().collect()
    }
}

/// Connections wanted for `queued` ready messages under `limit` (spec §4.4).
fn wanted_connections(queued: usize, limit: usize) -> usize {
    let ideal = (limit as f64 * (1.0 - (-0.023 * queued as f64).exp())).ceil() as usize;
    queued.min(ideal.max(1)).min(limit)
}

/// Add a message to a ready queue and make sure enough connections serve it.
pub fn enqueue(qm: &Arc<QueueManager>, rq: &Arc<ReadyQueue>, item: Ready) -> Placement {
    let queued = {
        let mut items = rq.items.lock();
        if items.len() >= rq.config().max_ready {
            return Placement::Full;
        }
        items.push_back(item);
        items.len()
    };
    rq.work.notify_one();
    let limit = rq.config().connection_limit.limit;
    let wanted = wanted_connections(queued, limit);
    loop {
        let current = rq.connections.load(Ordering::Acquire);
        if current >= wanted {
            break;
        }
        if rq
            .connections
            .compare_exchange(current, current + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            spawn_connection(qm.clone(), rq.clone());
        }
    }
    Placement::Queued
}

/// Map one reply to a recipient outcome (spec §5.1 table).
pub fn classify(reply: &Reply) -> Outcome {
    let resp = Response::new(reply.code, &reply.text.replace('\n', " "));
    match reply.code {
        200..=299 => Outcome::Delivered(resp),
        300..=499 | 503 => Outcome::Transient(resp),
        _ => Outcome::Bounced(resp),
    }
}

/// An attempt that failed before reaching the peer: one outcome for all.
fn failed(item: &Ready, outcome: Outcome) -> Attempt {
    Attempt::for_all("ESMTP", None, item.msg.recipients(), outcome)
}

/// Wait for work for up to `idle`; `None` when none came or a drain began.
async fn next_item(qm: &QueueManager, rq: &ReadyQueue, idle: Duration) -> Option<Ready> {
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        if qm.is_draining() {
            return None;
        }
        let notified = rq.work.notified();
        if let Some(item) = rq.pop() {
            return Some(item);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return rq.pop();
        }
    }
}

/// Open a connection to the first reachable host of the site's plan.
async fn connect(
    dns: &dns::Dns,
    rq: &ReadyQueue,
    config: &Arc<EgressPathConfig>,
) -> Result<SmtpClient, (u16, String)> {
    let port = rq.source.remote_port;
    let ehlo = config
        .ehlo_domain
        .clone()
        .or_else(|| rq.source.ehlo_domain.clone())
        .unwrap_or_else(crate::hostname);
    let mut errors = vec![];
    let mut candidates = 0;
    for target in &rq.site.targets {
        let port = port.or(target.port).unwrap_or(config.smtp_port);
        let addrs = match site::resolve(dns, target, port, config.ip_lookup_strategy).await {
            Ok(a) => a,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for addr in addrs {
            if config.skip_hosts.iter().any(|n| n.contains(&addr.ip())) {
                continue;
            }
            if config
                .prohibited_hosts
                .iter()
                .any(|n| n.contains(&addr.ip()))
            {
                return Err((
                    550,
                    format!(
                        "5.4.4 {} resolves to {} which is on the prohibited_hosts list",
                        target.name,
                        addr.ip()
                    ),
                ));
            }
            candidates += 1;
            match SmtpClient::connect(
                &target.name,
                addr,
                rq.source.source_address,
                &ehlo,
                config.clone(),
            )
            .await
            {
                Ok(c) => return Ok(c),
                Err(e) => errors.push(format!("{}:{}: {e}", target.name, addr)),
            }
        }
    }
    if candidates == 0 && errors.is_empty() {
        return Err((
            451,
            "4.4.4 KumoMTA internal: MX consisted solely of hosts on the skip_hosts list".into(),
        ));
    }
    Err((
        400,
        format!(
            "KumoMTA internal: failed to connect to any candidate hosts: {}",
            errors.join(", ")
        ),
    ))
}

/// Deliver one message over `client`, in batches of `max_recipients_per_batch`.
async fn deliver(
    client: &mut SmtpClient,
    item: &Ready,
    batch: usize,
) -> Result<Attempt, (ClientError, Vec<RecipientResult>)> {
    let data = item.msg.data().unwrap_or_default();
    let sender = item.msg.sender();
    let rcpts = item.msg.recipients();
    let mut results = vec![];
    for (i, chunk) in rcpts.chunks(batch.max(1)).enumerate() {
        match client.send(&sender, chunk, &data).await {
            Ok(tx) => results.extend(tx.results.iter().map(|(r, reply)| RecipientResult {
                recipient: r.clone(),
                outcome: classify(reply),
            })),
            Err(e) => {
                // the failed chunk and everything after it stay transient
                let (code, text) = match &e {
                    ClientError::Timeout(..) => (421, format!("4.4.2 KumoMTA internal: {e}")),
                    _ => (
                        400,
                        format!("KumoMTA internal: failed to send message: {e}"),
                    ),
                };
                for r in rcpts[i * batch.max(1)..].iter() {
                    results.push(RecipientResult {
                        recipient: r.clone(),
                        outcome: Outcome::Transient(Response::new(code, &text)),
                    });
                }
                return Err((e, results));
            }
        }
    }
    Ok(Attempt {
        protocol: "ESMTP",
        peer: Some(PeerAddress {
            name: client.name.clone(),
            addr: client.peer.ip().to_string(),
        }),
        tls: client.tls.clone(),
        results,
    })
}

/// Start a connection task (boxed: a connection may start its successor).
fn spawn_connection(qm: Arc<QueueManager>, rq: Arc<ReadyQueue>) {
    let task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match rq.proto {
        Proto::Smtp => Box::pin(run_connection(qm, rq)),
        Proto::Lua { .. } => Box::pin(run_lua_connection(qm, rq)),
        Proto::DeferredInject => Box::pin(run_deferred_inject(qm, rq)),
    };
    tokio::spawn(task);
}

/// A custom_lua send result as a recipient outcome (spec §5.3).
fn lua_outcome(result: &Result<String, crate::policy::EventError>) -> (Outcome, bool) {
    use crate::policy::EventError;
    match result {
        Ok(text) => (Outcome::Delivered(Response::new(200, text)), false),
        Err(EventError::Rejected { code, text }) if (400..500).contains(code) => {
            (Outcome::Transient(Response::new(*code, text)), *code == 421)
        }
        Err(EventError::Rejected { code, text }) => {
            (Outcome::Bounced(Response::new(*code, text)), false)
        }
        Err(EventError::Failed(e)) => (
            Outcome::Transient(Response::new(
                400,
                &format!("KumoMTA internal: error in deliver_message: {e}"),
            )),
            true,
        ),
    }
}

/// One of `connection_limit` workers of the deferred-inject ready queue:
/// each runs the deferred-inject event for one message at a time.
async fn run_deferred_inject(qm: Arc<QueueManager>, rq: Arc<ReadyQueue>) {
    let _busy = qm.delivery_in_flight();
    loop {
        let config = rq.config();
        let Some(item) = next_item(&qm, &rq, config.idle_timeout).await else {
            break;
        };
        let Some(item) = pace(&qm, &rq, &config, item).await else {
            break;
        };
        qm.deferred_inject(&item, &rq.name).await;
    }
    connection_ended(&qm, &rq);
}

/// A custom_lua connection: the constructor runs once per connection, and
/// again after a 421 or an error closed the previous one.
async fn run_lua_connection(qm: Arc<QueueManager>, rq: Arc<ReadyQueue>) {
    let _busy = qm.delivery_in_flight();
    let Proto::Lua {
        constructor,
        domain,
        tenant,
        campaign,
        batch,
    } = rq.proto.clone()
    else {
        unreachable!("started for Lua ready queues only")
    };
    let peer = PeerAddress {
        name: format!("Lua via {constructor}"),
        addr: "0.0.0.0".into(),
    };
    let attempt = |item: &Ready, outcome: Outcome| {
        Attempt::for_all("Lua", Some(peer.clone()), item.msg.recipients(), outcome)
    };
    'connections: loop {
        let config = rq.config();
        let Some(first) = next_item(&qm, &rq, config.idle_timeout).await else {
            break;
        };
        let conn = match qm
            .policy()
            .lua_connection(
                &constructor,
                &domain,
                tenant.as_deref(),
                campaign.as_deref(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let text =
                    format!("KumoMTA internal: failed to connect to any candidate hosts: {e}");
                let attempt = failed(&first, Outcome::Transient(Response::new(400, &text)));
                qm.complete(&first, &rq.name, attempt).await;
                continue;
            }
        };
        let mut delivered = 0;
        let mut next = Some(first);
        while let Some(first) = next.take() {
            let (items, throttled) = gather(&qm, &rq, &config, first, &batch).await;
            let mut sendable = Vec::with_capacity(items.len());
            for item in items {
                match qm.load_body(&item.msg) {
                    Ok(()) => sendable.push(item),
                    Err(e) => {
                        let text = format!("KumoMTA internal: cannot read spooled body: {e}");
                        let a = attempt(&item, Outcome::Transient(Response::new(400, &text)));
                        qm.complete(&item, &rq.name, a).await;
                    }
                }
            }
            let mut closing = false;
            if !sendable.is_empty() {
                let result = if batch.size <= 1 {
                    conn.send(&sendable[0].msg).await
                } else {
                    let msgs: Vec<_> = sendable.iter().map(|i| i.msg.clone()).collect();
                    conn.send_batch(&msgs).await
                };
                let (outcome, close) = lua_outcome(&result);
                closing = close;
                for item in &sendable {
                    qm.complete(item, &rq.name, attempt(item, outcome.clone()))
                        .await;
                }
                delivered += sendable.len();
            }
            if throttled {
                conn.close().await;
                break 'connections;
            }
            if closing || delivered >= config.max_deliveries_per_connection {
                conn.close().await;
                continue 'connections;
            }
            next = next_item(&qm, &rq, config.idle_timeout).await;
        }
        conn.close().await;
        if rq.is_empty() {
            break;
        }
    }
    connection_ended(&qm, &rq);
}

/// One connection's life: take work, connect, deliver until idle or the
/// per-connection limit, then let another connection take over.
async fn run_connection(qm: Arc<QueueManager>, rq: Arc<ReadyQueue>) {
    let _busy = qm.delivery_in_flight();
    let mut failures = 0usize;
    'connections: loop {
        let config = rq.config();
        let Some(first) = next_item(&qm, &rq, config.idle_timeout).await else {
            break;
        };
        if let Some(rate) = &config.max_connection_rate
            && let Some(wait) = qm.throttle_check(&format!("{}-connection-rate", rq.name), rate)
        {
            if wait < config.idle_timeout {
                rq.items.lock().push_front(first);
                tokio::time::sleep(wait).await;
                continue;
            }
            qm.ready_throttled(&rq, first, wait);
            break;
        }
        let mut client = match connect(&qm.egress().dns, &rq, &config).await {
            Ok(c) => c,
            Err((code, text)) => {
                failures += 1;
                let mut items = vec![first];
                if code >= 500 || failures > config.consecutive_connection_failures_before_delay {
                    items.extend(std::iter::from_fn(|| rq.pop()));
                    failures = 0;
                }
                for item in &items {
                    let resp = Response::new(code, &text);
                    let outcome = match code >= 500 {
                        true => Outcome::Bounced(resp),
                        false => Outcome::Transient(resp),
                    };
                    qm.complete(item, &rq.name, failed(item, outcome)).await;
                }
                continue;
            }
        };
        failures = 0;
        let mut delivered = 0;
        let mut item = Some(first);
        while let Some(current) = item.take() {
            let Some(current) = pace(&qm, &rq, &config, current).await else {
                client.quit().await;
                break 'connections;
            };
            if current.msg.data().is_none() && qm.load_body(&current.msg).is_err() {
                qm.complete(
                    &current,
                    &rq.name,
                    failed(
                        &current,
                        Outcome::Transient(Response::new(
                            400,
                            "KumoMTA internal: cannot read spooled body",
                        )),
                    ),
                )
                .await;
                item = next_item(&qm, &rq, config.idle_timeout).await;
                continue;
            }
            match deliver(&mut client, &current, config.max_recipients_per_batch).await {
                Ok(attempt) => {
                    let closing = attempt.results.iter().any(
                        |r| matches!(&r.outcome, Outcome::Transient(resp) if resp.code == 421),
                    );
                    qm.complete(&current, &rq.name, attempt).await;
                    delivered += 1;
                    if closing {
                        continue 'connections;
                    }
                }
                Err((e, results)) => {
                    tracing::debug!(
                        ready_queue = rq.name,
                        "connection failed mid-transaction: {e}"
                    );
                    let attempt = Attempt {
                        protocol: "ESMTP",
                        peer: None,
                        tls: None,
                        results,
                    };
                    qm.complete(&current, &rq.name, attempt).await;
                    continue 'connections;
                }
            }
            if delivered >= config.max_deliveries_per_connection {
                client.quit().await;
                continue 'connections;
            }
            item = next_item(&qm, &rq, config.idle_timeout).await;
        }
        client.quit().await;
        if rq.is_empty() {
            break;
        }
    }
    connection_ended(&qm, &rq);
}

/// A connection task ends: free its slot, and start another if work
/// arrived after it decided to stop.
fn connection_ended(qm: &Arc<QueueManager>, rq: &Arc<ReadyQueue>) {
    rq.connections.fetch_sub(1, Ordering::AcqRel);
    if !rq.is_empty()
        && rq
            .connections
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        spawn_connection(qm.clone(), rq.clone());
    }
}

/// The next batch, starting with `first`: what is ready now, then waiting up
/// to `max_latency` for at least `min`; each message paced by the path's
/// rates. `true` when a throttle handed the rest back to the scheduled queues.
async fn gather(
    qm: &Arc<QueueManager>,
    rq: &ReadyQueue,
    config: &EgressPathConfig,
    first: Ready,
    batch: &LuaBatch,
) -> (Vec<Ready>, bool) {
    let mut items = vec![];
    let deadline = tokio::time::Instant::now() + batch.max_latency;
    let mut next = Some(first);
    while let Some(item) = next.take() {
        match pace(qm, rq, config, item).await {
            Some(item) => items.push(item),
            None => return (items, true),
        }
        if items.len() >= batch.size {
            break;
        }
        next = match rq.pop() {
            Some(item) => Some(item),
            None if items.len() >= batch.min => None,
            None => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    None
                } else {
                    next_item(qm, rq, left).await
                }
            }
        };
    }
    (items, false)
}

/// Honour the path's message rates before sending `item`: wait when the
/// throttle asks for less than `idle_timeout`; otherwise hand `item` and
/// everything ready back to the scheduled queues and return `None`.
async fn pace(
    qm: &Arc<QueueManager>,
    rq: &ReadyQueue,
    config: &EgressPathConfig,
    item: Ready,
) -> Option<Ready> {
    match path_rate_wait(qm, rq, config) {
        Some(wait) if wait >= config.idle_timeout => {
            qm.ready_throttled(rq, item, wait);
            None
        }
        Some(wait) => {
            tokio::time::sleep(wait).await;
            Some(item)
        }
        None => Some(item),
    }
}

/// The longest wait any of the path's message-rate throttles asks for.
fn path_rate_wait(
    qm: &QueueManager,
    rq: &ReadyQueue,
    config: &EgressPathConfig,
) -> Option<Duration> {
    for (name, spec) in config.message_rate_throttles() {
        let key = if name == "max_message_rate" {
            format!("kumomta.max_message_rate.{}", rq.name)
        } else {
            format!("kumomta.{name}.{}", rq.name)
        };
        if let Some(wait) = qm.throttle_check(&key, &spec) {
            return Some(wait);
        }
    }
    None
}

impl ReadyQueue {
    /// Take out the waiting messages `f` selects.
    pub fn take_matching(&self, f: impl Fn(&Ready) -> bool) -> Vec<Ready> {
        let mut items = self.items.lock();
        let (taken, kept): (Vec<Ready>, Vec<Ready>) = items.drain(..).partition(|i| f(i));
        items.extend(kept);
        taken
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Take every waiting message out (to send them back to their queues).
    pub fn drain(&self) -> Vec<Ready> {
        self.items.lock().drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_round_robin_matches_the_spec() {
        let mut w = Wrr::default();
        let picks: Vec<usize> = (0..9).map(|_| w.next(&[2, 1]).unwrap()).collect();
        // A=2, B=1 yields B, A, A, B, A, A, ...
        assert_eq!(picks, vec![1, 0, 0, 1, 0, 0, 1, 0, 0]);
        let mut w = Wrr::default();
        let mut counts = [0; 2];
        for _ in 0..300 {
            counts[w.next(&[2, 1]).unwrap()] += 1;
        }
        assert_eq!(counts, [200, 100]);
        assert_eq!(Wrr::default().next(&[0, 0]), None);
        assert_eq!(Wrr::default().next(&[5]), Some(0));
    }

    #[test]
    fn connection_ramp() {
        assert_eq!(wanted_connections(1, 32), 1);
        assert_eq!(wanted_connections(0, 32), 0);
        assert!(wanted_connections(100, 32) <= 32);
        assert_eq!(wanted_connections(1000, 2), 2);
    }
}
