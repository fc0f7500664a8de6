//! Throttle state in this process (GCRA, spec §2.3): one theoretical
//! arrival time per key. Time comes from tokio's clock, so a test with
//! paused time sees exactly the rates it configures.

use parking_lot::Mutex;
use sluice_common::ThrottleSpec;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// Node-local GCRA state.
pub struct LocalThrottles {
    epoch: Instant,
    state: Mutex<HashMap<String, Option<u128>>>,
}

impl Default for LocalThrottles {
    fn default() -> Self {
        LocalThrottles {
            epoch: Instant::now(),
            state: Mutex::new(HashMap::new()),
        }
    }
}

impl LocalThrottles {
    /// Check (and on success consume) one unit: `None` when allowed now,
    /// `Some(wait)` when throttled for `wait`.
    pub fn check(&self, name: &str, spec: &ThrottleSpec) -> Option<Duration> {
        let now = self.epoch.elapsed().as_nanos();
        let key = spec.key(name);
        let mut state = self.state.lock();
        let tat = state.entry(key).or_default();
        spec.check(tat, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> ThrottleSpec {
        s.parse().unwrap()
    }

    /// The waits a throttle gives `n` requests made every `every`.
    async fn waits(
        t: &LocalThrottles,
        s: &str,
        n: usize,
        every: Duration,
    ) -> Vec<Option<Duration>> {
        let spec = spec(s);
        let mut out = vec![];
        for _ in 0..n {
            out.push(t.check("k", &spec));
            tokio::time::advance(every).await;
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_allows_its_burst_then_waits_in_whole_seconds() {
        let t = LocalThrottles::default();
        let w = waits(&t, "3/s", 5, Duration::ZERO).await;
        let one = Some(Duration::from_secs(1));
        // the burst of 3, then a wait rounded up to whole seconds, as KumoMTA's
        assert_eq!(w, [None, None, None, one, one]);
        // asked again after the wait it gave: allowed, a second's worth
        tokio::time::advance(Duration::from_secs(1)).await;
        let w = waits(&t, "3/s", 4, Duration::ZERO).await;
        assert_eq!(w, [None, None, None, one]);
        // a slow rate waits its whole interval
        let w = waits(&t, "2/min", 3, Duration::ZERO).await;
        assert_eq!(w, [None, None, Some(Duration::from_secs(30))]);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_at_the_rate_are_never_throttled() {
        let t = LocalThrottles::default();
        let w = waits(&t, "10/s", 50, Duration::from_millis(100)).await;
        assert!(w.iter().all(Option::is_none), "{w:?}");
        let w = waits(&t, "60/min", 10, Duration::from_secs(1)).await;
        assert!(w.iter().all(Option::is_none), "{w:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn keys_and_specs_are_throttled_apart() {
        let t = LocalThrottles::default();
        let one = spec("1/h");
        assert_eq!(t.check("a", &one), None);
        assert!(t.check("a", &one).is_some());
        assert_eq!(t.check("b", &one), None, "another key has its own budget");
        // the same name with another spec is another throttle
        assert_eq!(t.check("a", &spec("2/h")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_request_consumes_nothing() {
        let t = LocalThrottles::default();
        let s = spec("1/s");
        assert_eq!(t.check("k", &s), None);
        for _ in 0..5 {
            assert!(t.check("k", &s).is_some());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            t.check("k", &s),
            None,
            "refusals did not push the next slot back"
        );
    }
}
