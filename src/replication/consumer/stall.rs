//! A consumer that stopped delivering while its stream holds more: noticed and set up again.
//!
//! A pull that receives idle heartbeats and no messages looks healthy to the client, yet the
//! stream may hold messages past everything delivered: a consumer whose leader sits on a replica
//! that fell behind after a restart, or a consumer paused through the JetStream API. Seen once
//! in the fault program (seed 11): one shard received nothing for two minutes after a server
//! was killed and restarted, while the others applied. Every idle check compares the stream's
//! last sequence (from its leader) with the highest sequence delivered; after
//! [`STALLED_CHECKS`] such checks in a row the durable consumer is deleted and set up again at
//! the database's floor. Deliveries from `floor + 1` are always safe (last writer wins), so a
//! false alarm costs a redelivery, never a row.

use tracing::warn;

/// Idle checks in a row that find the stream holding more than was delivered before the
/// consumer is taken for stalled: with checks every `HOLE_CHECK` (3 s), about 6 s of silence.
pub(super) const STALLED_CHECKS: u32 = 2;

/// What one pull stream delivered, against what its stream holds.
#[derive(Debug)]
pub(super) struct Silence {
    /// The highest stream sequence delivered (or applied before this setup).
    delivered: u64,
    /// Idle checks in a row that found the stream holding more.
    checks: u32,
}

impl Silence {
    /// Watches a pull that starts after `applied` (the position's highest sequence).
    pub(super) fn after(applied: u64) -> Silence {
        Silence {
            delivered: applied,
            checks: 0,
        }
    }

    /// A message with sequence `seq` arrived: the consumer delivers.
    pub(super) fn delivered(&mut self, seq: u64) {
        self.delivered = self.delivered.max(seq);
        self.checks = 0;
    }

    /// An idle check found the stream's last sequence at `last_seq`; true when the consumer is
    /// taken for stalled.
    pub(super) fn idle(&mut self, last_seq: u64) -> bool {
        if last_seq > self.delivered {
            self.checks += 1;
        } else {
            self.checks = 0;
        }
        let stalled = self.checks >= STALLED_CHECKS;
        if stalled {
            warn!(
                delivered = self.delivered,
                stream_last = last_seq,
                "the consumer delivers nothing while the stream holds more: setting it up again"
            );
        }
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_with_more_in_the_stream_is_a_stall_after_two_checks() {
        let mut silence = Silence::after(10);
        assert!(!silence.idle(12));
        assert!(silence.idle(12));
    }

    #[test]
    fn a_delivery_or_a_caught_up_stream_starts_the_count_again() {
        let mut silence = Silence::after(10);
        assert!(!silence.idle(12));
        silence.delivered(11);
        assert!(!silence.idle(12));
        assert!(!silence.idle(11), "caught up: no stall");
        assert!(!silence.idle(12));
        assert!(silence.idle(12));
        // A quiet stream with everything delivered is never a stall.
        let mut quiet = Silence::after(12);
        for _ in 0..5 {
            assert!(!quiet.idle(12));
        }
    }
}
