//! A consumer that stopped delivering while its stream holds more: noticed and set up again.
//!
//! A pull that receives idle heartbeats and no messages looks healthy to the client, yet the
//! stream may hold messages past everything delivered: a consumer whose leader sits on a replica
//! that fell behind after a restart, or a consumer paused through the JetStream API. Seen once
//! in the fault program (seed 11): one shard received nothing for two minutes after a server
//! was killed and restarted, while the others applied. Every idle check compares the stream's
//! last sequence (from its leader) with the highest sequence delivered; when it is above, the
//! leader is asked for the first message after the delivered one, since messages can be gone
//! from the tail (a purge, a removed message, an age limit) while the last sequence stays. After
//! [`STALLED_CHECKS`] checks in a row that find one, the durable consumer is deleted and set up
//! again at the database's floor. Deliveries from `floor + 1` are always safe (last writer
//! wins), so a false alarm costs a redelivery, never a row.
//!
//! Checks come every `HOLE_CHECK` of silence, but every [`SUSPECT_CHECK`] once one found a
//! message not delivered, and from the start of a pull whose stream already held more than was
//! applied: a healthy consumer delivers such a message within milliseconds. Seen in the fault
//! program (seed 25 on 1ae0059): after a partition healed, the cut-off node's shard-0 consumer
//! was set up while its server's replica caught up, delivered nothing, and the stall was only
//! noticed after two 3 s checks.

use std::time::Duration;

use tracing::warn;

/// Idle checks in a row that find the stream holding more than was delivered before the
/// consumer is taken for stalled.
pub(super) const STALLED_CHECKS: u32 = 2;
/// Silence after which a suspected consumer is checked (again). A consumer that delivers
/// nothing although its stream held more at setup is set up again after about 2 s of silence
/// when both checks find the message (plus the reconnect's wait and the setup).
pub(super) const SUSPECT_CHECK: Duration = Duration::from_secs(1);
/// Longest an idle check waits for the stream's leader (the pull's own requests wait longer):
/// right after a setup a leader may be being elected, and a check that waited the request's
/// whole timeout would hold back messages already buffered for this pull.
pub(super) const IDLE_LOOK: Duration = Duration::from_secs(1);

/// A consumer taken for stalled (deleted, to be set up again): the attempt worked until then,
/// so the reconnect's backoff starts over.
#[derive(Debug, thiserror::Error)]
#[error("the consumer stalled: set up again")]
pub(super) struct Stalled;

/// What one pull stream delivered, against what its stream holds.
#[derive(Debug)]
pub(super) struct Silence {
    /// The highest stream sequence delivered (or applied before this setup).
    delivered: u64,
    /// Idle checks in a row that found the stream holding more.
    checks: u32,
    /// The stream held more than was applied when the pull started, and nothing has arrived
    /// since: the first delivery is due at once.
    expecting: bool,
}

impl Silence {
    /// Watches a pull that starts after `applied` (the position's highest sequence), on a
    /// stream whose last sequence was `stream_last` at setup.
    pub(super) fn after(applied: u64, stream_last: u64) -> Silence {
        Silence {
            delivered: applied,
            checks: 0,
            expecting: stream_last > applied,
        }
    }

    /// A message with sequence `seq` arrived: the consumer delivers.
    pub(super) fn delivered(&mut self, seq: u64) {
        self.delivered = self.delivered.max(seq);
        self.checks = 0;
        self.expecting = false;
    }

    /// How long a silence lasts before the next check: `usual`, or [`SUSPECT_CHECK`] while a
    /// message is known to wait (a check found one, or the stream held more at setup).
    pub(super) fn check_after(&self, usual: Duration) -> Duration {
        if self.checks > 0 || self.expecting {
            SUSPECT_CHECK.min(usual)
        } else {
            usual
        }
    }

    /// Where to look for a message not delivered, when the stream's last sequence `last_seq`
    /// is above what was delivered.
    pub(super) fn look_from(&self, last_seq: u64) -> Option<u64> {
        (last_seq > self.delivered).then_some(self.delivered + 1)
    }

    /// An idle check found (`Some`, its sequence) or did not find (`None`) a message after the
    /// delivered one; true when the consumer is taken for stalled. From the first check on,
    /// what the checks find sets the pace: a tail that was removed (a purge, an age limit)
    /// never leaves an idle stream checked every second.
    pub(super) fn idle(&mut self, undelivered: Option<u64>) -> bool {
        self.expecting = false;
        match undelivered {
            Some(seq) if seq > self.delivered => self.checks += 1,
            _ => self.checks = 0,
        }
        let stalled = self.checks >= STALLED_CHECKS;
        if stalled {
            warn!(
                delivered = self.delivered,
                undelivered = ?undelivered,
                "the consumer delivers nothing while the stream holds more: setting it up again"
            );
        }
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USUAL: Duration = Duration::from_secs(3);

    #[test]
    fn silence_with_more_in_the_stream_is_a_stall_after_two_checks() {
        let mut silence = Silence::after(10, 10);
        assert_eq!(
            silence.check_after(USUAL),
            USUAL,
            "nothing was waiting at setup"
        );
        assert_eq!(silence.look_from(12), Some(11));
        assert!(!silence.idle(Some(12)));
        assert_eq!(silence.check_after(USUAL), SUSPECT_CHECK, "confirmed soon");
        assert!(silence.idle(Some(12)));
    }

    #[test]
    fn a_stream_holding_more_at_setup_is_checked_soon_until_a_delivery() {
        let mut silence = Silence::after(10, 15);
        assert_eq!(silence.check_after(USUAL), SUSPECT_CHECK);
        assert!(!silence.idle(Some(11)));
        assert_eq!(silence.check_after(USUAL), SUSPECT_CHECK, "confirmed soon");
        silence.delivered(11);
        assert_eq!(silence.check_after(USUAL), USUAL, "it delivers");
    }

    #[test]
    fn a_first_check_that_finds_nothing_waiting_goes_back_to_the_usual_pace() {
        // The stream's tail was removed (or the leader did not answer): no message is known to
        // wait, so an idle stream is not asked every second.
        let mut silence = Silence::after(10, 15);
        assert!(!silence.idle(None));
        assert_eq!(silence.check_after(USUAL), USUAL);
    }

    #[test]
    fn a_delivery_or_nothing_after_it_starts_the_count_again() {
        let mut silence = Silence::after(10, 10);
        assert!(!silence.idle(Some(12)));
        silence.delivered(11);
        assert!(!silence.idle(Some(12)));
        assert!(!silence.idle(None), "the tail was removed: no stall");
        assert!(!silence.idle(Some(12)));
        assert!(silence.idle(Some(12)));
        // A quiet stream with everything delivered is never a stall.
        let quiet = Silence::after(12, 12);
        assert_eq!(quiet.look_from(12), None);
    }
}
