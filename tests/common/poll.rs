//! Waiting on a condition with a deadline: `check` is polled every 25 ms until it returns `Ok`.
//! `eventually` panics at the deadline with the last value it observed (what a test wants);
//! `poll` returns that last value as `Err` (for callers that report instead of panicking, such as
//! the fault-injection program). `poll_blocking` is for code outside a runtime (that program).

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// How often a condition is checked.
pub const INTERVAL: Duration = Duration::from_millis(25);

/// Polls `check` until it returns `Ok`; at the deadline, returns its last `Err`.
pub async fn poll<T, E>(
    deadline: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let end = Instant::now() + deadline;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= end => return Err(last),
            Err(_) => tokio::time::sleep(INTERVAL).await,
        }
    }
}

/// Blocking twin of `poll`.
pub fn poll_blocking<T, E>(
    deadline: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let end = Instant::now() + deadline;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= end => return Err(last),
            Err(_) => std::thread::sleep(INTERVAL),
        }
    }
}

/// Polls `check` until it returns `Ok`, or panics at the deadline with the last value it saw:
/// `eventually("rows on node 2", CONVERGE, async || ...)`.
pub async fn eventually<T, E: Debug>(
    what: &str,
    deadline: Duration,
    check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    match poll(deadline, check).await {
        Ok(v) => v,
        Err(last) => panic!("{what}: not reached within {deadline:?}; last observed: {last:?}"),
    }
}
