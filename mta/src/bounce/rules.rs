//! A rules file: KumoMTA's `[rules]` table, label = [patterns], in TOML or
//! JSON. The labels' order in the file is the rules' precedence, so the
//! table is read in document order rather than into a sorted map.

use super::BounceError;
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use std::path::Path;

/// One file's rules, in the file's order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// (label, patterns), as written.
    pub rules: OrderedRules,
}

/// A table of label → patterns kept in document order.
#[derive(Debug, Default)]
pub struct OrderedRules(Vec<(String, Vec<String>)>);

impl<'a> IntoIterator for &'a OrderedRules {
    type Item = &'a (String, Vec<String>);
    type IntoIter = std::slice::Iter<'a, (String, Vec<String>)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'de> Deserialize<'de> for OrderedRules {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = OrderedRules;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of label = [regular expressions]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedRules, A::Error> {
                let mut rules: Vec<(String, Vec<String>)> = vec![];
                while let Some((label, patterns)) = map.next_entry::<String, Vec<String>>()? {
                    if label.is_empty() {
                        return Err(serde::de::Error::custom("a label is empty"));
                    }
                    // a label given twice (JSON allows it) adds to its list
                    match rules.iter_mut().find(|(l, _)| *l == label) {
                        Some((_, list)) => list.extend(patterns),
                        None => rules.push((label, patterns)),
                    }
                }
                Ok(OrderedRules(rules))
            }
        }
        d.deserialize_map(Ordered)
    }
}

impl RulesFile {
    /// Parse `text`, JSON when `path` ends in `.json`, else TOML.
    pub fn parse(path: &Path, text: &str) -> Result<RulesFile, BounceError> {
        let parse_error = |message: String| BounceError::Parse {
            path: path.to_path_buf(),
            message,
        };
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(text).map_err(|e| parse_error(e.to_string()))
        } else {
            toml::from_str(text).map_err(|e| parse_error(e.to_string().trim_end().to_string()))
        }
    }
}
