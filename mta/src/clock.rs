//! Wall-clock time for the queue engine, read in one place so that tests can
//! stop it: due times, ages and admin rule expiry all come from a [`Clock`],
//! while waiting uses tokio's timers. In production the two agree; in a test
//! with tokio's paused time, [`TokioClock`] moves only when tokio's clock
//! does, so hours of backoff run in microseconds.

use chrono::{DateTime, TimeDelta, Utc};
use std::sync::Arc;

/// A source of wall-clock time: [`SystemClock`] in the daemon, [`TokioClock`]
/// in tests that pause tokio's time.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Wall time that advances with tokio's clock from a starting instant.
pub struct TokioClock {
    wall: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Starting at `wall` now.
    pub fn starting_at(wall: DateTime<Utc>) -> Arc<TokioClock> {
        Arc::new(TokioClock {
            wall,
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now() - self.start;
        self.wall + TimeDelta::from_std(elapsed).unwrap_or(TimeDelta::MAX)
    }
}

/// The clock the daemon runs on.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_moves_only_with_tokio_time() {
        let start = DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = TokioClock::starting_at(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.now(), start + TimeDelta::hours(1));
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + TimeDelta::seconds(3690));
    }
}
