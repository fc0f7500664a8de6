//! `msg:set_scheduling{...}` (spec §3.6): an earliest first attempt, an
//! expiry time, and a weekly delivery window in an IANA time zone. Every due
//! time is raised to `first_attempt`, then moved to the next window start if
//! it falls outside the window.

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The table a policy passes to `set_scheduling`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulingInput {
    /// No attempt before this time (RFC 3339).
    pub first_attempt: Option<String>,
    /// A message due at or after this time (RFC 3339) expires instead.
    pub expires: Option<String>,
    /// The days the window is open, comma-separated (`Mon,Wed,Fri`); given with
    /// `tz`, `start` and `end`.
    pub dow: Option<String>,
    /// The window's IANA time zone (`America/New_York`).
    pub tz: Option<String>,
    /// When the window opens each day, `HH:MM:SS` local time.
    pub start: Option<String>,
    /// When the window closes each day, `HH:MM:SS` local time, after `start`.
    pub end: Option<String>,
}

/// Normalised scheduling constraints, stored in the message's spool record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scheduling {
    /// The earliest attempt: earlier due times are raised to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt: Option<DateTime<Utc>>,
    /// A message due at or after this time expires instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// The weekly window every attempt must fall in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restriction: Option<Window>,
}

/// A weekly delivery window: from `start` to `end` on the given days, in zone
/// `tz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Days as three-letter names, e.g. `["Mon", "Wed"]`.
    pub dow: Vec<String>,
    /// The IANA time zone the times are in.
    pub tz: String,
    /// When the window opens, local time of day.
    pub start: NaiveTime,
    /// When the window closes, local time of day (not itself inside it).
    pub end: NaiveTime,
}

/// What is wrong with a `set_scheduling` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(String);

fn parse_time(what: &str, s: &str) -> Result<DateTime<Utc>, ScheduleError> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| ScheduleError(format!("{what} {s:?} is not an RFC 3339 time: {e}")))
}

fn parse_day(s: &str) -> Result<Weekday, ScheduleError> {
    s.trim()
        .parse::<Weekday>()
        .map_err(|_| ScheduleError(format!("dow: {s:?} is not a day of the week")))
}

impl TryFrom<SchedulingInput> for Scheduling {
    type Error = ScheduleError;

    fn try_from(i: SchedulingInput) -> Result<Self, ScheduleError> {
        let first_attempt = i
            .first_attempt
            .as_deref()
            .map(|s| parse_time("first_attempt", s))
            .transpose()?;
        let expires = i
            .expires
            .as_deref()
            .map(|s| parse_time("expires", s))
            .transpose()?;
        let restriction = match (i.dow, i.tz, i.start, i.end) {
            (None, None, None, None) => None,
            (Some(dow), Some(tz), Some(start), Some(end)) => {
                tz.parse::<Tz>().map_err(|_| {
                    ScheduleError(format!("tz: {tz:?} is not an IANA time zone name"))
                })?;
                let days = dow
                    .split(',')
                    .map(|d| parse_day(d).map(|w| format!("{w}")))
                    .collect::<Result<Vec<_>, _>>()?;
                let time = |what: &str, s: &str| {
                    NaiveTime::parse_from_str(s, "%H:%M:%S")
                        .map_err(|_| ScheduleError(format!("{what}: {s:?} is not HH:MM:SS")))
                };
                let (start, end) = (time("start", &start)?, time("end", &end)?);
                if start >= end {
                    return Err(ScheduleError(format!(
                        "start {start} must be before end {end}"
                    )));
                }
                Some(Window {
                    dow: days,
                    tz,
                    start,
                    end,
                })
            }
            _ => {
                return Err(ScheduleError(
                    "dow, tz, start and end must be given together".into(),
                ));
            }
        };
        Ok(Scheduling {
            first_attempt,
            expires,
            restriction,
        })
    }
}

impl Window {
    /// The zone; `None` for a name that is not one, which `set_scheduling`
    /// refuses but a damaged or hand-edited spool record may carry: such a
    /// window restricts nothing rather than panicking.
    fn tz(&self) -> Option<Tz> {
        self.tz.parse().ok()
    }

    fn allows(&self, day: Weekday) -> bool {
        self.dow
            .iter()
            .any(|d| d.parse::<Weekday>().ok() == Some(day))
    }

