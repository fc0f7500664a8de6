//! `sluice`: the operator's command line for one MTA's admin API, with
//! KumoMTA's `kcli` verbs and flags (`--endpoint`, `queue-summary`,
//! `bounce`, `bounce-list`, `bounce-cancel`, `suspend`, `suspend-list`,
//! `suspend-cancel`, `suspend-ready-q`, `suspend-ready-q-list`,
//! `suspend-ready-q-cancel`, `xfer`, `xfer-cancel`, `inspect-message`) plus
//! `config`. Tables for people by default, the API's JSON with `--json`.
//! Credentials are the admin API's HTTP Basic ones: `--user`, with the
//! password from `--password-file` or `$SLUICE_ADMIN_PASSWORD` (never on
//! the command line, where `ps` shows it).

mod client;
mod render;

use clap::{Args, Parser, Subcommand};
use client::{CliError, Client};
use serde_json::{Value, json};
use std::path::PathBuf;

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "sluice", about = "Operate a sluice-mta through its admin API")]
pub struct Cli {
    /// The admin API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000", global = true)]
    endpoint: String,
    /// HTTP Basic user name for the admin API.
    #[arg(long, global = true)]
    user: Option<String>,
    /// A file holding the password (e.g. a mounted Secret's key); else
    /// $SLUICE_ADMIN_PASSWORD.
    #[arg(long, global = true)]
    password_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: Verb,
}

/// Which queues a rule or transfer applies to (the admin API's criteria).
#[derive(Debug, Args)]
struct Criteria {
    /// Only this destination domain.
    #[arg(long)]
    domain: Option<String>,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this campaign.
    #[arg(long)]
    campaign: Option<String>,
    /// Only queues routed to this domain.
    #[arg(long)]
    routing_domain: Option<String>,
    /// Only these queues, by full name (repeat for several).
    #[arg(long = "queue")]
    queue_names: Vec<String>,
}

