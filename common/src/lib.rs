//! Types and parsers that both the Sluice MTA and the operator need, kept in
//! one place so that the operator rejects exactly what the MTA would reject.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod duration;
pub mod egress;
pub mod key_source;
pub mod queue_config;
pub mod throttle;

pub use duration::{DurationError, parse_duration};
pub use throttle::{ThrottleError, ThrottleSpec};
