//! Whether new mail may be taken now. Two layers may say no, each for as
//! long as its condition lasts: storage (a spool or log volume below its
//! free-space floor, or a failed spool write) and memory (the working set
//! over the soft limit). The listener, the inject API and the readiness
//! probe all ask here, so they always agree.

use crate::memory::{Memory, MemoryShort};
use crate::storage::{Shortage, Storage};
use std::fmt;
use std::sync::Arc;

/// The layers that may refuse new mail.
pub struct Admission {
    /// Free space on the spool and log volumes.
    pub storage: Arc<Storage>,
    /// The working set against its limits.
    pub memory: Arc<Memory>,
}

/// Why new mail is refused now.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// A volume is short of space or inodes, or a spool write failed.
    Storage(Shortage),
    /// The working set is over the soft limit.
    Memory(MemoryShort),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Storage(s) => s.fmt(f),
            Refusal::Memory(m) => m.fmt(f),
        }
    }
}

impl Refusal {
    /// The reply to MAIL FROM (RFC 3463 4.3.1: the system is out of a
    /// resource; RFC 5321 452 for storage, 451 otherwise).
    pub fn mail_reply(&self) -> (u16, &'static str) {
        match self {
            Refusal::Storage(_) => (452, "4.3.1 insufficient system storage, try again later"),
            Refusal::Memory(_) => (
                451,
                "4.3.1 insufficient system resources (memory), try again later",
            ),
        }
    }
}

impl Admission {
    /// Why new mail is refused now, if it is (storage first).
    pub fn refusal(&self) -> Option<Refusal> {
        if let Some(s) = self.storage.shortage() {
            return Some(Refusal::Storage(s));
        }
        self.memory.shortage().map(Refusal::Memory)
    }
}
