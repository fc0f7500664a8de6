#![forbid(unsafe_code)]

use clap::Parser;
use sluice_mta::daemon;
use sluice_mta::policy::{Policy, PolicySource};
use std::path::PathBuf;
use std::process::ExitCode;

/// jemalloc, not glibc malloc: under a memory limit the working set must
/// fall once bodies are freed. glibc kept ~80 MiB of a delivered 50 KB-body
/// burst in its per-thread arenas, holding the MTA over its soft limit (and
/// refusing mail) with nothing queued; jemalloc's background threads hand
/// freed pages back to the kernel within seconds (`dirty_decay_ms`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Sluice mail transfer agent: runs a KumoMTA-style Lua policy.
#[derive(Parser)]
#[command(name = "sluice-mta", version)]
struct Args {
    /// The Lua policy file. Without it, an embedded default accepts mail on
    /// 127.0.0.1:2525 and delivers it into ./sluice-data/maildir.
    #[arg(long)]
    policy: Option<PathBuf>,

    /// Load and check the policy, then exit: non-zero with the file, line
    /// and key of the first problem.
    #[arg(long)]
    validate: bool,

    /// On SIGTERM, how long to let sessions finish their transaction and
    /// deliveries in flight complete before exiting (a second signal exits
    /// at once). Keep it under the pod's terminationGracePeriodSeconds.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    drain_timeout: std::time::Duration,

    /// How often to check the policy files (the policy and the policy-like
    /// files beside it) for changes; a change reloads the policy.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    reload_interval: std::time::Duration,

    /// Spool handoff: start no listener, deliver nothing, move every message
    /// in the spool to these nodes' HTTP listeners (xfer, spread across
    /// them; repeat the option or separate with commas), and exit 0 once
    /// the spool is empty. For a node that will not run again.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    handoff_to: Vec<String>,

    /// Where the handoff writes its outcome as JSON (found, moved,
    /// remaining): Kubernetes' termination message file by default.
    #[arg(long, default_value = "/dev/termination-log")]
    handoff_report: PathBuf,

    /// How many providers (egress paths' provider_name, else sites) get
    /// their own per-provider metric series; the rest are counted as
    /// `other`, so that mailing many domains cannot flood Prometheus.
    #[arg(long, default_value_t = sluice_mta::metrics::provider::DEFAULT_LIMIT)]
    provider_metrics_limit: usize,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    sluice_common::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let source = match &args.policy {
        Some(path) => match PolicySource::from_file(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => PolicySource::embedded("<embedded default policy>", daemon::DEFAULT_POLICY),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        if args.validate {
            let policy = Policy::load(source)?;
            let init = policy.validate().await?;
            for l in &init.listeners {
                let listener = sluice_mta::listener::Listener::new(l.clone())?;
                let report = sluice_mta::listener::relay::RelayReport::new(
                    listener.spec(),
                    policy.has_handler("smtp_server_auth_plain"),
                );
                if let Some(w) = report.warning {
                    eprintln!("warning: listener {}: {w}", report.listen);
                }
            }
            println!(
                "{}: OK ({} listener(s), {} spool(s), {} log config(s))",
                policy.name(),
                init.listeners.len(),
                init.spools.len(),
                init.logs.len()
            );
            Ok::<(), daemon::StartError>(())
        } else {
            let options = daemon::Options {
                policy_path: args.policy.clone(),
                drain_timeout: args.drain_timeout,
                reload_interval: args.reload_interval,
                handoff_to: args.handoff_to.clone(),
                handoff_report: Some(args.handoff_report.clone()),
                provider_metrics_limit: args.provider_metrics_limit,
            };
            daemon::run(source, options).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
