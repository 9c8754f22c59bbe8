//! What every program's arguments share: the error of a flag whose value is unusable, and
//! reading seconds.

use std::time::Duration;

/// A flag's value is unusable; the message says which flag and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub(crate) String);

/// `s` seconds as a duration, or an error naming `--name`.
pub(crate) fn seconds(name: &str, s: f64) -> Result<Duration, ArgError> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        ArgError(format!(
            "--{name} must be a non-negative number of seconds, got {s}"
        ))
    })
}
