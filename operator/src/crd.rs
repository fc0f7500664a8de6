//! The custom resources (`sluice.dev/v1alpha1`). Doc comments become
//! the schema descriptions that `kubectl explain` shows; CEL rules catch
//! shape errors at admission, while durations, throttles and CIDRs are
//! checked by the MTA's own parsers when the operator renders (`validate`).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

mod dkim;
mod status;
pub use dkim::*;
pub use status::*;

/// API group of the custom resources.
pub const GROUP: &str = "sluice.dev";
/// API version of the custom resources.
pub const VERSION: &str = "v1alpha1";

/// Which scheduled queues a QueuePolicy applies to. Each list holds exact
/// names or globs (`*` matches any run of characters, e.g. `*.example.com`;
/// `*` alone matches any value that is present). An empty or absent list
/// matches anything, including an absent tenant or campaign. Domain names
/// match case-insensitively.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueMatch {
    /// Recipient domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// Tenants (the message's `tenant` meta value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// Campaigns (the message's `campaign` meta value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub campaigns: Vec<String>,
    /// Routing domains (the message's `routing_domain` meta value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing_domains: Vec<String>,
}

/// How a scheduled queue behaves (KumoMTA's `kumo.make_queue_config`), for
/// the queues its `match` selects. When several QueuePolicies match a queue,
/// the first in this order wins: higher `priority`; then more match fields
/// set; then exact names before globs; then namespace/name. Two policies with
/// the same priority and the same match conflict: the one whose name sorts
/// later is not accepted (`ConflictingMatch`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "QueuePolicy",
    doc = "How the scheduled queues it matches behave: egress pool, retries, expiry, rate and delivery protocol. An edit applies to existing queues when the MTA pods reload.",
    namespaced,
    shortname = "qp",
    category = "sluice",
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.egressPool"}"#,
    printcolumn = r#"{"name":"Pods","type":"string","jsonPath":".status.pods"}"#,
    printcolumn = r#"{"name":"Limits","type":"string","jsonPath":".status.limits"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct QueuePolicySpec {
    /// Which scheduled queues this policy applies to.
    #[serde(default, rename = "match")]
    pub selector: QueueMatch,
    /// Precedence when several policies match a queue (higher first).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Name of the EgressPool (in this namespace) the queue sends through;
    /// KumoMTA's `unspecified` pool (the kernel picks the address) if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_pool: Option<String>,
    /// How long a message may stay queued before it expires, e.g. `7 days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Base of the exponential retry backoff, e.g. `20 minutes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_interval: Option<String>,
    /// Upper bound of any one retry delay, e.g. `1 hour`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_interval: Option<String>,
    /// Rate at which messages leave the scheduled queue for the ready
    /// queue (a GCRA throttle such as `100/s` or `1,000/hr`), for the whole
    /// fleet: shared through Redis, else split across the MTA pods; a
    /// `local:` rate is each pod's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_rate: Option<String>,
    /// How messages are delivered; SMTP to the domain's MX hosts if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<QueueProtocol>,
    /// Move messages to another queue after repeated transient failures
    /// (rendered into a `requeue_message` handler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeue: Option<RequeueRule>,
}

/// Exactly one delivery protocol.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.smtp), has(self.maildir), has(self.customLua), has(self.amqp)].filter(x, x).size() == 1").message("set exactly one of smtp, maildir, customLua, amqp"))]
pub struct QueueProtocol {
    /// SMTP, to `mxList` when given, else to the domain's MX hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpProtocol>,
    /// Store into a maildir on the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maildir: Option<MaildirProtocol>,
    /// Deliver with Lua code of your own (mounted with the MTA's policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_lua: Option<CustomLuaProtocol>,
    /// Publish each message to an AMQP broker (e.g. RabbitMQ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp: Option<AmqpProtocol>,
}

/// SMTP delivery (KumoMTA's `smtp` protocol).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmtpProtocol {
    /// Hosts tried in order instead of an MX lookup (a smart host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mx_list: Vec<MxHost>,
}

