//! Ready-queue suspensions (shaping automation's `Suspend`): nothing is
//! attempted on a path (`source->site`) until its suspension lapses; what
//! falls due for it is sent back to its scheduled queue until then.

use super::{Egress, Ready};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// Why and until when a path is suspended.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspension {
    /// When it lapses.
    pub until: DateTime<Utc>,
    /// What suspended it (the rule), for the Delayed records.
    pub reason: String,
}

/// The suspended paths, by `source->site`.
#[derive(Default)]
pub struct Suspensions(parking_lot::Mutex<HashMap<String, Suspension>>);

impl Suspensions {
    /// The suspension of `path` in force now.
    pub fn get(&self, path: &str) -> Option<Suspension> {
        let mut map = self.0.lock();
        match map.get(path) {
            Some(s) if s.until > Utc::now() => Some(s.clone()),
            Some(_) => {
                map.remove(path);
                None
            }
            None => None,
        }
    }
}

impl Egress {
    /// Suspend the path `source->site` until `until`; what its ready queues
    /// hold now is returned, for the scheduled queues to hold.
    pub fn suspend_path(
        &self,
        source: &str,
        site: &str,
        until: DateTime<Utc>,
        reason: &str,
    ) -> Vec<Ready> {
        let path = format!("{source}->{site}");
        self.suspended.0.lock().insert(
            path.clone(),
            Suspension {
                until,
                reason: reason.to_string(),
            },
        );
        let prefix = format!("{path}@");
        self.ready_queues()
            .into_iter()
            .filter(|rq| rq.name.starts_with(&prefix))
            .flat_map(|rq| rq.take_matching(|_| true))
            .collect()
    }

    /// End the suspension of `source->site`.
    pub fn resume_path(&self, source: &str, site: &str) {
        self.suspended.0.lock().remove(&format!("{source}->{site}"));
    }
}
