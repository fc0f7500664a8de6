//! When a message is tried next, as pure functions of the queue's config,
//! the message's age and scheduling, and the time (spec §3.1–3.3, §3.6):
//! exponential backoff with KumoMTA's jitter and `max_retry_interval` cap,
//! expiry at `max_age` (or the `expires` of `set_scheduling`), throttle
//! delays, and the random wait of a full ready queue.

use crate::message::schedule::Scheduling;
use chrono::{DateTime, TimeDelta, Utc};
use sluice_common::duration::format_duration;
use sluice_common::queue_config::QueueConfig;
use std::time::Duration;

/// What comes after a failure or a delay.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Try again at this time.
    At(DateTime<Utc>),
    /// Give up: an Expiration with this text (`5.4.7 ...`).
    Expire(String),
}

/// `due` moved by the message's scheduling constraints, if any.
pub fn constrained(schedule: Option<&Scheduling>, due: DateTime<Utc>) -> DateTime<Utc> {
    match schedule {
        Some(s) => s.adjust(due),
        None => due,
    }
}

/// Whether a message created at `created` is past `max_age` at `at`.
pub fn too_old(config: &QueueConfig, created: DateTime<Utc>, at: DateTime<Utc>) -> bool {
    (at - created).to_std().unwrap_or_default() >= config.max_age
}

fn human(d: TimeDelta) -> String {
    format_duration(Duration::from_secs(d.num_seconds().max(0) as u64))
}

/// After a transient failure of a message that had `attempts` attempts:
/// the backoff `retry_interval * 2^attempts` (capped), plus jitter from the
/// uniform sample `jitter` in [0, 1), moved by scheduling; or expiry when
/// that time is past `expires` (which then replaces `max_age`) or past
/// `max_age` after creation.
pub fn after_transient(
    config: &QueueConfig,
    attempts: u16,
    created: DateTime<Utc>,
    schedule: Option<&Scheduling>,
    now: DateTime<Utc>,
    jitter: f64,
) -> Next {
    let delay = config.delay_for_attempt(attempts);
    let jitter = config.jitter_secs(jitter);
    let delay_ms = (delay.as_millis() as i64)
        .saturating_add(jitter.saturating_mul(1000))
        .max(0);
    let due = constrained(schedule, now + TimeDelta::milliseconds(delay_ms));
    let age = due - created;
    match schedule.and_then(|s| s.expires) {
        Some(e) if due >= e => Next::Expire(format!(
            "5.4.7 Next delivery time {} is at or after the expiry {} configured via set_scheduling",
            due.to_rfc3339(),
            e.to_rfc3339()
        )),
        Some(_) => Next::At(due),
        None if age.to_std().unwrap_or_default() > config.max_age => Next::Expire(format!(
            "5.4.7 Next delivery time would be {} after creation, which exceeds max_age={}",
            human(age),
            format_duration(config.max_age),
        )),
        None => Next::At(due),
    }
}

/// After a throttle said `wait`: exactly then (moved by scheduling), or
/// expiry when that is past `max_age`.
pub fn after_throttle(
    config: &QueueConfig,
    created: DateTime<Utc>,
    schedule: Option<&Scheduling>,
    now: DateTime<Utc>,
    wait: Duration,
) -> Next {
    let due = constrained(
        schedule,
        now + TimeDelta::from_std(wait).unwrap_or_default(),
    );
    if too_old(config, created, due) {
        return Next::Expire(format!(
            "5.4.7 Next delivery time would exceed max_age={}",
            format_duration(config.max_age)
        ));
    }
    Next::At(due)
}

