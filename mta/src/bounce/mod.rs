//! Bounce classification, as KumoMTA's `configure_bounce_classifier`:
//! rule files map labels to regular expressions over a response written as
//! one line (`550 5.1.1 text`, see [`single_line`]); the first rule that
//! matches — in file order, then in the order of the files — names the
//! label, and a response no rule matches is `Uncategorized`.
//!
//! Every rule is compiled into one `RegexSet`, so a classification is one
//! pass over the line whatever the number of rules. Responses repeat (the
//! same few hundred texts make up nearly every bounce of a day), so results
//! are kept in two LRU caches as KumoMTA does: one for lines that matched
//! and one for lines that did not, so that a flood of unique uncategorized
//! texts cannot push the useful entries out.

mod rules;
#[cfg(test)]
mod tests;

use lru::LruCache;
use parking_lot::Mutex;
use regex::RegexSet;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

pub use rules::RulesFile;

/// KumoMTA's predefined labels; a rule file may use others too.
pub const PREDEFINED: &[&str] = &[
    "InvalidRecipient",
    "DNSFailure",
    "SpamBlock",
    "SpamContent",
    "ProhibitedAttachment",
    "RelayDenied",
    "AutoReply",
    "TransientFailure",
    "Subscribe",
    "Unsubscribe",
    "ChallengeResponse",
    "BadConfiguration",
    "BadConnection",
    "BadDomain",
    "ContentRelated",
    "InactiveMailbox",
    "InvalidSender",
    "MessageExpired",
    "NoAnswerFromHost",
    "PolicyRelated",
    "ProtocolErrors",
    "QuotaIssues",
    "RelayingIssues",
    "RoutingErrors",
    "SpamRelated",
    "VirusRelated",
    "AuthenticationFailed",
    "TooManyRecipients",
    "Uncategorized",
];

/// A classification label. Cheap to clone (records carry one each).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label(Arc<str>);

static UNCATEGORIZED: LazyLock<Label> = LazyLock::new(|| Label("Uncategorized".into()));

impl Label {
    /// `Uncategorized`: what no rule matched.
    pub fn uncategorized() -> Label {
        UNCATEGORIZED.clone()
    }

    /// The label's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Label {
    fn default() -> Self {
        Label::uncategorized()
    }
}

impl serde::Serialize for Label {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl PartialEq<&str> for Label {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// Why a classifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BounceError {
    /// A rules file cannot be read.
    #[error("bounce classifier rules {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A rules file is not a `[rules]` table of label = [patterns].
    #[error("bounce classifier rules {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's complaint, with its line where it gave one.
        message: String,
    },
    /// A pattern is not a valid regular expression.
    #[error("bounce classifier rules {path}: {label}[{index}] {pattern:?}: {message}")]
    Pattern {
        /// The file.
        path: PathBuf,
        /// The label the pattern is under.
        label: String,
        /// Its position in that label's list, from 1.
        index: usize,
        /// The pattern.
        pattern: String,
        /// The regex compiler's complaint.
        message: String,
    },
    /// The rules together are too large to compile.
    #[error("bounce classifier: the rules do not compile together: {0}")]
    Set(String),
}

/// `configure_bounce_classifier`'s cache sizes (KumoMTA's defaults).
#[derive(Debug, Clone, Copy)]
pub struct CacheSizes {
    /// Lines that matched a rule.
    pub categorized: usize,
    /// Lines that did not.
    pub uncategorized: usize,
}

impl Default for CacheSizes {
    fn default() -> Self {
        CacheSizes {
            categorized: 1024,
            uncategorized: 1024,
        }
    }
}

/// `kumo.configure_bounce_classifier{...}` as given (KumoMTA's keys).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The rules files, in precedence order.
    pub files: Vec<PathBuf>,
    /// Accepted for KumoMTA compatibility: classification runs where the
    /// record is made, in microseconds, so nothing queues for it.
    #[serde(default)]
    pub back_pressure: Option<u64>,
    /// Accepted for KumoMTA compatibility (its classification threads).
    #[serde(default)]
    pub pool_size: Option<u64>,
    /// Lines that matched kept (default 1024).
    #[serde(default)]
    pub cache_size: Option<usize>,
    /// Lines that matched nothing kept (default 1024).
    #[serde(default)]
    pub uncategorized_cache_size: Option<usize>,
}

