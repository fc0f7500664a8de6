//! The renderer: a pure function from the fleet's custom resources (and the
//! Secrets their DkimSigners name) to the generated policy file. Same
//! input, same bytes (objects sorted, keys sorted, no timestamps). Every object gets a verdict; an invalid one is
//! left out, and the rest still renders.

pub mod dkim;
pub mod lua;
mod runtime;
mod validate;

use crate::crd::{DkimSigner, EgressPath, EgressPool, QueuePolicy};
pub use dkim::{SecretState, SignerStatus};
use kube::ResourceExt;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// The generated policy's file name in the ConfigMap (and so in the pod).
pub const POLICY_FILE: &str = "sluice-generated.lua";
/// Where the MTA pods mount Secrets: `{dir}/{secret}/{key}`.
pub const DEFAULT_SECRETS_DIR: &str = "/etc/sluice/secrets";

/// The fleet's objects (one namespace).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The QueuePolicy objects.
    pub queue_policies: Vec<QueuePolicy>,
    /// The EgressPool objects.
    pub egress_pools: Vec<EgressPool>,
    /// The EgressPath objects.
    pub egress_paths: Vec<EgressPath>,
    /// The DkimSigner objects.
    pub dkim_signers: Vec<DkimSigner>,
    /// The Secrets the DkimSigners name, as the controller found them;
    /// `None` when they cannot be read (`sluice-operator render`).
    pub secrets: Option<BTreeMap<String, SecretState>>,
}

/// Render settings that do not come from the objects.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the MTA pods mount Secrets (`{dir}/{secret}/{key}`), for the file
    /// paths the generated policy reads them from.
    pub secrets_dir: String,
    /// How the fleet honours a limit: shared in Redis, or split.
    pub fleet: Fleet,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            secrets_dir: DEFAULT_SECRETS_DIR.into(),
            fleet: Fleet::Split(1),
        }
    }
}

/// How the fleet's pods honour one limit between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fleet {
    /// The pods share throttles and connection limits through Redis
    /// (`configure_redis_throttles`): limits are rendered as written.
    Shared,
    /// No Redis: each of N pods gets its share of every rate (the same
    /// limit over N times the period, so the shares sum to it exactly) and
    /// of every connection limit (rounded down, never below 1). A `local:`
    /// limit is each pod's already and is left alone.
    Split(u32),
}

impl Fleet {
    /// The status mode: `Shared` or `Split`.
    pub fn mode(self) -> &'static str {
        match self {
            Fleet::Shared => "Shared",
            Fleet::Split(_) => "Split",
        }
    }

    /// The pods a split divides by (1 when shared).
    pub fn divisor(self) -> u32 {
        match self {
            Fleet::Shared => 1,
            Fleet::Split(n) => n.max(1),
        }
    }
}

/// Which object a verdict is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The kind, e.g. `QueuePolicy`.
    pub kind: String,
    /// The namespace (`default` when the object names none).
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Why an object was left out: a CamelCase reason and a message naming the
/// field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// CamelCase reason, e.g. `InvalidCidr`, used in the object's conditions.
    pub reason: &'static str,
    /// What is wrong, naming the field at fault.
    pub message: String,
}

/// What a render produces: the ConfigMap's files, their hash and every
/// object's verdict.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// File name => content.
    pub files: BTreeMap<String, String>,
    /// SHA-256 (hex) of the generated policy file.
    pub hash: String,
    /// Every input object, `Ok` if it is part of the output.
    pub verdicts: BTreeMap<ObjectKey, Result<(), Rejection>>,
    /// What each accepted DkimSigner's status reports besides its verdict.
    pub signers: BTreeMap<ObjectKey, SignerStatus>,
}

impl Rendered {
    /// The objects left out, each with its rejection.
    pub fn rejected(&self) -> impl Iterator<Item = (&ObjectKey, &Rejection)> {
        self.verdicts
            .iter()
            .filter_map(|(k, v)| v.as_ref().err().map(|r| (k, r)))
    }
}

/// The key of `obj`'s verdict; an object without a namespace counts as in
/// `default`.
pub fn key_of<K: kube::Resource<DynamicType = ()>>(obj: &K) -> ObjectKey {
    ObjectKey {
        kind: K::kind(&()).into_owned(),
        namespace: obj.namespace().unwrap_or_else(|| "default".into()),
        name: obj.name_any(),
    }
}

/// One accepted selector-bearing object, ready to sort.
struct Ranked {
    key: ObjectKey,
    priority: i32,
    /// The match lists, normalised (sorted; domains lower-cased).
    selector: Vec<Vec<String>>,
    entry: Value,
}