/// One smart host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MxHost {
    /// Host name (resolved for A/AAAA), or an address literal such as
    /// `[10.0.0.1]`, optionally with `:port`.
    #[x_kube(validation = Rule::new("self.size() > 0").message("must not be empty"))]
    pub host: String,
    /// Connect to this address (`ip[:port]`) and use `host` only as its
    /// name in logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
}

/// Delivery into a maildir on the MTA pod (KumoMTA's `maildir_path`
/// protocol).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaildirProtocol {
    /// Directory on the MTA pod; `{{ domain }}`, `{{ local_part }}` and
    /// `{{ meta.NAME }}` are expanded per recipient (KumoMTA's template syntax).
    #[x_kube(validation = Rule::new("self.size() > 0").message("must not be empty"))]
    pub path: String,
}

/// Delivery by Lua code of your own (KumoMTA's `custom_lua` protocol).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomLuaProtocol {
    /// Name of the event whose handler (in your own Lua) returns the
    /// connection object with `send(message)`.
    #[x_kube(validation = Rule::new("self.size() > 0").message("must not be empty"))]
    pub constructor: String,
}

/// Publishing each message to an AMQP broker, such as RabbitMQ.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AmqpProtocol {
    /// The Secret key holding the broker URL (`amqp://user:password@host:5672/vhost`
    /// or `amqps://…`). The MTA pods read it from the mounted Secret; it never
    /// appears in the generated policy.
    pub url_secret_ref: SecretKeyRef,
    /// Exchange to publish to; the default exchange when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// Routing key of each published message.
    #[x_kube(validation = Rule::new("self.size() > 0").message("must not be empty"))]
    pub routing_key: String,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    pub name: String,
    /// Key in the Secret's data.
    pub key: String,
}

/// After `afterAttempts` failed attempts, move the message to `queue`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequeueRule {
    /// Failed attempts before the move (3 moves it after the third).
    #[x_kube(validation = Rule::new("self >= 1").message("must be at least 1"))]
    pub after_attempts: u16,
    /// The queue to move to, e.g. a smart host `[10.0.0.1]`.
    #[x_kube(validation = Rule::new("self.size() > 0").message("must not be empty"))]
    pub queue: String,
    /// Also drop scheduling constraints (`set_scheduling`), which rarely
    /// apply to the new route.
    #[serde(default)]
    pub clear_scheduling: bool,
}

/// A named set of egress sources, picked by weighted round robin per
/// scheduled queue (KumoMTA's `make_egress_pool` with its sources).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "EgressPool",
    doc = "A named, weighted set of egress sources (source address, EHLO name) that queues send through.",
    namespaced,
    shortname = "ep",
    category = "sluice",
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Sources","type":"string","jsonPath":".spec.sources[*].name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EgressPoolSpec {
    /// The sources; a source name may appear in several pools only with
    /// identical settings.
    #[x_kube(validation = Rule::new("self.size() > 0").message("needs at least one source"))]
    pub sources: Vec<EgressSourceSpec>,
    /// How long the MTA caches the pool, e.g. `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// One egress source (KumoMTA's `make_egress_source`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressSourceSpec {
    /// Source name, as it appears in log records (`egress_source`).
    #[x_kube(validation = Rule::new("self.size() > 0").message("must not be empty"))]
    pub name: String,
    /// Relative share of the pool's traffic; 0 takes the source out.
    #[serde(default = "one")]
    pub weight: u32,
    /// Local address to bind outgoing connections to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    /// EHLO name (an EgressPath's own value wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ehlo_domain: Option<String>,
    /// Port to connect to, overriding every other port setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    /// How long the MTA caches the source, e.g. `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// Which egress paths (routing domain, egress source, site) an EgressPath
/// shapes; globs as in QueuePolicy; empty lists match anything.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// Routing domains (the recipient domain unless overridden).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// Site names: the MX host set, e.g. `*.olc.protection.outlook.com`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
    /// Egress source names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
}