    /// The earliest instant at or after `t` that lies inside the window
    /// (searching up to 8 days ahead), or `t` itself if none is found.
    fn next_open(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let Some(tz) = self.tz() else {
            return t;
        };
        let local = t.with_timezone(&tz);
        for offset in 0..8 {
            let date = local.date_naive() + Duration::days(offset);
            if !self.allows(date.weekday()) {
                continue;
            }
            let open = tz
                .from_local_datetime(&date.and_time(self.start))
                .earliest();
            let close = tz.from_local_datetime(&date.and_time(self.end)).latest();
            let (Some(open), Some(close)) = (open, close) else {
                continue;
            };
            let (open, close) = (open.with_timezone(&Utc), close.with_timezone(&Utc));
            if t < open {
                return open;
            }
            if t < close {
                return t;
            }
        }
        t
    }
}

impl Scheduling {
    /// Apply the constraints to a proposed due time.
    pub fn adjust(&self, due: DateTime<Utc>) -> DateTime<Utc> {
        let mut due = match self.first_attempt {
            Some(first) if first > due => first,
            _ => due,
        };
        if let Some(w) = &self.restriction {
            due = w.next_open(due);
        }
        due
    }

    /// True when a message due at `due` must expire instead.
    pub fn expired_at(&self, due: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| due >= e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(json: &str) -> Result<Scheduling, ScheduleError> {
        let input: SchedulingInput = serde_json::from_str(json).unwrap();
        Scheduling::try_from(input)
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn first_attempt_raises_the_due_time() {
        let s = sched(r#"{"first_attempt": "2026-11-23T10:00:00Z"}"#).unwrap();
        assert_eq!(
            s.adjust(at("2026-11-22T00:00:00Z")),
            at("2026-11-23T10:00:00Z")
        );
        assert_eq!(
            s.adjust(at("2026-11-24T00:00:00Z")),
            at("2026-11-24T00:00:00Z")
        );
    }

    #[test]
    fn windows_move_due_times_to_the_next_opening() {
        // Mon and Wed, 09:00-17:00 New York (UTC-5 in November)
        let s = sched(r#"{"dow": "Mon,Wed", "tz": "America/New_York", "start": "09:00:00", "end": "17:00:00"}"#).unwrap();
        // Sunday 2026-11-22 12:00 UTC -> Monday 09:00 local = 14:00 UTC
        assert_eq!(
            s.adjust(at("2026-11-22T12:00:00Z")),
            at("2026-11-23T14:00:00Z")
        );
        // inside the window stays
        assert_eq!(
            s.adjust(at("2026-11-23T15:00:00Z")),
            at("2026-11-23T15:00:00Z")
        );
        // Monday after close -> Wednesday opening
        assert_eq!(
            s.adjust(at("2026-11-23T23:00:00Z")),
            at("2026-11-25T14:00:00Z")
        );
        // full names are accepted
        assert!(
            sched(r#"{"dow": "Monday", "tz": "UTC", "start": "09:00:00", "end": "10:00:00"}"#)
                .is_ok()
        );
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        let e = sched(r#"{"first_attempt": "tomorrow"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("first_attempt") && e.contains("tomorrow"), "{e}");
        let e = sched(
            r#"{"dow": "Mon", "tz": "Mars/Olympus", "start": "09:00:00", "end": "10:00:00"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Mars/Olympus"), "{e}");
        let e = sched(r#"{"dow": "Mon", "tz": "UTC"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("together"), "{e}");
        let e = sched(r#"{"dow": "Funday", "tz": "UTC", "start": "09:00:00", "end": "10:00:00"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Funday"), "{e}");
    }

    /// Spooled scheduling is not validated again when read back: whatever
    /// it holds, the message is still scheduled (unrestricted), never a panic.
    #[test]
    fn damaged_spooled_scheduling_restricts_nothing() {
        for window in [
            r#"{"dow": ["Mon"], "tz": "Mars/Olympus", "start": "09:00:00", "end": "17:00:00"}"#,
            r#"{"dow": ["Funday"], "tz": "UTC", "start": "09:00:00", "end": "17:00:00"}"#,
            r#"{"dow": [], "tz": "UTC", "start": "09:00:00", "end": "17:00:00"}"#,
            r#"{"dow": ["Mon"], "tz": "UTC", "start": "17:00:00", "end": "09:00:00"}"#,
        ] {
            let json = format!(r#"{{"restriction": {window}}}"#);
            let s: Scheduling = serde_json::from_str(&json).unwrap();
            let t = at("2026-11-22T12:00:00Z");
            let due = s.adjust(t);
            assert!(due >= t && due - t <= Duration::days(8), "{window}: {due}");
        }
    }

    #[test]
    fn expiry() {
        let s = sched(r#"{"expires": "2026-11-23T00:00:00Z"}"#).unwrap();
        assert!(!s.expired_at(at("2026-11-22T23:59:59Z")));
        assert!(s.expired_at(at("2026-11-23T00:00:00Z")));
    }
}
