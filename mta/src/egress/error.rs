//! Why egress could not place a message: each a transient failure of it.

use crate::policy::EventError;

/// Egress failures, each a transient failure of the message.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// A policy hook (`get_egress_pool`, `get_egress_source`) failed.
    #[error("{0}")]
    Policy(#[from] EventError),
    /// Every source of the queue's pool has weight zero, or the pool is
    /// empty.
    #[error("no sources for {queue} pool=`{pool}` are eligible for selection at this time")]
    NoSource {
        /// The scheduled queue whose message needed a source.
        queue: String,
        /// The queue's `egress_pool` (`unspecified` when it names none).
        pool: String,
    },
    /// `get_egress_path_config` failed for a new ready queue.
    #[error("get_egress_path_config for {name}: {source}")]
    PathConfig {
        /// The ready queue's name, `source->site@protocol`.
        name: String,
        /// The hook's failure.
        source: EventError,
    },
}
