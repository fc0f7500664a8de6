#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use sluice_operator::{admin_auth, controller, crdgen, manifests, metrics, render};
use std::path::PathBuf;
use std::process::ExitCode;

/// The Sluice operator: QueuePolicy, EgressPool and EgressPath custom
/// resources rendered into the policy every MTA pod hot-loads.
#[derive(Parser)]
#[command(name = "sluice-operator", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (in the cluster, or against $KUBECONFIG).
    Run(RunArgs),
    /// Write the CRD manifests generated from the Rust types.
    Crdgen {
        /// Directory to write `<plural>.<group>.yaml` files into; stdout
        /// (one multi-document stream) when unset.
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Render the custom resources in a directory's YAML files exactly as
    /// the controller would (for GitOps CI: diff the generated Lua).
    Render {
        /// Directory of YAML files (other kinds in them are skipped).
        #[arg(short = 'f', long = "filename")]
        dir: PathBuf,
        /// Directory to write the generated files into; stdout when unset.
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// The fleet's namespace; objects without one count as in it.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Where the MTA pods mount Secrets (`DIR/<secret>/<key>`).
        #[arg(long, default_value = render::DEFAULT_SECRETS_DIR)]
        secrets_dir: String,
        /// Split every limit across this many MTA pods (no Redis); 1
        /// renders limits as written.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        split_across: u32,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The fleet's namespace: its objects, ConfigMap and MTA pods.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Name of the generated ConfigMap the MTA pods mount.
    #[arg(long, default_value = "sluice-policy")]
    configmap: String,
    /// The MTA StatefulSet that owns the ConfigMap; without
    /// --shared-limits, every limit is split across its replicas.
    #[arg(long)]
    fleet: Option<String>,
    /// The MTA pods share throttles and connection limits through Redis
    /// (`configure_redis_throttles` in their policy): render limits as
    /// written instead of splitting them across the replicas.
    #[arg(long)]
    shared_limits: bool,
    /// Label selector of the MTA pods.
    #[arg(long, default_value = "app.kubernetes.io/component=mta")]
    mta_selector: String,
    /// The MTA pods' admin HTTP port (a pod's `sluice.dev/admin-port`
    /// annotation overrides it).
    #[arg(long, default_value_t = 8000)]
    admin_port: u16,
    /// A kubernetes.io/basic-auth Secret (username, password) holding the
    /// admin API's credentials, sent to the pods with every poll.
    #[arg(long)]
    admin_secret: Option<String>,
    /// Create --admin-secret with a random password when it does not exist.
    #[arg(long, requires = "admin_secret")]
    create_admin_secret: bool,
    /// Where the MTA pods mount Secrets (`DIR/<secret>/<key>`).
    #[arg(long, default_value = render::DEFAULT_SECRETS_DIR)]
    secrets_dir: String,
    /// The Secrets mounted into the MTA pods, comma-separated (may be
    /// empty): the only ones a DkimSigner's key is read from. Unset: read
    /// whichever a DkimSigner names.
    #[arg(long, value_delimiter = ',')]
    mounted_secrets: Option<Vec<String>>,
    /// Quiet time that ends a burst of changes before rendering.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    debounce: std::time::Duration,
    /// How often the MTA pods are asked which config they run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    poll_interval: std::time::Duration,
    /// Hand the spool volume of every ordinal the --fleet StatefulSet no
    /// longer runs (a scale-down, a pod whose node is gone) to the live
    /// pods: a Job per volume runs `sluice-mta --handoff-to` on it.
    #[arg(long, requires = "fleet")]
    spool_handoff: bool,
    /// The StatefulSet's volume claim template that holds the spool.
    #[arg(long, default_value = "spool")]
    spool_volume: String,
    /// Delete a spool volume once its handoff drained it.
    #[arg(long, requires = "spool_handoff")]
    delete_drained_volumes: bool,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    sluice_common::duration::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Run(run) => run_command(run),
        Command::Crdgen { out } => crdgen_command(out),
        Command::Render {
            dir,
            out,
            namespace,
            secrets_dir,
            split_across,
        } => render_command(&dir, out, &namespace, secrets_dir, split_across),
    }
}

fn run_command(args: RunArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async move {
        let metrics = std::sync::Arc::new(metrics::Metrics::default());
        match metrics::serve(args.metrics_addr, metrics.clone()).await {
            Ok(addr) => tracing::info!("metrics and health on http://{addr}"),
            Err(e) => {
                tracing::error!("cannot listen on {}: {e}", args.metrics_addr);
                return ExitCode::FAILURE;
            }
        }
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("no Kubernetes API to talk to: {e}");
                return ExitCode::FAILURE;
            }
        };
        let config = controller::Config {
            namespace: args.namespace,
            configmap: args.configmap,
            fleet: args.fleet,
            shared_limits: args.shared_limits,
            mta_selector: args.mta_selector,
            admin_port: args.admin_port,
            admin_auth: args.admin_secret.map(|secret| admin_auth::AdminAuth {
                secret,
                create: args.create_admin_secret,
            }),
            secrets_dir: args.secrets_dir,
            mounted_secrets: args
                .mounted_secrets
                .map(|m| m.into_iter().filter(|s| !s.is_empty()).collect()),
            debounce: args.debounce,
            poll_interval: args.poll_interval,
            handoff: args
                .spool_handoff
                .then_some(sluice_operator::handoff::HandoffConfig {
                    spool_volume: args.spool_volume,
                    delete_drained: args.delete_drained_volumes,
                    admin_port: args.admin_port,
                }),
        };
        let controller = controller::Controller::new(client, config, metrics);
        match controller.run(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

fn crdgen_command(out: Option<PathBuf>) -> ExitCode {
    for (name, yaml) in crdgen::crds() {
        match &out {
            Some(dir) => {
                if let Err(e) = std::fs::write(dir.join(&name), yaml) {
                    eprintln!("{}: {e}", dir.join(&name).display());
                    return ExitCode::FAILURE;
                }
            }
            None => print!("---\n{yaml}"),
        }
    }
    ExitCode::SUCCESS
}

fn render_command(
    dir: &std::path::Path,
    out: Option<PathBuf>,
    namespace: &str,
    secrets_dir: String,
    split_across: u32,
) -> ExitCode {
    let (inputs, errors) = manifests::read_dir(dir, namespace);
    for e in &errors {
        eprintln!("error: {e}");
    }
    let options = render::Options {
        secrets_dir,
        fleet: render::Fleet::Split(split_across),
    };
    let rendered = render::render(&inputs, &options);
    for (name, content) in &rendered.files {
        match &out {
            Some(dir) => {
                if let Err(e) = std::fs::write(dir.join(name), content) {
                    eprintln!("{}: {e}", dir.join(name).display());
                    return ExitCode::FAILURE;
                }
            }
            None => print!("{content}"),
        }
    }
    let mut failed = !errors.is_empty();
    for (object, rejection) in rendered.rejected() {
        eprintln!(
            "error: {}: {object}: {} ({})",
            dir.display(),
            rejection.message,
            rejection.reason
        );
        failed = true;
    }
    eprintln!("config hash {}", rendered.hash);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
