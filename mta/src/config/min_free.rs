//! `min_free_space` and `min_free_inodes` (of `define_spool` and
//! `configure_local_logs`): how much of a volume must stay free for the MTA
//! to accept new mail.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// A free-space floor: a share of the volume (`"10%"`, KumoMTA's default) or
/// an absolute count (bytes for `min_free_space`, inodes for
/// `min_free_inodes`). `0` disables the check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    /// This percentage (0 to 100) of the volume's total.
    Percent(f64),
    /// At least this many bytes or inodes.
    Absolute(u64),
}

impl Default for MinFree {
    fn default() -> Self {
        MinFree::Percent(10.0)
    }
}

impl MinFree {
    /// How many bytes or inodes must stay free on a volume of `total`.
    pub fn required(&self, total: u64) -> u64 {
        match *self {
            MinFree::Percent(p) => (total as f64 * p / 100.0).ceil() as u64,
            MinFree::Absolute(n) => n,
        }
    }
}

impl fmt::Display for MinFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MinFree::Percent(p) => write!(f, "{p}%"),
            MinFree::Absolute(n) => write!(f, "{n}"),
        }
    }
}

/// `"10%"`, `"1000000"`, or a number.
fn parse(s: &str) -> Option<MinFree> {
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        let p: f64 = p.trim().parse().ok()?;
        return (0.0..=100.0).contains(&p).then_some(MinFree::Percent(p));
    }
    s.parse().ok().map(MinFree::Absolute)
}

struct MinFreeVisitor;

impl Visitor<'_> for MinFreeVisitor {
    type Value = MinFree;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a percentage of the volume such as \"10%\", or a count of bytes or inodes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<MinFree, E> {
        parse(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<MinFree, E> {
        Ok(MinFree::Absolute(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<MinFree, E> {
        u64::try_from(v)
            .map(MinFree::Absolute)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<MinFree, E> {
        // Lua numbers arrive as floats: accept whole, non-negative ones
        if v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64 {
            Ok(MinFree::Absolute(v as u64))
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
}

impl<'de> Deserialize<'de> for MinFree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MinFree, D::Error> {
        d.deserialize_any(MinFreeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_counts_and_bad_values() {
        let cases: &[(serde_json::Value, Option<MinFree>)] = &[
            (serde_json::json!("10%"), Some(MinFree::Percent(10.0))),
            (serde_json::json!(" 2.5 %"), Some(MinFree::Percent(2.5))),
            (serde_json::json!("0%"), Some(MinFree::Percent(0.0))),
            (
                serde_json::json!("1000000"),
                Some(MinFree::Absolute(1_000_000)),
            ),
            (serde_json::json!(5000), Some(MinFree::Absolute(5000))),
            (serde_json::json!(5000.0), Some(MinFree::Absolute(5000))),
            (serde_json::json!("101%"), None),
            (serde_json::json!("-1%"), None),
            (serde_json::json!(-1), None),
            (serde_json::json!(1.5), None),
            (serde_json::json!("lots"), None),
            (serde_json::json!("2GB"), None),
        ];
        for (value, want) in cases {
            let got = serde_json::from_value::<MinFree>(value.clone()).ok();
            assert_eq!(got, *want, "{value}");
        }
    }

    #[test]
    fn required_rounds_up_and_absolute_ignores_the_total() {
        assert_eq!(MinFree::Percent(10.0).required(6_291_456), 629_146);
        assert_eq!(MinFree::Percent(0.0).required(6_291_456), 0);
        assert_eq!(MinFree::Absolute(42).required(0), 42);
        assert_eq!(MinFree::default(), MinFree::Percent(10.0));
    }
}
