//! The one backoff of every retry loop: exponential, capped, jittered and cancellable.
//!
//! Jitter (up to a quarter of the delay on top) keeps peers that failed together — a NATS
//! server that restarted, a store that came back — from retrying in lockstep. Callers reset it
//! when an attempt succeeded (or worked long enough to count as success), so one interruption
//! after hours of work does not wait the maximum.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff from `first`, doubling up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    base: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            base: first,
        }
    }

    /// The delay to wait now (the current base plus up to 25 % jitter); the base doubles for
    /// the next one, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = (self.base * 2).min(self.max);
        base + base.mul_f64(fastrand::f64() / 4.0)
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.base = self.first;
    }

    /// Waits the next delay; false when `cancel` fired first.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        sleep(self.next_delay(), cancel).await
    }
}

/// Sleeps for `delay`; false when `cancel` fired first.
pub async fn sleep(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(FIRST, MAX);
        let bases = [100, 200, 400, 800, 1000, 1000];
        for base in bases {
            let base = Duration::from_millis(base);
            let d = b.next_delay();
            assert!(d >= base && d <= base + base / 4, "{d:?} for base {base:?}");
        }
        b.reset();
        assert!(b.next_delay() <= FIRST + FIRST / 4);
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let delays: std::collections::BTreeSet<Duration> = (0..20)
            .map(|_| Backoff::new(FIRST, MAX).next_delay())
            .collect();
        assert!(delays.len() > 1, "twenty equal delays: no jitter");
    }

    #[tokio::test(start_paused = true)]
    async fn waits_the_delay_in_virtual_time() {
        let cancel = CancellationToken::new();
        let mut b = Backoff::new(FIRST, MAX);
        let start = tokio::time::Instant::now();
        assert!(b.wait(&cancel).await);
        let waited = start.elapsed();
        assert!(waited >= FIRST && waited <= FIRST + FIRST / 4, "{waited:?}");
        let start = tokio::time::Instant::now();
        assert!(b.wait(&cancel).await);
        assert!(start.elapsed() >= 2 * FIRST, "the second wait doubles");
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_the_wait() {
        let cancel = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let waiter = {
            let cancel = cancel.clone();
            tokio::spawn(async move { b.wait(&cancel).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
        let start = tokio::time::Instant::now();
        assert!(!waiter.await.unwrap(), "a cancelled wait reports it");
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(!sleep(Duration::from_secs(5), &cancel).await);
    }
}