impl Params {
    /// Load and compile the files.
    pub fn build(&self) -> Result<Classifier, BounceError> {
        let d = CacheSizes::default();
        Classifier::load(
            &self.files,
            CacheSizes {
                categorized: self.cache_size.unwrap_or(d.categorized),
                uncategorized: self.uncategorized_cache_size.unwrap_or(d.uncategorized),
            },
        )
    }
}

/// The compiled rules of every file, and the caches.
pub struct Classifier {
    set: RegexSet,
    labels: Vec<Label>,
    files: Vec<PathBuf>,
    matched: Mutex<LruCache<Box<str>, Label>>,
    unmatched: Mutex<LruCache<Box<str>, ()>>,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("files", &self.files)
            .field("rules", &self.labels.len())
            .finish()
    }
}

fn cache<V>(size: usize) -> Mutex<LruCache<Box<str>, V>> {
    Mutex::new(LruCache::new(NonZeroUsize::new(size.max(1)).unwrap()))
}

impl Classifier {
    /// Load and compile `files` (TOML, or JSON when the name ends `.json`).
    pub fn load(files: &[PathBuf], sizes: CacheSizes) -> Result<Classifier, BounceError> {
        let mut parsed = vec![];
        for path in files {
            let text = std::fs::read_to_string(path).map_err(|source| BounceError::Read {
                path: path.clone(),
                source,
            })?;
            parsed.push((path.as_path(), RulesFile::parse(path, &text)?));
        }
        Classifier::build(&parsed, sizes)
    }

    /// Compile parsed files, in order.
    pub fn build(
        files: &[(&Path, RulesFile)],
        sizes: CacheSizes,
    ) -> Result<Classifier, BounceError> {
        let mut patterns = vec![];
        let mut labels = vec![];
        let mut interned: Vec<Label> = vec![];
        for (path, file) in files {
            for (label, list) in &file.rules {
                let label = match interned.iter().find(|l| l.as_str() == label) {
                    Some(l) => l.clone(),
                    None => {
                        let l = Label(label.as_str().into());
                        interned.push(l.clone());
                        l
                    }
                };
                for (i, pattern) in list.iter().enumerate() {
                    // checked one by one to name the pattern that is wrong
                    regex::Regex::new(pattern).map_err(|e| BounceError::Pattern {
                        path: path.to_path_buf(),
                        label: label.as_str().to_string(),
                        index: i + 1,
                        pattern: pattern.clone(),
                        message: e.to_string(),
                    })?;
                    patterns.push(pattern.as_str());
                    labels.push(label.clone());
                }
            }
        }
        let set = regex::RegexSetBuilder::new(&patterns)
            .size_limit(256 << 20)
            .dfa_size_limit(64 << 20)
            .build()
            .map_err(|e| BounceError::Set(e.to_string()))?;
        Ok(Classifier {
            set,
            labels,
            files: files.iter().map(|(p, _)| p.to_path_buf()).collect(),
            matched: cache(sizes.categorized),
            unmatched: cache(sizes.uncategorized),
        })
    }

    /// How many rules there are.
    pub fn rules(&self) -> usize {
        self.labels.len()
    }

    /// The label of a response line ([`single_line`]).
    pub fn classify(&self, line: &str) -> Label {
        if let Some(label) = self.matched.lock().get(line) {
            return label.clone();
        }
        if self.unmatched.lock().get(line).is_some() {
            return Label::uncategorized();
        }
        // the lowest-numbered rule that matches: the first in file order
        match self.set.matches(line).iter().next() {
            Some(i) => {
                let label = self.labels[i].clone();
                self.matched.lock().put(line.into(), label.clone());
                label
            }
            None => {
                self.unmatched.lock().put(line.into(), ());
                Label::uncategorized()
            }
        }
    }
}

/// A response as the rules see it, KumoMTA's normalization: the code, the
/// enhanced code when there is one, then the text with its line breaks
/// (a multi-line reply) made spaces — `550 5.1.1 no such user`.
pub fn single_line(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> String {
    let mut line = format!("{code} ");
    if let Some((class, subject, detail)) = enhanced {
        line.push_str(&format!("{class}.{subject}.{detail} "));
    }
    let mut words = text.split(['\r', '\n']).filter(|l| !l.is_empty());
    if let Some(first) = words.next() {
        line.push_str(first);
        for more in words {
            line.push(' ');
            line.push_str(more);
        }
    }
    line
}
