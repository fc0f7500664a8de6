//! Start-up: load the policy, run `init`, open the spool and logs, recover
//! the spool, start the listeners; stop on SIGTERM/SIGINT.

use crate::listener::{Listener, Services};
use crate::log::Logger;
use crate::policy::{Policy, PolicySource};
use crate::queue::QueueManager;
use crate::spool::{Spool, SpoolOptions};
use std::sync::Arc;

/// The embedded policy run when no `--policy` is given: it accepts mail from
/// loopback on 127.0.0.1:2525 and delivers it into a maildir under
/// `./sluice-data/`.
pub const DEFAULT_POLICY: &str = include_str!("default_policy.lua");

/// This node's id, which log records carry as `nodeid`: `SLUICE_NODE_ID`, else
/// `KUMO_NODE_ID`, else the host name.
pub fn node_id() -> String {
    std::env::var("SLUICE_NODE_ID")
        .or_else(|_| std::env::var("KUMO_NODE_ID"))
        .unwrap_or_else(|_| crate::hostname())
}

/// Why the daemon could not start: each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The policy does not load, or its `init` event fails.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// A spool handoff stopped before the spool was empty.
    #[error(transparent)]
    Handoff(#[from] crate::handoff::Unfinished),
    /// A `shaping.toml` file of `configure_shaping_automation` is broken.
    #[error("shaping automation: {0}")]
    Shaping(crate::shaping::rules::RulesError),
    /// `init` defined no spool.
    #[error("the init event must call kumo.define_spool")]
    NoSpool,
    /// The spool cannot be opened or recovered.
    #[error("opening spool {}: {source}", path.display())]
    Spool {
        /// The spool's directory.
        path: std::path::PathBuf,
        /// Why it cannot be opened.
        source: crate::spool::SpoolError,
    },
    /// The local logs cannot be started.
    #[error(transparent)]
    Logs(#[from] crate::log::LogError),
    /// `kumo.dns.configure_resolver` names a server that is not an address.
    #[error(transparent)]
    ResolverConfig(#[from] crate::config::ConfigError),
    /// The DNS resolver cannot be built.
    #[error("DNS resolver: {0}")]
    Resolver(#[from] hickory_resolver::net::NetError),
    /// A log hook's worker thread cannot be started.
    #[error("cannot start a log hook worker: {0}")]
    LogHook(std::io::Error),
    /// An ESMTP listener's TLS set-up fails.
    #[error(transparent)]
    Tls(#[from] crate::listener::TlsError),
    /// An ESMTP or HTTP listener cannot be bound.
    #[error(transparent)]
    Bind(#[from] crate::listener::BindError),
}

/// How the daemon runs, from the command line.
pub struct Options {
    /// The policy file, watched for changes; `None` runs the embedded default.
    pub policy_path: Option<std::path::PathBuf>,
    /// After SIGTERM, how long sessions and deliveries in flight may take to
    /// finish before the daemon exits anyway.
    pub drain_timeout: std::time::Duration,
    /// How often the policy files are checked for changes.
    pub reload_interval: std::time::Duration,
    /// Hand the spool to these nodes' HTTP listeners and exit once it is
    /// empty, accepting nothing (`crate::handoff`); empty: run as usual.
    pub handoff_to: Vec<String>,
    /// Where the handoff writes its outcome (a termination message file).
    pub handoff_report: Option<std::path::PathBuf>,
    /// How many providers get their own per-provider metric series.
    pub provider_metrics_limit: usize,
}

/// Run the daemon on this policy until SIGTERM or SIGINT, then drain and
/// return. Fails early when start-up does (the policy's `init`, the spool, the
/// logs, a listener).
pub async fn run(source: PolicySource, options: Options) -> Result<(), StartError> {
    let drain_timeout = options.drain_timeout;
    raise_open_files_limit();
    let embedded = source.clone();
    let lifecycle = Arc::new(crate::lifecycle::Lifecycle::default());
    let policy = Policy::load(source)?;
    let init = policy.run_init().await?;

    let spool_def = init
        .spools
        .iter()
        .find(|s| s.name == "data")
        .or_else(|| init.spools.first())
        .ok_or(StartError::NoSpool)?;
    let (spool, recovered) =
        Spool::open(&spool_def.path, SpoolOptions::default()).map_err(|source| {
            StartError::Spool {
                path: spool_def.path.clone(),
                source,
            }
        })?;
    let spool = Arc::new(spool);
    policy.attach_spool(spool.clone());
    let metrics = Arc::new(crate::metrics::Metrics::new(options.provider_metrics_limit));
    crate::policy::hook_errors::register(metrics.registry());
    crate::policy::event_latency::register(metrics.registry());
    metrics.set_config(&policy.content_hash());
    // shaping automation watches the records, once the queues exist
    let (feed, shaped_records) = crate::shaping::feed();
    let mut logger = Logger::new(init.logs.clone())?
        .with_observer(metrics.clone())
        .with_classifier(init.bounce_classifier.clone());
    if !init.shaping_files.is_empty() {
        logger = logger.with_observer(feed);
    }
    let logger = Arc::new(logger);
    // measured once before any listener starts, then every second
    let storage = Arc::new(crate::storage::Storage::new(
        volumes(spool_def, &init.logs),
        spool.clone(),
    ));
    storage.check();
    tokio::spawn(storage.clone().watch(std::time::Duration::from_secs(1)));
    let memory = Arc::new(crate::memory::Memory::new(init.memory));
    let limits = memory.limits();
    tracing::info!(
        accounting = %memory.accounting(),
        hard_mib = limits.hard >> 20,
        soft_mib = limits.soft >> 20,
        low_mib = limits.low >> 20,
        "memory limits"
    );
    memory.check();
    // often enough that a burst cannot cross from soft to hard between looks
    let spells = metrics.memory_short_total.clone();
    tokio::spawn(
        memory
            .clone()
            .watch(std::time::Duration::from_millis(100), move |m| {
                spells.inc_by(m.short_spells().saturating_sub(spells.get()))
            }),
    );
    let admission = Arc::new(crate::admission::Admission {
        storage: storage.clone(),
        memory: memory.clone(),
    });
    let dns = match &init.resolver {
        Some(r) => crate::dns::Dns::with_servers(&r.servers()?)?,
        None => crate::dns::Dns::system()?,
    };
    let throttle_metrics = crate::throttle::metrics::ThrottleMetrics::register(metrics.registry());
    let throttles = Arc::new(crate::throttle::Throttles::new(
        Arc::new(throttle_metrics),
        init.redis_throttles.clone(),
    ));
    throttles.start();
    policy.attach_throttles(throttles.clone());
    let shaping_throttles = throttles.clone();
    let egress = crate::egress::Egress::new(
        policy.clone(),
        Arc::new(dns),
        spool.clone(),
        throttles.clone(),
        lifecycle.clone(),
    );
    let nodeid = node_id();
    egress.set_xfer_client(Arc::new(crate::xfer::client::XferClient::new(
        init.xfer_client.clone(),
        nodeid.clone(),
    )));
    let queues = QueueManager::new(crate::queue::Parts {
        policy: policy.clone(),
        spool: spool.clone(),
        logger: logger.clone(),
        egress,
        throttles,
        lifecycle: lifecycle.clone(),
        clock: crate::clock::system(),
        nodeid,
        memory: memory.clone(),
    });
    tokio::spawn(release_under_pressure(
        memory.clone(),
        queues.clone(),
        metrics.clone(),
    ));

    logger.attach_hooks(
        crate::log_hook::start(&init.log_hooks, queues.clone()).map_err(StartError::LogHook)?,
    );

    if !options.handoff_to.is_empty() {
        let report = options.handoff_report.as_deref();
        let handoff = crate::handoff::run(
            &queues,
            recovered,
            &options.handoff_to,
            report,
            wait_for_signal(),
        )
        .await;
        lifecycle.drain();
        if let Err(e) = spool.flush().await {
            tracing::error!("spool flush at the end of the handoff: {e}");
        }
        return handoff.map(|_| ()).map_err(StartError::Handoff);
    }
    let shaping = if init.shaping_files.is_empty() {
        None
    } else {
        let rules =
            crate::shaping::rules::load(&init.shaping_files).map_err(StartError::Shaping)?;
        let store = crate::shaping::Store::new(
            shaping_throttles,
            Some(spool_def.path.join("shaping-actions.json")),
        );
        let counter = crate::metrics::counter_vec(
            metrics.registry(),
            "sluice_shaping_actions_total",
            "Actions shaping automation enacted on this node, by action",
            &["action"],
        );
        let shaping =
            crate::shaping::Shaping::new(rules, store, node_id(), shaped_records, counter);
        let enforcer: Arc<dyn crate::shaping::Enforcer> =
            crate::queue::shaping::ShapingEnforcer::new(&queues);
        shaping.start(enforcer);
        tracing::info!(rules = shaping.rule_count(), "shaping automation started");
        Some(shaping)
    };
    let count = recovered.len();
    let queued = queues.recover(recovered).await;
    tracing::info!(spooled = count, queued, "spool recovered");

    let reloader = crate::reload::Reloader::new(
        options.policy_path.clone(),
        embedded,
        policy.clone(),
        metrics.clone(),
    );
    tokio::spawn(reloader.clone().watch(options.reload_interval));
    // the ESMTP listeners are made (not yet bound) first, so the admin API
    // can report their relay policy from its first request
    if init.listeners.is_empty() {
        tracing::warn!("the policy starts no ESMTP listener");
    }
    let auth_offered = policy.has_handler("smtp_server_auth_plain");
    let mut listeners = vec![];
    let mut reports = vec![];
    for spec in init.listeners {
        let listener = Arc::new(Listener::new(spec)?);
        let report = crate::listener::relay::RelayReport::new(listener.spec(), auth_offered);
        if let Some(w) = &report.warning {
            tracing::warn!(listener = %report.listen, "{w}");
        }
        metrics
            .relay_private_ranges
            .with_label_values(&[&report.listen])
            .set(report.relay_private_ranges.len() as i64);
        reports.push(report);
        listeners.push(listener);
    }
    let admin = crate::admin::AdminState {
        metrics: metrics.clone(),
        lifecycle: lifecycle.clone(),
        queues: queues.clone(),
        reloader: reloader.clone(),
        policy: policy.clone(),
        listeners: Arc::new(reports),
        trusted: Arc::new(vec![]),
        admission: admission.clone(),
        shaping: shaping.clone(),
    };
    for config in &init.http_listeners {
        let state = crate::admin::AdminState {
            trusted: Arc::new(config.trusted_hosts.clone()),
            ..admin.clone()
        };
        let addr = crate::admin::start(config, state).await?;
        tracing::info!("HTTP listener on {addr}");
    }

    let services = Arc::new(Services {
        policy: policy.clone(),
        queues: queues.clone(),
        lifecycle: lifecycle.clone(),
        metrics: metrics.clone(),
        admission: admission.clone(),
    });
    for listener in listeners {
        let socket = listener.bind().await?;
        if let Ok(addr) = socket.local_addr() {
            tracing::info!("ESMTP listener on {addr}");
        }
        tokio::spawn(listener.serve(socket, services.clone()));
    }

    wait_for_signal().await;
    lifecycle.drain();
    let (sessions, deliveries) = lifecycle.busy();
    tracing::info!(
        sessions,
        deliveries,
        "draining: no new sessions or deliveries; waiting up to {drain_timeout:?}"
    );
    tokio::select! {
        _ = drained(&lifecycle) => tracing::info!("drained"),
        _ = tokio::time::sleep(drain_timeout) => {
            let (sessions, deliveries) = lifecycle.busy();
            tracing::warn!(sessions, deliveries, "drain timeout reached; exiting with work in flight (it is in the spool)");
        }
        _ = wait_for_signal() => tracing::warn!("second signal: exiting now (undelivered mail is in the spool)"),
    }
    match queues.spool_unspooled().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(count = n, "deferred_spool messages written to the spool"),
        Err(e) => tracing::error!("cannot spool deferred_spool messages at shutdown: {e}"),
    }
    spool.flush().await.ok();
    logger.flush();
    Ok(())
}

/// The volumes whose free space decides whether new mail is accepted: the
/// spool's and each local log directory's.
fn volumes(
    spool: &crate::config::SpoolDefinition,
    logs: &[crate::config::logs::LocalLogConfig],
) -> Vec<crate::storage::Volume> {
    let spool = crate::storage::Volume {
        kind: "spool",
        path: spool.path.clone(),
        min_free_space: spool.min_free_space,
        min_free_inodes: spool.min_free_inodes,
    };
    let logs = logs.iter().map(|l| crate::storage::Volume {
        kind: "logs",
        path: l.log_dir.clone(),
        min_free_space: l.min_free_space,
        min_free_inodes: l.min_free_inodes,
    });
    std::iter::once(spool).chain(logs).collect()
}

/// Resolves when no session is open and no delivery is in flight.
async fn drained(lifecycle: &crate::lifecycle::Lifecycle) {
    while lifecycle.busy() != (0, 0) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Each time the memory watch asks (on going short, and while short), release
/// the bodies of spooled messages waiting in memory, at most once a second.
async fn release_under_pressure(
    memory: Arc<crate::memory::Memory>,
    queues: Arc<QueueManager>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    loop {
        memory.released_wanted().await;
        let released = queues.release_bodies();
        metrics.memory_bodies_released_total.inc_by(released as u64);
        if released > 0 {
            tracing::info!(released, "message bodies released from memory");
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Every connection is a file descriptor: raise the soft limit to the hard
/// one (often 1024 against 1,048,576), so `max_connections` and not the
/// default limit decides how many clients are served.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise the open files limit: {e}");
        }
    }
}
