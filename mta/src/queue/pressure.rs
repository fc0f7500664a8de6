//! The queue engine under memory pressure (see [`crate::memory`]): bodies
//! of spooled messages are released, and promotion waits while the ready
//! queues already hold what their connections can take.

use super::QueueManager;
use crate::memory::Level;
use std::time::Duration;

/// How often a held promotion looks again.
const HOLD_POLL: Duration = Duration::from_millis(50);

impl QueueManager {
    /// While memory is short, wait until the ready queues hold fewer
    /// messages than the connections serving them (at least one), so the
    /// backlog stays in the scheduled queues, where it costs no body.
    /// Delivery goes on throughout; a drain ends the wait.
    pub(super) async fn hold_while_short(&self) {
        while self.memory.level() == Level::Short && !self.lifecycle.is_draining() {
            let (waiting, connections) = self.egress.backlog();
            if waiting < connections.max(1) {
                return;
            }
            tokio::time::sleep(HOLD_POLL).await;
        }
    }

    /// Release the bodies of spooled messages that wait in memory: those
    /// due and not yet promoted, and those in ready queues. Each is read
    /// back from the spool when a connection takes it. Returns how many.
    pub fn release_bodies(&self) -> usize {
        let due = self.due.lock().iter().filter(|m| m.release_body()).count();
        due + self.egress.release_bodies()
    }

    /// Whether bodies should leave memory as soon as they are spooled
    /// (above the low threshold).
    pub(super) fn keep_bodies(&self) -> bool {
        self.memory.level() == Level::Normal
    }
}
