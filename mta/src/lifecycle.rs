//! Process lifecycle: the drain that SIGTERM starts. While draining, new
//! sessions get 421, idle sessions are closed with 421, sessions in a
//! transaction finish it first, no new delivery starts, and in-flight ones
//! finish. Everything not delivered is already in the spool.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;

/// The drain flag, and counts of open sessions and deliveries in flight, shared
/// by the listeners, the queue engine and the admin API.
pub struct Lifecycle {
    draining: watch::Sender<bool>,
    sessions: AtomicUsize,
    deliveries: AtomicUsize,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            draining: watch::channel(false).0,
            sessions: AtomicUsize::new(0),
            deliveries: AtomicUsize::new(0),
        }
    }
}

/// Counts one unit of work for as long as it lives.
pub struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A session counted for as long as a task that owns it lives (a streamed
/// HTTP answer, which cannot borrow the lifecycle).
pub struct OwnedSession(std::sync::Arc<Lifecycle>);

impl OwnedSession {
    /// The lifecycle it counts in.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.0
    }
}

impl Drop for OwnedSession {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lifecycle {
    /// [`Lifecycle::session`] for a task that owns its guard.
    pub fn owned_session(self: &std::sync::Arc<Self>) -> OwnedSession {
        self.sessions.fetch_add(1, Ordering::AcqRel);
        OwnedSession(self.clone())
    }

    /// Start the drain (again is harmless): nothing new is accepted or started
    /// from now on.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves once a drain has started.
    pub async fn draining(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Count an open session (SMTP, or an HTTP injection) until the guard
    /// drops.
    pub fn session(&self) -> Busy<'_> {
        self.sessions.fetch_add(1, Ordering::AcqRel);
        Busy(&self.sessions)
    }

    /// Count a delivery in flight until the guard drops.
    pub fn delivery(&self) -> Busy<'_> {
        self.deliveries.fetch_add(1, Ordering::AcqRel);
        Busy(&self.deliveries)
    }

    /// Open sessions and deliveries in flight.
    pub fn busy(&self) -> (usize, usize) {
        (
            self.sessions.load(Ordering::Acquire),
            self.deliveries.load(Ordering::Acquire),
        )
    }
}
