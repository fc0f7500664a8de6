//! KumoMTA's `shaping.toml` automation rules: under `default`, a domain
//! (`["yahoo.co.jp"]`) or a provider (`[provider."yahoo"]` with its
//! `match` list), `[[<entry>.automation]]` arrays of rules with `regex`
//! (one or a list), `action` (one or a list), `trigger` (`Immediate`, or
//! `{Threshold="N/period"}`), `duration` and `match_internal`. The other
//! keys of an entry are egress path settings, which automation does not
//! read. Files are TOML, or JSON when their name ends in `.json`; a rule's
//! mistake is reported with its file, entry and position.

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use sluice_common::{ThrottleSpec, duration};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a triggered rule does, for the rule's duration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum Action {
    /// Suspend the ready queue (egress source and site) the response came
    /// from: nothing is attempted there.
    Suspend,
    /// Suspend the scheduled queues of the record's tenant for its domain.
    SuspendTenant,
    /// Suspend those of its tenant and campaign for its domain.
    SuspendCampaign,
    /// Override an egress path setting for the site (source and site).
    SetConfig(ConfigValue),
    /// Override an egress path setting for the domain's own path.
    SetDomainConfig(ConfigValue),
    /// Bounce what is queued for the domain, and what arrives for it.
    Bounce,
    /// Bounce the domain's mail of the record's tenant.
    BounceTenant,
    /// Bounce the domain's mail of its tenant and campaign.
    BounceCampaign,
}

impl Action {
    /// The action's name, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Suspend => "Suspend",
            Action::SuspendTenant => "SuspendTenant",
            Action::SuspendCampaign => "SuspendCampaign",
            Action::SetConfig(_) => "SetConfig",
            Action::SetDomainConfig(_) => "SetDomainConfig",
            Action::Bounce => "Bounce",
            Action::BounceTenant => "BounceTenant",
            Action::BounceCampaign => "BounceCampaign",
        }
    }
}

/// `{name="max_message_rate", value="1/minute"}`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigValue {
    /// The egress path setting.
    pub name: String,
    /// Its value while the rule lasts.
    pub value: Value,
}

/// When a matching response sets a rule off.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Trigger {
    /// At the first match.
    #[default]
    Immediate,
    /// When `limit` matches fall within `period` (for the same site).
    Threshold(ThrottleSpec),
}

impl<'de> Deserialize<'de> for Trigger {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        enum Given {
            Immediate,
            Threshold(ThrottleSpec),
        }
        Ok(match Given::deserialize(d)? {
            Given::Immediate => Trigger::Immediate,
            Given::Threshold(spec) => Trigger::Threshold(spec),
        })
    }
}

/// Where a rule is written, for matching.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// `default`: every destination.
    Default,
    /// A domain's entry: mail for that domain.
    Domain(String),
    /// A provider's: domains whose site's MX hosts, or whose name, match.
    Provider(Vec<ProviderMatch>),
}

/// One entry of a provider's `match` list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum ProviderMatch {
    /// An MX host name ends with this (`.yahoodns.net`).
    MXSuffix(String),
    /// The domain ends with this.
    DomainSuffix(String),
    /// An MX host is this name.
    HostName(String),
}

/// One automation rule, checked.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Where it is written: `provider.yahoo automation[2]` (entries in
    /// file order, rules from 1), the same on every node with the file.
    pub name: String,
    /// Which destinations it watches.
    pub scope: Scope,
    /// The patterns, any of which matches the one-line response.
    pub regex: Vec<regex::Regex>,
    /// What it does when triggered.
    pub actions: Vec<Action>,
    /// When it triggers.
    pub trigger: Trigger,
    /// How long its actions last.
    pub duration: Duration,
    /// Whether it also looks at Sluice's own responses (`KumoMTA internal: ...`).
    pub match_internal: bool,
}

/// Why the rules cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file's syntax or a rule is wrong.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    regex: Value,
    action: Value,
    #[serde(default)]
    trigger: Trigger,
    #[serde(deserialize_with = "duration::deserialize")]
    duration: Duration,
    #[serde(default)]
    match_internal: bool,
}

/// One value or a list of them, each read as `T`.
fn one_or_many<T: serde::de::DeserializeOwned>(v: Value) -> Result<Vec<T>, serde_json::Error> {
    let items = match v {
        Value::Array(items) => items,
        one => vec![one],
    };
    items.into_iter().map(serde_json::from_value).collect()
}

fn invalid(path: &Path, message: String) -> RulesError {
    RulesError::Invalid {
        path: path.to_path_buf(),
        message,
    }
}

/// Every automation rule of `files`, in file then document order.
pub fn load(files: &[PathBuf]) -> Result<Vec<Rule>, RulesError> {
    let mut out = vec![];
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.clone(),
            source,
        })?;
        out.extend(parse(path, &text)?);
    }
    Ok(out)
}

