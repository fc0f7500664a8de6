//! Path settings replaced for a while (shaping automation's `SetConfig`):
//! by path (`source->site`), each under the key of the action that set it.
//! A ready queue's config in force is the one its path config hook gave,
//! with these applied in key order; a queue made or refreshed while they
//! last gets them too.

use super::{Egress, ReadyQueue};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The settings replaced on one path, by the key of the action that set
/// each: (setting, value).
type PathSettings = BTreeMap<String, (String, Value)>;

/// The replaced settings of the paths, by `source->site`.
#[derive(Default)]
pub struct Overrides(parking_lot::Mutex<HashMap<String, PathSettings>>);

impl Overrides {
    /// Set `rq`'s config in force: its hook's config with the settings in
    /// force for its path applied, under the lock, so a setting that
    /// changes meanwhile is never overwritten by an older result. A setting
    /// that does not apply is logged and skipped (the rules checked it at
    /// load).
    fn refresh(&self, rq: &ReadyQueue) {
        let map = self.0.lock();
        let base = rq.base_config();
        let Some(settings) = map.get(rq.path()).filter(|s| !s.is_empty()) else {
            rq.set_in_force(base);
            return;
        };
        let mut config = (*base).clone();
        for (key, (name, value)) in settings {
            match config.with_setting(name, value) {
                Ok(c) => config = c,
                Err(e) => tracing::error!(
                    ready_queue = rq.name,
                    action = key,
                    "shaping SetConfig skipped: {e}"
                ),
            }
        }
        rq.set_in_force(Arc::new(config));
    }
}

impl Egress {
    /// Set `name` to `value` on the path `source->site` under `key`, until
    /// [`Egress::clear_setting`]; the path's ready queues take it now.
    pub fn set_setting(&self, source: &str, site: &str, key: &str, name: &str, value: &Value) {
        let path = format!("{source}->{site}");
        self.overrides
            .0
            .lock()
            .entry(path.clone())
            .or_default()
            .insert(key.to_string(), (name.to_string(), value.clone()));
        self.reapply(&path);
    }

    /// End the setting `key` on `source->site`.
    pub fn clear_setting(&self, source: &str, site: &str, key: &str) {
        let path = format!("{source}->{site}");
        if let Some(settings) = self.overrides.0.lock().get_mut(&path) {
            settings.remove(key);
        }
        self.reapply(&path);
    }

    /// Recompute the config in force of `path`'s ready queues.
    fn reapply(&self, path: &str) {
        for rq in self.ready_queues().iter().filter(|rq| rq.path() == path) {
            self.overrides.refresh(rq);
        }
    }

    /// Recompute `rq`'s config in force after its hook's config changed.
    pub(super) fn refresh_in_force(&self, rq: &ReadyQueue) {
        self.overrides.refresh(rq);
    }
}