/// Traffic shaping for the egress paths its `match` selects (KumoMTA's
/// `make_egress_path`). Every matching EgressPath applies, in the
/// QueuePolicy precedence order reversed: keys of the more specific one
/// win. Two with the same priority and the same match conflict.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "EgressPath",
    doc = "Traffic shaping (connections, rates, TLS, timeouts) for the egress paths it matches.",
    namespaced,
    shortname = "epath",
    category = "sluice",
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Connections","type":"integer","jsonPath":".spec.connectionLimit"}"#,
    printcolumn = r#"{"name":"Rate","type":"string","jsonPath":".spec.maxMessageRate"}"#,
    printcolumn = r#"{"name":"Limits","type":"string","jsonPath":".status.limits"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EgressPathSpec {
    /// Which egress paths this shapes.
    #[serde(default, rename = "match")]
    pub selector: PathMatch,
    /// Precedence among matching EgressPaths (higher wins).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Concurrent connections per ready queue, for the whole fleet: leased
    /// through Redis, else split across the MTA pods (at least 1 each).
    /// Unset: 32 per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limit: Option<u32>,
    /// New connections per period, e.g. `10/s`, for the whole fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_rate: Option<String>,
    /// Messages per connection before reconnecting (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries_per_connection: Option<u32>,
    /// Messages per period through the path, e.g. `1,000/hr`, for the
    /// whole fleet (shared through Redis, else split across the pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_rate: Option<String>,
    /// Ready-queue capacity (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ready: Option<u32>,
    /// STARTTLS use (default Opportunistic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_tls: Option<TlsMode>,
    /// Port to connect to (default 25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_port: Option<u16>,
    /// EHLO name for this path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ehlo_domain: Option<String>,
    /// `Epoch` applies a new config at once after a reload; `Ttl` (the
    /// default) after `refreshInterval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_strategy: Option<RefreshStrategy>,
    /// How often a `Ttl` path re-reads its config (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<String>,
    /// Destination CIDRs never connected to (messages bounce); default
    /// loopback and unspecified addresses. An empty list allows all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prohibited_hosts: Option<Vec<String>>,
    /// Destination CIDRs left out of the connection plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_hosts: Option<Vec<String>>,
    /// SMTP client timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<PathTimeouts>,
}

// How STARTTLS is used towards the destination (KumoMTA's `enable_tls`).
// Documented with `//`: in the CRD schema a doc comment on this type would
// replace the description of the field that uses it, and docs on variants
// would turn its `enum` into a `oneOf`.
#[allow(missing_docs)]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum TlsMode {
    // STARTTLS when the server offers it, with certificate verification;
    // plain text when it does not.
    Opportunistic,
    // As Opportunistic, without certificate verification.
    OpportunisticInsecure,
    // STARTTLS with a verified certificate, or the connection fails.
    Required,
    // STARTTLS without certificate verification, or the connection fails.
    RequiredInsecure,
    // Never STARTTLS.
    Disabled,
}

// Documented with `//`: in the CRD schema a doc comment on this type would
// replace the description of the field that uses it, and docs on variants
// would turn its `enum` into a `oneOf`.
#[allow(missing_docs)]
// When an egress path re-reads its config (KumoMTA's `refresh_strategy`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum RefreshStrategy {
    // After `refreshInterval` has passed.
    Ttl,
    // As soon as the MTA pods load a new generated policy.
    Epoch,
}

/// SMTP client timeouts, each a duration such as `30s`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathTimeouts {
    /// Establishing the TCP connection (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// Waiting for the server's greeting (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banner: Option<String>,
    /// Waiting for the reply to EHLO (default 300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ehlo: Option<String>,
    /// Waiting for the reply to MAIL FROM (default 300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_from: Option<String>,
    /// Waiting for the reply to each RCPT TO (default 300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcpt_to: Option<String>,
    /// Waiting for the reply to DATA (default 300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Waiting for the reply to the final `.` of the message (default 300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dot: Option<String>,
    /// Waiting for the reply to RSET (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rset: Option<String>,
    /// The reply to STARTTLS and the TLS handshake (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starttls: Option<String>,
    /// How long an idle connection waits for more messages before closing
    /// (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
}

fn one() -> u32 {
    1
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}
