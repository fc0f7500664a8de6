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
mod progress;
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
        /// Wait until every bound message has moved, showing how many are
        /// left as that changes.
        #[arg(long)]
        wait: bool,
    },
    /// Rebind waiting mail of matching queues: set meta on each message
    /// (--set, --data) or pass it to the policy's rebind_message event; a
    /// message whose queue changes is due at once.
    Rebind {
        #[command(flatten)]
        criteria: Criteria,
        /// Match every queue (required when no criterion is given).
        #[arg(long)]
        everything: bool,
        /// Why (in the AdminRebind records).
        #[arg(long)]
        reason: String,
        /// Meta to set, as a JSON object of strings.
        #[arg(long)]
        data: Option<String>,
        /// Meta to set, KEY=VALUE (repeat for several; after --data).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Pass each message and the data to rebind_message instead.
        #[arg(long)]
        trigger_rebind_event: bool,
        /// Make every matched message due now, moved or not.
        #[arg(long)]
        always_flush: bool,
        /// Write no AdminRebind records.
        #[arg(long)]
        suppress_logging: bool,
    },
    /// Live transcript of inbound SMTP sessions as they happen, until
    /// interrupted.
    TraceSmtpServer {
        /// Only sessions from these networks or addresses (repeat for
        /// several).
        #[arg(long)]
        source: Vec<String>,
    },
    /// Live transcript of outbound SMTP sessions as they happen, until
    /// interrupted.
    TraceSmtpClient {
        /// Only sessions to these networks or addresses (repeat for
        /// several).
        #[arg(long)]
        source: Vec<String>,
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
            wait,
        } => {
            let mut body = criteria.json();
            body["target"] = json!(target);
            body["reason"] = json!(reason);
            let before = match wait {
                true => progress::handed_over(&client).await?,
                false => 0,
            };
            let answer = client.post("/api/admin/xfer/v1", &body).await?;
            if *wait {
                progress::wait_for_xfer(&client, &answer, before).await?;
            }
            (answer, render::object)
        }
        Verb::Rebind {
            criteria,
            everything,
            reason,
            data,
            sets,
            trigger_rebind_event,
            always_flush,
            suppress_logging,
        } => {
            let mut body = criteria.json();
            if !everything
                && body
                    .as_object()
                    .is_some_and(|o| o.values().all(no_criterion))
            {
                return Err(CliError::Usage(
                    "rebind: give --domain, --tenant, --campaign, --routing-domain or --queue, \
                     or --everything"
                        .into(),
                ));
            }
            body["reason"] = json!(reason);
            body["data"] = rebind_data(data.as_deref(), sets)?;
            body["trigger_rebind_event"] = json!(trigger_rebind_event);
            body["always_flush"] = json!(always_flush);
            body["suppress_logging"] = json!(suppress_logging);
            (
                client.post("/api/admin/rebind/v1", &body).await?,
                render::object,
            )
        }
        Verb::TraceSmtpServer { source } => {
            return trace(&client, "smtp-server", source, cli.json).await;
        }
        Verb::TraceSmtpClient { source } => {
            return trace(&client, "smtp-client", source, cli.json).await;
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

/// Whether a criterion of the request body is unset.
fn no_criterion(v: &Value) -> bool {
    v.is_null() || v.as_array().is_some_and(|a| a.is_empty())
}

/// The rebind's `data`: the `--data` object, then each `--set KEY=VALUE`.
fn rebind_data(data: Option<&str>, sets: &[String]) -> Result<Value, CliError> {
    let mut out = serde_json::Map::new();
    if let Some(text) = data {
        let parsed: serde_json::Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| CliError::Usage(format!("--data is not a JSON object: {e}")))?;
        for (key, value) in parsed {
            if !value.is_string() {
                return Err(CliError::Usage(format!(
                    "--data: {key} is not a string (meta values are strings)"
                )));
            }
            out.insert(key, value);
        }
    }
    for set in sets {
        let (key, value) = set
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--set {set}: give KEY=VALUE")))?;
        out.insert(key.to_string(), json!(value));
    }
    Ok(Value::Object(out))
}

/// Print a trace's events as they arrive: a line each (the API's JSON with
/// `--json`); nothing is left to print when it ends.
async fn trace(
    client: &Client,
    what: &str,
    source: &[String],
    json: bool,
) -> Result<String, CliError> {
    use std::io::Write;
    let path = format!("/api/admin/trace-{what}/v1?source={}", source.join(","));
    client
        .stream(&path, |line| {
            let event: Value = serde_json::from_str(line).unwrap_or_default();
            let out = match json {
                true => Some(line.to_string()),
                false => render::trace(&event),
            };
            let Some(out) = out else {
                return true;
            };
            let mut stdout = std::io::stdout().lock();
            // a closed pipe (| head) ends the trace at the next event, and
            // the MTA's last line (it drains) ends it too
            let written = writeln!(stdout, "{out}").and_then(|()| stdout.flush());
            written.is_ok() && event["ended"].is_null()
        })
        .await?;
    Ok(String::new())
}
