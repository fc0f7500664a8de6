//! Node-local throttle state: one GCRA theoretical arrival time per key.

use parking_lot::Mutex;
use sluice_common::ThrottleSpec;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct Throttles {
    epoch: Instant,
    state: Mutex<HashMap<String, Option<u128>>>,
}

impl Default for Throttles {
    fn default() -> Self {
        Throttles {
            epoch: Instant::now(),
            state: Mutex::new(HashMap::new()),
        }
    }
}

impl Throttles {
    /// Check (and on success consume) one unit of `spec` under `name`;
    /// `Some(wait)` when throttled.
    pub fn check(&self, name: &str, spec: &ThrottleSpec) -> Option<Duration> {
        let now = self.epoch.elapsed().as_nanos();
        let key = spec.key(name);
        let mut state = self.state.lock();
        let tat = state.entry(key).or_default();
        spec.check(tat, now)
    }
}
