//! Waiting for conditions instead of sleeping.

use std::fmt::Debug;
use std::time::{Duration, Instant};

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What one poll saw: either the awaited value, or an observation worth reporting on timeout.
pub trait Observation {
    type Value;
    fn into_result(self) -> Result<Self::Value, String>;
}

impl<T> Observation for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(|| "condition not met".to_string())
    }
}

impl<T, E: Debug> Observation for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.map_err(|observed| format!("{observed:?}"))
    }
}

/// Polls `poll` every 50 ms until it yields a value; panics after `timeout`, naming `what` and the
/// last observation (return `Err(observation)` from `poll` to make that message useful).
pub fn wait_until<O: Observation>(
    what: &str,
    timeout: Duration,
    mut poll: impl FnMut() -> O,
) -> O::Value {
    let deadline = Instant::now() + timeout;
    loop {
        match poll().into_result() {
            Ok(value) => return value,
            Err(observed) if Instant::now() >= deadline => {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last observation: {observed}"
                )
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}