impl Criteria {
    fn json(&self) -> Value {
        json!({
            "domain": self.domain,
            "tenant": self.tenant,
            "campaign": self.campaign,
            "routing_domain": self.routing_domain,
            "queue_names": self.queue_names,
        })
    }
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Ready queues (by source, site and protocol) and scheduled queues,
    /// largest first.
    QueueSummary {
        /// Show at most this many of each.
        #[arg(long, default_value_t = 40)]
        limit: usize,
    },
    /// Bounce what the criteria match, now and while the rule lasts.
    Bounce {
        #[command(flatten)]
        criteria: Criteria,
        /// Why (logged, and shown in the list).
        #[arg(long)]
        reason: String,
        /// How long the rule lasts (e.g. 5m).
        #[arg(long)]
        duration: Option<String>,
        /// Write no AdminBounce records.
        #[arg(long)]
        suppress_logging: bool,
    },
    /// The bounce rules in force.
    BounceList,
    /// Delete a bounce rule.
    BounceCancel {
        /// The rule's id (bounce-list shows it).
        #[arg(long)]
        id: String,
    },
    /// Hold what the criteria match until the rule lapses or is cancelled.
    Suspend {
        #[command(flatten)]
        criteria: Criteria,
        /// Why (logged, and shown in the list).
        #[arg(long)]
        reason: String,
        /// How long the rule lasts (e.g. 5m).
        #[arg(long)]
        duration: Option<String>,
    },
    /// The suspensions in force.
    SuspendList,
    /// End a suspension.
    SuspendCancel {
        /// The rule's id (suspend-list shows it).
        #[arg(long)]
        id: String,
    },
    /// Hold one ready queue (`source->site@protocol`, as queue-summary
    /// names it): nothing is attempted there while it lasts.
    SuspendReadyQ {
        /// The ready queue.
        #[arg(long)]
        name: String,
        /// Why (in the Delayed records and the list).
        #[arg(long)]
        reason: String,
        /// How long it lasts (e.g. 5m).
        #[arg(long)]
        duration: Option<String>,
    },
    /// The ready-queue suspensions in force.
    SuspendReadyQList,
    /// End a ready-queue suspension; what it held is due at once.
    SuspendReadyQCancel {
        /// The suspension's id (suspend-ready-q-list shows it).
        #[arg(long)]
        id: String,
    },
    /// Move matching waiting mail to another node (its admin API URL).
    Xfer {
        #[command(flatten)]
        criteria: Criteria,
        /// The node to move the mail to.
        #[arg(long)]
        target: String,
        /// Why (in the XferOut records).
        #[arg(long)]
        reason: String,
    },
    /// Stop moving mail out of a queue.
    XferCancel {
        /// The xfer queue's name.
        #[arg(long)]
        queue_name: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// A spooled message's envelope, meta, attempts and due time.
    InspectMessage {
        /// The message id (from its records).
        id: String,
    },
    /// The loaded policy: hash, epoch, load time, last reload error,
    /// listeners, hook failures.
    Config,
}

/// Run the command line; the process's exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(out) => {
            print!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What the verb prints.
async fn run(cli: Cli) -> Result<String, CliError> {
    let client = Client::new(
        &cli.endpoint,
        cli.user.as_deref(),
        cli.password_file.as_deref(),
    )?;
    let rule = |criteria: &Criteria, reason: &str, duration: &Option<String>| {
        let mut body = criteria.json();
        body["reason"] = json!(reason);
        if let Some(d) = duration {
            body["duration"] = json!(d);
        }
        body
    };
    let (answer, table): (Value, fn(&Value) -> String) = match &cli.verb {
        Verb::QueueSummary { limit } => (
            client
                .get(&format!("/api/admin/queue-summary/v1?limit={limit}"))
                .await?,
            render::queue_summary,
        ),
        Verb::Bounce {
            criteria,
            reason,
            duration,
            suppress_logging,
        } => {
            let mut body = rule(criteria, reason, duration);
            body["suppress_logging"] = json!(suppress_logging);
            (
                client.post("/api/admin/bounce/v1", &body).await?,
                render::rule,
            )
        }
        Verb::Suspend {
            criteria,
            reason,
            duration,
        } => (
            client
                .post("/api/admin/suspend/v1", &rule(criteria, reason, duration))
                .await?,
            render::rule,
        ),
        Verb::BounceList => (client.get("/api/admin/bounce/v1").await?, render::rules),
        Verb::SuspendList => (client.get("/api/admin/suspend/v1").await?, render::rules),
        Verb::BounceCancel { id } => (
            client
                .delete("/api/admin/bounce/v1", &json!({ "id": id }))
                .await?,
            render::cancelled,
        ),
        Verb::SuspendCancel { id } => (
            client
                .delete("/api/admin/suspend/v1", &json!({ "id": id }))
                .await?,
            render::cancelled,
        ),
        Verb::SuspendReadyQ {
            name,
            reason,
            duration,
        } => {
            let mut body = json!({ "name": name, "reason": reason });
            if let Some(d) = duration {
                body["duration"] = json!(d);
            }
            (
                client.post("/api/admin/suspend-ready-q/v1", &body).await?,
                render::ready_suspension,
            )
        }
        Verb::SuspendReadyQList => (
            client.get("/api/admin/suspend-ready-q/v1").await?,
            render::ready_suspensions,
        ),
        Verb::SuspendReadyQCancel { id } => (
            client
                .delete("/api/admin/suspend-ready-q/v1", &json!({ "id": id }))
                .await?,
            render::ready_suspension_cancelled,
        ),
        Verb::Xfer {
            criteria,
            target,
            reason,
        } => {
            let mut body = criteria.json();
            body["target"] = json!(target);
            body["reason"] = json!(reason);
            (
                client.post("/api/admin/xfer/v1", &body).await?,
                render::object,
            )
        }
        Verb::XferCancel { queue_name, reason } => (
            client
                .post(
                    "/api/admin/xfer/cancel/v1",
                    &json!({ "queue_name": queue_name, "reason": reason }),
                )
                .await?,
            render::object,
        ),
        Verb::InspectMessage { id } => (
            client
                .get(&format!("/api/admin/inspect-message/v1?id={id}"))
                .await?,
            render::message,
        ),
        Verb::Config => (client.get("/api/admin/config/v1").await?, render::config),
    };
    Ok(match cli.json {
        true => format!(
            "{}\n",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        ),
        false => table(&answer),
    })
}
