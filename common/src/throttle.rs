//! Throttle specs (spec §2.2): `["local:"] limit "/" [N] unit [",max_burst=" B]`,
//! e.g. `10/s`, `1,000/hr`, `1_000/h`, `20/30minute`, `local:5/s,max_burst=2`.
//! Plural units and whitespace are rejected, as KumoMTA's parser does.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A parsed throttle: at most `limit` events per `period_secs`, enforced by
/// GCRA (spec §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThrottleSpec {
    /// How many events are allowed per `period`.
    pub limit: u64,
    /// The period, in whole seconds.
    pub period_secs: u64,
    /// Burst allowance; `None` means "equal to limit".
    pub max_burst: Option<u64>,
    /// `local:` prefix: always node-local, even if shared throttles exist.
    pub force_local: bool,
}

/// A throttle spec that did not parse, with the input and why.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid throttle {input:?}: {reason}")]
pub struct ThrottleError {
    /// The rejected input, as given.
    pub input: String,
    /// Why it was rejected.
    pub reason: String,
}

fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut value: u64 = 0;
    for c in s.chars() {
        match c {
            '0'..='9' => {
                value = value
                    .checked_mul(10)?
                    .checked_add(u64::from(c as u8 - b'0'))?;
            }
            '_' | ',' => {}
            _ => return None,
        }
    }
    Some(value)
}

fn unit_secs(unit: &str) -> Option<u64> {
    Some(match unit {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hr" | "hour" => 3600,
        "d" | "day" => 86400,
        _ => return None,
    })
}

impl FromStr for ThrottleSpec {
    type Err = ThrottleError;

    fn from_str(input: &str) -> Result<Self, ThrottleError> {
        let err = |reason: &str| ThrottleError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.chars().any(char::is_whitespace) {
            return Err(err("whitespace is not allowed"));
        }
        let (force_local, rest) = match input.strip_prefix("local:") {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        let (limit, period) = rest
            .split_once('/')
            .ok_or_else(|| err("expected LIMIT/PERIOD, e.g. '10/s'"))?;
        let limit = parse_number(limit).ok_or_else(|| err("the limit must be a number"))?;
        if limit == 0 {
            return Err(err("the limit must be greater than zero"));
        }
        let (period, max_burst) = match period.split_once(",max_burst=") {
            Some((period, burst)) => {
                let burst = parse_number(burst).ok_or_else(|| err("max_burst must be a number"))?;
                (period, Some(burst))
            }
            None => (period, None),
        };
        let digits = period.chars().take_while(|c| c.is_ascii_digit()).count();
        let (multiplier, unit) = period.split_at(digits);
        let multiplier = if multiplier.is_empty() {
            1
        } else {
            match multiplier.parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => return Err(err("the period multiplier must be greater than zero")),
            }
        };
        let unit = unit_secs(unit).ok_or_else(|| {
            err("unknown period unit; use s, sec, second, m, min, minute, h, hr, hour, d or day")
        })?;
        Ok(ThrottleSpec {
            limit,
            period_secs: unit * multiplier,
            max_burst,
            force_local,
        })
    }
}

impl ThrottleSpec {
    /// The period as a [`Duration`].
    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period_secs)
    }

    /// This throttle's share on one of `nodes` nodes enforcing it apart:
    /// the same limit over `nodes` times the period (so the shares sum to
    /// the rate exactly, however small the limit), and the burst divided,
    /// never below one. One node keeps the spec as it is.
    pub fn split(&self, nodes: u32) -> ThrottleSpec {
        if nodes <= 1 {
            return *self;
        }
        let burst = self.max_burst.unwrap_or(self.limit).min(self.limit - 1) + 1;
        let share = (burst / u64::from(nodes)).max(1);
        ThrottleSpec {
            limit: self.limit,
            period_secs: self.period_secs * u64::from(nodes),
            max_burst: Some(share - 1),
            force_local: self.force_local,
        }
    }

    /// Emission interval `T = period / limit`, in nanoseconds.
    pub fn emission_ns(&self) -> u128 {
        u128::from(self.period_secs) * 1_000_000_000 / u128::from(self.limit)
    }

    /// Tolerance `tau = T * (b + 1)` with `b = min(max_burst or limit, limit - 1)`.
    pub fn tolerance_ns(&self) -> u128 {
        let b = self.max_burst.unwrap_or(self.limit).min(self.limit - 1);
        self.emission_ns() * u128::from(b + 1)
    }

    /// The key KumoMTA stores this throttle's state under.
    pub fn key(&self, name: &str) -> String {
        format!(
            "{name}:{}:{}:{}",
            self.limit,
            self.max_burst.unwrap_or(self.limit),
            self.period_secs
        )
    }

    /// One GCRA check (spec §2.3) at `now_ns` against the stored theoretical
    /// arrival time `tat`. Allowed: `tat` advances and `None` is returned.
    /// Throttled: `tat` is kept and the wait, rounded up to whole seconds, is
    /// returned.
    pub fn check(&self, tat: &mut Option<u128>, now_ns: u128) -> Option<Duration> {
        let t = self.emission_ns();
        let tau = self.tolerance_ns();
        let new_tat = tat.unwrap_or(now_ns).max(now_ns) + t;
        let allow_at = new_tat.saturating_sub(tau);
        if now_ns < allow_at {
            let wait_ns = allow_at - now_ns;
            let secs = wait_ns.div_ceil(1_000_000_000);
            Some(Duration::from_secs(secs as u64))
        } else {
            *tat = Some(new_tat);
            None
        }
    }
}