impl Ranked {
    fn fields_set(&self) -> usize {
        self.selector.iter().filter(|l| !l.is_empty()).count()
    }
    fn globs(&self) -> usize {
        self.selector
            .iter()
            .filter(|l| l.iter().any(|p| p.contains('*')))
            .count()
    }
    /// Precedence: priority, then more fields set, then fewer globbed
    /// fields, then namespace/name.
    fn order(&self, other: &Ranked) -> std::cmp::Ordering {
        other
            .priority
            .cmp(&self.priority)
            .then(other.fields_set().cmp(&self.fields_set()))
            .then(self.globs().cmp(&other.globs()))
            .then(self.key.cmp(&other.key))
    }
}

/// Sort by precedence (first = wins); a later object with the same priority
/// and selector as an earlier one conflicts and is rejected.
fn rank(
    mut items: Vec<Ranked>,
    verdicts: &mut BTreeMap<ObjectKey, Result<(), Rejection>>,
) -> Vec<Value> {
    items.sort_by(|a, b| a.order(b));
    // (priority, selector) => the object that took it first
    let mut taken: HashMap<(i32, Vec<Vec<String>>), ObjectKey> = HashMap::new();
    let mut kept: Vec<Value> = Vec::with_capacity(items.len());
    for item in items {
        if let Some(winner) = taken.get(&(item.priority, item.selector.clone())) {
            verdicts.insert(
                item.key.clone(),
                Err(Rejection {
                    reason: "ConflictingMatch",
                    message: format!(
                        "spec.match: same match and priority as {}/{}, which takes precedence; change the match or the priority",
                        winner.namespace, winner.name
                    ),
                }),
            );
            continue;
        }
        taken.insert((item.priority, item.selector), item.key);
        kept.push(item.entry);
    }
    kept
}