/// How long a message waits when its ready queue is full (spec §3.2): a
/// uniform 0-60 s from the sample `u` in [0, 1), so the queue drains before
/// the messages return.
pub fn ready_full_wait(u: f64) -> Duration {
    Duration::from_millis((u.clamp(0.0, 0.999_999) * 60_000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::duration::parse_duration;

    fn config(retry: &str, max_retry: Option<&str>, max_age: &str) -> QueueConfig {
        QueueConfig {
            retry_interval: parse_duration(retry).unwrap(),
            max_retry_interval: max_retry.map(|m| parse_duration(m).unwrap()),
            max_age: parse_duration(max_age).unwrap(),
            ..QueueConfig::default()
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const T0: &str = "2026-12-01T00:00:00Z";
    /// The jitter sample that adds nothing: J*0.5 - J/2 = 0.
    const NO_JITTER: f64 = 0.5;

    fn secs_after(next: &Next, now: DateTime<Utc>) -> i64 {
        match next {
            Next::At(due) => (*due - now).num_seconds(),
            Next::Expire(e) => panic!("expired: {e}"),
        }
    }

    #[test]
    fn the_backoff_doubles_per_attempt() {
        let c = config("20m", None, "5d");
        let now = t(T0);
        let delays: Vec<i64> = (0..6)
            .map(|a| secs_after(&after_transient(&c, a, now, None, now, NO_JITTER), now))
            .collect();
        assert_eq!(delays, [1200, 2400, 4800, 9600, 19200, 38400]);
    }

    #[test]
    fn the_backoff_stops_at_max_retry_interval() {
        let c = config("20m", Some("2h"), "5d");
        let now = t(T0);
        let delays: Vec<i64> = (0..6)
            .map(|a| secs_after(&after_transient(&c, a, now, None, now, NO_JITTER), now))
            .collect();
        assert_eq!(delays, [1200, 2400, 4800, 7200, 7200, 7200]);
        // a huge attempt count neither overflows nor goes past the cap
        assert_eq!(
            secs_after(
                &after_transient(&c, u16::MAX, now, None, now, NO_JITTER),
                now
            ),
            7200
        );
    }

    #[test]
    fn jitter_stays_within_half_the_span_either_way() {
        // J = min(retry_interval / 20, 60) = 60 s for 20 minutes
        let c = config("20m", None, "5d");
        let now = t(T0);
        let low = secs_after(&after_transient(&c, 0, now, None, now, 0.0), now);
        let high = secs_after(&after_transient(&c, 0, now, None, now, 0.999), now);
        assert_eq!((low, high), (1200 - 30, 1200 + 29));
        // a short interval has a short span: J = 1 s for 20 s
        let c = config("20s", None, "5d");
        let low = secs_after(&after_transient(&c, 0, now, None, now, 0.0), now);
        assert_eq!(low, 20);
    }

    #[test]
    fn a_retry_past_max_age_expires_instead() {
        let c = config("1h", None, "3h");
        let created = t(T0);
        // attempts 0 and 1 end at 1 h and 2 h + 1 h = 3 h after creation: allowed
        assert!(matches!(
            after_transient(&c, 0, created, None, created, NO_JITTER),
            Next::At(_)
        ));
        let at_2h = created + TimeDelta::hours(1);
        assert!(matches!(
            after_transient(&c, 1, created, None, at_2h, NO_JITTER),
            Next::At(_)
        ));
        // the third would be 4 h after creation
        let at_3h = created + TimeDelta::hours(3);
        match after_transient(&c, 2, created, None, at_3h, NO_JITTER) {
            Next::Expire(text) => {
                assert!(text.starts_with("5.4.7"), "{text}");
                assert!(text.contains("max_age=3h"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_expires_time_replaces_max_age() {
        let c = config("1h", None, "1h");
        let created = t(T0);
        let s = Scheduling {
            first_attempt: None,
            expires: Some(t("2026-12-03T00:00:00Z")),
            restriction: None,
        };
        // past max_age, but before expires: retried
        let later = t("2026-12-01T12:00:00Z");
        assert!(matches!(
            after_transient(&c, 0, created, Some(&s), later, NO_JITTER),
            Next::At(_)
        ));
        // a due time at or after expires: expired, naming both
        let late = t("2026-12-02T23:30:00Z");
        match after_transient(&c, 0, created, Some(&s), late, NO_JITTER) {
            Next::Expire(text) => assert!(text.contains("set_scheduling"), "{text}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scheduling_moves_a_retry_to_the_window() {
        let c = config("1h", None, "5d");
        let s = Scheduling {
            first_attempt: Some(t("2026-12-01T06:00:00Z")),
            expires: None,
            restriction: None,
        };
        let now = t(T0);
        assert_eq!(
            after_transient(&c, 0, now, Some(&s), now, NO_JITTER),
            Next::At(t("2026-12-01T06:00:00Z"))
        );
        assert_eq!(constrained(None, now), now);
    }

    #[test]
    fn a_throttle_delay_is_exact_unless_it_ends_past_max_age() {
        let c = config("1h", None, "1h");
        let created = t(T0);
        let now = created + TimeDelta::minutes(30);
        assert_eq!(
            after_throttle(&c, created, None, now, Duration::from_secs(10)),
            Next::At(now + TimeDelta::seconds(10))
        );
        match after_throttle(&c, created, None, now, Duration::from_secs(1800)) {
            Next::Expire(text) => assert!(text.contains("exceed max_age=1h"), "{text}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn age_is_measured_from_creation() {
        let c = config("1h", None, "2h");
        let created = t(T0);
        assert!(!too_old(&c, created, created + TimeDelta::minutes(119)));
        assert!(too_old(&c, created, created + TimeDelta::hours(2)));
        // a clock behind the creation time is age zero, not a panic
        assert!(!too_old(&c, created, created - TimeDelta::hours(1)));
    }

    #[test]
    fn a_full_ready_queue_waits_up_to_a_minute() {
        assert_eq!(ready_full_wait(0.0), Duration::ZERO);
        assert_eq!(ready_full_wait(0.5), Duration::from_secs(30));
        assert!(ready_full_wait(1.0) < Duration::from_secs(60));
        assert!(ready_full_wait(-3.0) == Duration::ZERO);
    }
}