impl fmt::Display for ThrottleSpec {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.force_local {
            f.write_str("local:")?;
        }
        write!(f, "{}/", self.limit)?;
        match self.period_secs {
            86400 => f.write_str("d")?,
            3600 => f.write_str("h")?,
            60 => f.write_str("m")?,
            1 => f.write_str("s")?,
            n => write!(f, "{n}s")?,
        }
        if let Some(b) = self.max_burst {
            write!(f, ",max_burst={b}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for ThrottleSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ThrottleSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limit: u64, period_secs: u64, burst: Option<u64>, local: bool) -> ThrottleSpec {
        ThrottleSpec {
            limit,
            period_secs,
            max_burst: burst,
            force_local: local,
        }
    }

    #[test]
    fn a_split_shares_the_rate_and_the_burst() {
        let s: ThrottleSpec = "100/h".parse().unwrap();
        let third = s.split(3);
        // three shares of 100 per 3 h are 100/h
        assert_eq!((third.limit, third.period_secs), (100, 3 * 3600));
        assert_eq!(third.emission_ns(), s.emission_ns() * 3);
        // a burst of 100 split three ways: 33 each
        assert_eq!(third.tolerance_ns(), third.emission_ns() * 33);
        // 1/h over 3 nodes: still one at a time, one every 3 h per node
        let one = "1/h".parse::<ThrottleSpec>().unwrap().split(3);
        assert_eq!(one.tolerance_ns(), one.emission_ns());
        assert_eq!(one.period_secs, 3 * 3600);
        assert_eq!(s.split(1), s);
        let mut tat = None;
        let allowed = (0..50)
            .filter(|_| third.check(&mut tat, 0).is_none())
            .count();
        assert_eq!(allowed, 33, "a node's burst is its share");
    }

    #[test]
    fn parses_the_documented_examples() {
        let cases = [
            ("10/s", spec(10, 1, None, false)),
            ("10/sec", spec(10, 1, None, false)),
            ("10/second", spec(10, 1, None, false)),
            ("50/m", spec(50, 60, None, false)),
            ("50/min", spec(50, 60, None, false)),
            ("50/minute", spec(50, 60, None, false)),
            ("1,000/hr", spec(1000, 3600, None, false)),
            ("1_000/h", spec(1000, 3600, None, false)),
            ("1000/hour", spec(1000, 3600, None, false)),
            ("10_000/d", spec(10_000, 86400, None, false)),
            ("10,000/day", spec(10_000, 86400, None, false)),
            ("20/30minute", spec(20, 1800, None, false)),
            ("20/30min", spec(20, 1800, None, false)),
            ("local:5/s", spec(5, 1, None, true)),
            ("6/m,max_burst=1", spec(6, 60, Some(1), false)),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<ThrottleSpec>(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn rejects_plurals_whitespace_and_zero() {
        for input in [
            "10/seconds",
            "10/minutes",
            "10 / s",
            "10/ s",
            "0/s",
            "10",
            "/s",
            "ten/s",
            "10/0s",
            "10/fortnight",
            "10/s,max_burst=x",
        ] {
            let err = input.parse::<ThrottleSpec>().unwrap_err();
            assert_eq!(err.input, input);
            assert!(err.to_string().contains(input), "{err}");
        }
    }

    /// GCRA as data (spec §2.3): (spec, arrival times in ms, expected result
    /// per arrival: 0 = allowed, n = throttled with retry_after n seconds).
    #[test]
    fn gcra_table() {
        let cases: &[(&str, &[u64], &[u64])] = &[
            // no max_burst: `limit` at once, the next waits (0.1 s rounds up to 1 s)
            ("10/s", &[0; 11], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            // a throttled attempt does not consume: after 1 s ten more pass
            (
                "10/s",
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1000],
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            ),
            // steady one per T passes forever
            ("2/s", &[0, 500, 1000, 1500, 2000, 2500], &[0; 6]),
            // max_burst=1 at 6/m: 2 at once, then one per 10 s
            (
                "6/m,max_burst=1",
                &[0, 0, 0, 9_000, 10_000, 10_000],
                &[0, 0, 10, 1, 0, 10],
            ),
            // 1000/h: T = 3.6 s; with the bucket full the wait is 3.6 s -> 4 s
            ("1000/h,max_burst=1", &[0, 0, 0], &[0, 0, 4]),
            ("1/d", &[0, 1000], &[0, 86399]),
            ("20/30minute,max_burst=1", &[0, 0, 0], &[0, 0, 90]),
        ];
        for (spec, arrivals, expected) in cases {
            let spec: ThrottleSpec = spec.parse().unwrap();
            let mut tat = None;
            let got: Vec<u64> = arrivals
                .iter()
                .map(|ms| {
                    spec.check(&mut tat, u128::from(*ms) * 1_000_000)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                })
                .collect();
            assert_eq!(&got, expected, "{spec}");
        }
    }

    #[test]
    fn renders_canonically() {
        for (input, rendered) in [
            ("1,000/hr", "1000/h"),
            ("20/30minute", "20/1800s"),
            ("local:5/sec,max_burst=2", "local:5/s,max_burst=2"),
            ("10_000/day", "10000/d"),
        ] {
            assert_eq!(input.parse::<ThrottleSpec>().unwrap().to_string(), rendered);
        }
    }
}