fn normalise(list: &[String], fold_case: bool) -> Vec<String> {
    let mut out: Vec<String> = list
        .iter()
        .map(|s| {
            if fold_case {
                s.to_lowercase()
            } else {
                s.clone()
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A selector as a Lua table (only the lists that are set).
fn selector_table(fields: &[(&str, &Vec<String>)]) -> Value {
    let mut m = Map::new();
    for (name, list) in fields {
        if !list.is_empty() {
            m.insert(name.to_string(), json!(list));
        }
    }
    Value::Object(m)
}

/// Render the fleet's objects into the generated policy.
pub fn render(inputs: &Inputs, options: &Options) -> Rendered {
    let mut verdicts = BTreeMap::new();

    // Pools first: queue policies refer to them.
    let mut pools = inputs.egress_pools.clone();
    pools.sort_by_key(key_of);
    let mut pool_tables = Map::new();
    let mut source_tables: BTreeMap<String, (Value, String)> = BTreeMap::new();
    for pool in &pools {
        let key = key_of(pool);
        let verdict = validate::egress_pool(pool).and_then(|(pool_table, sources)| {
            for (name, table) in &sources {
                if let Some((existing, owner)) = source_tables.get(name)
                    && existing != table
                {
                    return Err(Rejection {
                        reason: "SourceConflict",
                        message: format!(
                            "spec.sources: source {name:?} is also defined, with other settings, by EgressPool {owner}"
                        ),
                    });
                }
            }
            for (name, table) in sources {
                source_tables
                    .entry(name)
                    .or_insert((table, key.name.clone()));
            }
            pool_tables.insert(key.name.clone(), pool_table);
            Ok(())
        });
        verdicts.insert(key, verdict);
    }

    let mut policies = Vec::new();
    let mut amqp = Vec::new();
    for qp in &inputs.queue_policies {
        let key = key_of(qp);
        let constructor = format!("sluice.amqp.{}.{}", key.namespace, key.name);
        match validate::queue_policy(qp, &constructor, options).and_then(|(config, publisher)| {
            if let Some(pool) = &qp.spec.egress_pool
                && !pool_tables.contains_key(pool)
            {
                let (reason, what) = if pools.iter().any(|p| &p.name_any() == pool) {
                    ("EgressPoolNotAccepted", "is not accepted (see its status)")
                } else {
                    ("EgressPoolNotFound", "does not exist in this namespace")
                };
                return Err(Rejection {
                    reason,
                    message: format!("spec.egressPool: EgressPool {pool:?} {what}"),
                });
            }
            Ok((config, publisher))
        }) {
            Ok((config, publisher)) => {
                let s = &qp.spec.selector;
                let mut entry = json!({
                    "name": format!("{}/{}", key.namespace, key.name),
                    "match": selector_table(&[
                        ("domains", &normalise(&s.domains, true)),
                        ("tenants", &normalise(&s.tenants, false)),
                        ("campaigns", &normalise(&s.campaigns, false)),
                        ("routing_domains", &normalise(&s.routing_domains, true)),
                    ]),
                    "config": config,
                });
                if let Some(r) = &qp.spec.requeue {
                    entry["requeue"] = json!({
                        "after_attempts": r.after_attempts,
                        "queue": r.queue,
                        "clear_scheduling": r.clear_scheduling,
                    });
                }
                if let Some(p) = publisher {
                    amqp.push((constructor, p));
                }
                policies.push(Ranked {
                    key: key.clone(),
                    priority: qp.spec.priority,
                    selector: vec![
                        normalise(&s.domains, true),
                        normalise(&s.tenants, false),
                        normalise(&s.campaigns, false),
                        normalise(&s.routing_domains, true),
                    ],
                    entry,
                });
                verdicts.insert(key, Ok(()));
            }
            Err(rejection) => {
                verdicts.insert(key, Err(rejection));
            }
        }
    }
    let policies = rank(policies, &mut verdicts);
    // the publishers of policies that lost a conflict are not needed
    amqp.retain(|(constructor, _)| {
        policies
            .iter()
            .any(|p| p["config"]["protocol"]["custom_lua"]["constructor"] == *constructor)
    });
    amqp.sort_by(|a, b| a.0.cmp(&b.0));

    let mut paths = Vec::new();
    for path in &inputs.egress_paths {
        let key = key_of(path);
        match validate::egress_path(path, options.fleet) {
            Ok(config) => {
                let s = &path.spec.selector;
                let entry = json!({
                    "name": format!("{}/{}", key.namespace, key.name),
                    "match": selector_table(&[
                        ("domains", &normalise(&s.domains, true)),
                        ("sites", &normalise(&s.sites, true)),
                        ("sources", &normalise(&s.sources, false)),
                    ]),
                    "config": config,
                });
                paths.push(Ranked {
                    key: key.clone(),
                    priority: path.spec.priority,
                    selector: vec![
                        normalise(&s.domains, true),
                        normalise(&s.sites, true),
                        normalise(&s.sources, false),
                    ],
                    entry,
                });
                verdicts.insert(key, Ok(()));
            }
            Err(rejection) => {
                verdicts.insert(key, Err(rejection));
            }
        }
    }
    let mut paths = rank(paths, &mut verdicts);
    // merged in order, so the one that takes precedence goes last
    paths.reverse();

    let (signers, signer_status) = dkim_signers(inputs, options, &mut verdicts);

    let sources: Map<String, Value> = source_tables
        .into_iter()
        .map(|(name, (table, _))| (name, table))
        .collect();
    let lua = runtime::policy_file(&runtime::Data {
        queue_policies: &policies,
        egress_pools: &Value::Object(pool_tables),
        egress_sources: &Value::Object(sources),
        egress_paths: &paths,
        amqp_publishers: &amqp,
        dkim_signers: &signers,
    });
    let hash = sha256_hex(lua.as_bytes());
    Rendered {
        files: BTreeMap::from([(POLICY_FILE.to_string(), lua)]),
        hash,
        verdicts,
        signers: signer_status,
    }
}

/// The accepted DkimSigners' entries (by namespace/name) and statuses.
fn dkim_signers(
    inputs: &Inputs,
    options: &Options,
    verdicts: &mut BTreeMap<ObjectKey, Result<(), Rejection>>,
) -> (Vec<Value>, BTreeMap<ObjectKey, SignerStatus>) {
    let mut objects = inputs.dkim_signers.clone();
    objects.sort_by_key(key_of);
    let mut accepted = Vec::new();
    for object in &objects {
        let key = key_of(object);
        match dkim::signer_entry(object, &key, &options.secrets_dir) {
            Ok(entry) => accepted.push((key, object, entry)),
            Err(r) => {
                verdicts.insert(key, Err(r));
            }
        }
    }
    let selectors: Vec<(ObjectKey, Vec<String>, String)> = accepted
        .iter()
        .map(|(key, o, _)| {
            (
                key.clone(),
                dkim::normalised_domains(o),
                o.spec.selector.to_lowercase(),
            )
        })
        .collect();
    let conflicting = dkim::conflicts(&selectors);
    let mut entries = Vec::new();
    let mut statuses = BTreeMap::new();
    for (key, object, entry) in accepted {
        if let Some(r) = conflicting.get(&key) {
            verdicts.insert(key, Err(r.clone()));
            continue;
        }
        statuses.insert(
            key.clone(),
            dkim::signer_status(object, inputs.secrets.as_ref()),
        );
        verdicts.insert(key, Ok(()));
        entries.push(entry);
    }
    (entries, statuses)
}

/// SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
