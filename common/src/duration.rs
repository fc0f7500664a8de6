//! Durations as KumoMTA's policy accepts them (spec §2.1): a number of seconds,
//! or a string of `<number><unit>` terms parsed by humantime (`"20 minutes"`,
//! `"1h 30m"`). A bare number in a string is rejected: a unit is required.

use serde::{Deserialize, Deserializer, de};
use std::time::Duration;

/// A duration that did not parse, with the input and why.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    /// The rejected input, as given.
    pub input: String,
    /// Why it was rejected.
    pub reason: String,
}

/// Parse a duration string such as `"20 minutes"`, `"1h 30m"` or `"1.5h"`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason: String| DurationError {
        input: input.to_string(),
        reason,
    };
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(err("empty string".into()));
    }
    if trimmed.parse::<f64>().is_ok() {
        return Err(err("a unit is required, e.g. '60 seconds'".into()));
    }
    humantime::parse_duration(trimmed).map_err(|e| err(e.to_string()))
}

/// A duration from seconds given as a (possibly fractional) number.
pub fn duration_from_secs_f64(secs: f64) -> Result<Duration, DurationError> {
    Duration::try_from_secs_f64(secs).map_err(|e| DurationError {
        input: secs.to_string(),
        reason: e.to_string(),
    })
}

/// Render a duration the way humantime does (`"20m"`, `"1h 30m"`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

struct DurationVisitor;

impl de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a duration: seconds as a number, or a string like '20 minutes'")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("invalid duration {v}: must not be negative")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        duration_from_secs_f64(v).map_err(E::custom)
    }
}

/// serde helper: `#[serde(deserialize_with = "duration::deserialize")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// serde helper for `Option<Duration>` fields.
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "deserialize")] Duration);
    Option::<Wrap>::deserialize(d).map(|o| o.map(|w| w.0))
}

/// serde helper for serialising durations as humantime strings.
pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// serde helper for serialising `Option<Duration>` fields as humantime strings.
pub fn serialize_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => serialize(d, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_spelled_out_forms() {
        let cases = [
            ("20 minutes", 1200),
            ("20m", 1200),
            ("1h 30m", 5400),
            ("1hour", 3600),
            ("7 days", 7 * 86400),
            ("2 seconds", 2),
            ("1 week", 7 * 86400),
            ("90s", 90),
        ];
        for (input, secs) in cases {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_secs(secs)),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_bare_numbers_and_garbage() {
        for input in ["60", "", "  ", "ten minutes", "5 parsecs", "-5s"] {
            let err = parse_duration(input).unwrap_err();
            assert_eq!(err.input, input);
        }
    }

    #[test]
    fn numbers_are_seconds_in_serde() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "deserialize")]
            d: Duration,
        }
        let t: T = serde_json::from_str(r#"{"d": 1.5}"#).unwrap();
        assert_eq!(t.d, Duration::from_millis(1500));
        let t: T = serde_json::from_str(r#"{"d": 30}"#).unwrap();
        assert_eq!(t.d, Duration::from_secs(30));
        assert!(serde_json::from_str::<T>(r#"{"d": -1}"#).is_err());
    }
}
