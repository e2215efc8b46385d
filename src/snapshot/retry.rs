//! When the snapshot task tries again after a failed snapshot: a doubling backoff (2 s up to
//! 5 min), cut short when a node waits for a snapshot and a store that stopped taking writes
//! takes them again. A long store outage grows the backoff to minutes, and the waiting node is
//! not ready all that while. A failure while the store takes a small write all along (a big
//! upload refused, the database, the disk) waits the backoff out: trying sooner would only
//! fail again, each time after taking a whole snapshot.
//!
//! Pure state: the service asks the store (`snapshot::history::writable`) when `probe_due` says
//! so and reports the answer to `probed`.

use std::time::{Duration, Instant};

use crate::retry::Backoff;

/// Waits before retrying a failed snapshot (first and longest).
const BACKOFF: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(300));
/// Least time between two questions to the store while a node waits.
pub const STORE_PROBE: Duration = Duration::from_secs(3);

/// The retry state of the snapshot task.
#[derive(Debug, Clone)]
pub struct Retry {
    /// When a failed snapshot may be tried again; `None` after a success.
    at: Option<Instant>,
    backoff: Backoff,
    /// The store did not take a write since the last failure.
    store_down: bool,
    last_probe: Option<Instant>,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry::new()
    }
}

impl Retry {
    pub const fn new() -> Retry {
        Retry {
            at: None,
            backoff: BACKOFF,
            store_down: false,
            last_probe: None,
        }
    }

    /// A snapshot failed; `store_down`: the store did not take a write right after. Returns the
    /// wait before the next try.
    pub fn failed(&mut self, store_down: bool) -> Duration {
        let wait = self.backoff.next_delay();
        self.at = Some(Instant::now() + wait);
        self.store_down = store_down;
        wait
    }

    /// A snapshot succeeded: the next failure waits the first delay again.
    pub fn succeeded(&mut self) {
        self.at = None;
        self.backoff.reset();
        self.store_down = false;
    }

    /// Whether a failure is being retried (the wait may be over).
    pub fn after_failure(&self) -> bool {
        self.at.is_some()
    }

    /// Whether the wait after a failure still runs.
    pub fn waiting(&self) -> bool {
        self.at.is_some_and(|at| Instant::now() < at)
    }

    /// What is left of the wait.
    pub fn remaining(&self) -> Duration {
        self.at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
        })
    }

    /// Whether the store may be asked now: the wait runs and the last question is
    /// `STORE_PROBE` old (the caller then looks whether a node waits for a snapshot).
    pub fn may_probe(&self) -> bool {
        self.waiting() && self.last_probe.is_none_or(|t| t.elapsed() >= STORE_PROBE)
    }

    /// Whether to ask the store now: `may_probe`, and a node waits for a snapshot
    /// (`requested`). Counts as asked.
    pub fn probe_due(&mut self, requested: bool) -> bool {
        if !requested || !self.may_probe() {
            return false;
        }
        self.last_probe = Some(Instant::now());
        true
    }

    /// The store's answer to a probe; true when the wait no longer holds: it takes writes
    /// again after it did not.
    pub fn probed(&mut self, answers: bool) -> bool {
        if !answers {
            self.store_down = true;
            return false;
        }
        if !self.store_down {
            return false;
        }
        self.at = None;
        self.store_down = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_now(retry: &mut Retry) -> bool {
        retry.last_probe = None;
        retry.probe_due(true)
    }

    #[test]
    fn a_store_outage_ends_the_wait_once_the_store_answers_again() {
        let mut retry = Retry::new();
        for _ in 0..6 {
            retry.failed(true);
        }
        assert!(
            retry.remaining() >= Duration::from_secs(64),
            "the backoff grew"
        );
        assert!(!retry.probe_due(false), "no node waits: no question");
        assert!(probe_now(&mut retry));
        assert!(!retry.probed(false), "still down");
        assert!(!retry.probe_due(true), "asked again only after STORE_PROBE");
        assert!(probe_now(&mut retry));
        assert!(retry.probed(true), "back: try now");
        assert!(!retry.waiting() && !retry.after_failure());
    }

    #[test]
    fn a_failure_while_the_store_takes_writes_waits_the_backoff_out() {
        let mut retry = Retry::new();
        // A big upload refused by a store that takes small writes: every question finds it up.
        let wait = retry.failed(false);
        assert!(wait >= Duration::from_secs(2));
        assert!(probe_now(&mut retry));
        assert!(!retry.probed(true), "held: trying sooner would fail again");
        assert!(retry.waiting());
        // Released once after an outage, the next failure with the store answering holds again:
        // no snapshot every few seconds.
        retry.failed(true);
        assert!(probe_now(&mut retry) && retry.probed(true));
        retry.failed(false);
        assert!(probe_now(&mut retry) && !retry.probed(true));
        assert!(
            retry.remaining() > Duration::from_secs(4),
            "the backoff kept doubling"
        );
    }

    #[test]
    fn a_success_starts_over() {
        let mut retry = Retry::new();
        retry.failed(true);
        retry.failed(true);
        retry.succeeded();
        assert!(!retry.after_failure() && !retry.waiting());
        let wait = retry.failed(false);
        assert!(wait < Duration::from_secs(3), "{wait:?}");
    }
}