/// The automation rules of one file's `text`.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Rule>, RulesError> {
    let invalid = |message: String| invalid(path, message);
    // a table keeps document order (toml's preserve_order), which names
    // the rules; JSON is read into one too
    let doc: toml::Table = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?
    } else {
        toml::from_str(text).map_err(|e| invalid(e.to_string()))?
    };
    let json = |v: &toml::Value| serde_json::to_value(v).unwrap_or_default();
    let mut out = vec![];
    for (key, entry) in &doc {
        if key == "provider" {
            let providers = entry
                .as_table()
                .ok_or_else(|| invalid("provider: expected a table of providers".to_string()))?;
            for (name, p) in providers {
                let p = json(p);
                let label = format!("provider.{name}");
                let matches: Vec<ProviderMatch> = match p.get("match") {
                    Some(m) => serde_json::from_value(m.clone())
                        .map_err(|e| invalid(format!("{label}: match: {e}")))?,
                    None => vec![],
                };
                if matches.is_empty() {
                    return Err(invalid(format!("{label}: a provider needs a match list")));
                }
                out.extend(rules_of(path, &label, Scope::Provider(matches), &p)?);
            }
            continue;
        }
        let scope = match key.as_str() {
            "default" => Scope::Default,
            domain => Scope::Domain(domain.to_ascii_lowercase()),
        };
        out.extend(rules_of(path, key, scope, &json(entry))?);
    }
    Ok(out)
}

fn rules_of(
    path: &Path,
    label: &str,
    scope: Scope,
    entry: &Value,
) -> Result<Vec<Rule>, RulesError> {
    let err = |m: String| invalid(path, m);
    let Some(list) = entry.get("automation") else {
        return Ok(vec![]);
    };
    let list = list
        .as_array()
        .ok_or_else(|| err(format!("{label}: automation must be an array of rules")))?;
    let mut out = vec![];
    for (i, raw) in list.iter().enumerate() {
        let name = format!("{label} automation[{}]", i + 1);
        let raw: RawRule =
            serde_json::from_value(raw.clone()).map_err(|e| err(format!("{name}: {e}")))?;
        let patterns: Vec<String> =
            one_or_many(raw.regex).map_err(|e| err(format!("{name}: regex: {e}")))?;
        let actions: Vec<Action> =
            one_or_many(raw.action).map_err(|e| err(format!("{name}: action: {e}")))?;
        let regex = patterns
            .iter()
            .map(|r| regex::Regex::new(r).map_err(|e| err(format!("{name}: regex {r:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if regex.is_empty() || actions.is_empty() {
            return Err(err(format!("{name}: needs a regex and an action")));
        }
        for a in &actions {
            match a {
                Action::SetDomainConfig(_) => {
                    return Err(err(format!(
                        "{name}: action SetDomainConfig is not supported yet (Sluice's ready \
                         queues are per site, not per domain); SetConfig, Suspend, \
                         SuspendTenant, SuspendCampaign and the Bounce actions are"
                    )));
                }
                // checked as make_egress_path would read it
                Action::SetConfig(c) => {
                    sluice_common::egress::EgressPathConfig::default()
                        .with_setting(&c.name, &c.value)
                        .map_err(|e| err(format!("{name}: SetConfig: {e}")))?;
                }
                _ => {}
            }
        }
        out.push(Rule {
            name,
            scope: scope.clone(),
            regex,
            actions,
            trigger: raw.trigger,
            duration: raw.duration,
            match_internal: raw.match_internal,
        });
    }
    Ok(out)
}

/// What a response is matched with: where it came from, and the response
/// as one line (`code class.subject.detail text`).
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    /// The recipient's domain, lowercase.
    pub domain: &'a str,
    /// The MX host names of the site it came from (empty for mx_list
    /// literals and other protocols).
    pub mx_hosts: &'a [String],
    /// The response, normalized.
    pub response: &'a str,
}

impl Rule {
    /// Whether this rule watches `subject`'s destination and its response
    /// matches.
    pub fn matches(&self, s: &Subject) -> bool {
        let internal = s.response.contains("KumoMTA internal: ");
        if internal && !self.match_internal {
            return false;
        }
        let watched = match &self.scope {
            Scope::Default => true,
            Scope::Domain(d) => d == s.domain,
            Scope::Provider(list) => list.iter().any(|m| match m {
                ProviderMatch::DomainSuffix(suffix) => {
                    s.domain.ends_with(&suffix.to_ascii_lowercase())
                }
                ProviderMatch::MXSuffix(suffix) => {
                    let suffix = suffix.to_ascii_lowercase();
                    s.mx_hosts.iter().any(|h| h.ends_with(&suffix))
                }
                ProviderMatch::HostName(name) => {
                    s.mx_hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
                }
            }),
        };
        watched && self.regex.iter().any(|r| r.is_match(s.response))
    }

    /// The rule as the records and the admin API name it.
    pub fn describe(&self) -> String {
        let patterns: Vec<&str> = self.regex.iter().map(regex::Regex::as_str).collect();
        format!("automation rule {} ({})", self.name, patterns.join(" | "))
    }
}
