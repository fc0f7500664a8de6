//! Ready-queue suspensions (shaping automation's `Suspend`, and the admin
//! API's `suspend-ready-q`): nothing is attempted on a path
//! (`source->site`) until its suspension lapses; what falls due for it is
//! sent back to its scheduled queue until then. One suspension per path:
//! a newer one replaces it.

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
    /// The admin API's id and the ready queue name it was given, for a
    /// suspension made there (listed and cancelled by id).
    pub admin: Option<(String, String)>,
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
    /// Suspend `source->site` as `suspension` says; what its ready queues
    /// hold now is returned, for the scheduled queues to hold.
    pub fn suspend(&self, source: &str, site: &str, suspension: Suspension) -> Vec<Ready> {
        let path = format!("{source}->{site}");
        self.suspended.0.lock().insert(path.clone(), suspension);
        self.ready_queues()
            .into_iter()
            .filter(|rq| rq.path() == path)
            .flat_map(|rq| rq.take_matching(|_| true))
            .collect()
    }

    /// End the suspension of `source->site`.
    pub fn resume_path(&self, source: &str, site: &str) {
        self.suspended.0.lock().remove(&format!("{source}->{site}"));
    }

    /// The admin API's suspensions in force, soonest to lapse first.
    pub fn admin_suspensions(&self) -> Vec<Suspension> {
        let now = Utc::now();
        let mut v: Vec<Suspension> = self
            .suspended
            .0
            .lock()
            .values()
            .filter(|s| s.admin.is_some() && s.until > now)
            .cloned()
            .collect();
        v.sort_by_key(|s| s.until);
        v
    }

    /// End the admin API's suspension `id`; `None` when none is in force.
    pub fn cancel_suspension(&self, id: &str) -> Option<Suspension> {
        let mut map = self.suspended.0.lock();
        let path = map
            .iter()
            .find(|(_, s)| s.admin.as_ref().is_some_and(|(i, _)| i == id) && s.until > Utc::now())
            .map(|(p, _)| p.clone())?;
        map.remove(&path)
    }
}
