//! Gaps: the stream no longer holds the next sequence this node needs (history was trimmed, or
//! messages deleted, past its floor), so only a snapshot can bring it up to date.
//!
//! A gap is never guessed and never gone past: the floor stays where it is, the gap is reported
//! (`status::Recovery`, counted once), and the consumer goes on applying what the stream still
//! holds above it. The node closes it with a snapshot that covers it, or an operator accepts it
//! (`node::recovery`). The proof is the stream's first sequence, as any replica reports it: a
//! replica behind its leader (a server that was frozen, say) has trimmed less, never more, so a
//! stale answer can only hide a gap for a while, never invent one. While a hole sits above the
//! floor, the stream's leader is also asked for its first message at `floor + 1` or after: one
//! above it proves the messages between were removed from inside the stream (`nats stream rmm`,
//! an operator's purge by sequence), which is a gap as surely as a trimmed head. An answer of
//! "no message", or none, proves nothing either way (a stale ex-leader may not have them yet):
//! it neither opens nor closes a gap.
//!
//! A trimmed range made only of this node's own messages is no gap: the node holds those
//! changes already, and its floor moves past them.

use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::ShardConsumer;
use crate::apply::ApplyWork;
use crate::hlc::now_ms;
use crate::position::StreamPosition;
use crate::status::OpenGap;

impl ShardConsumer {
    /// The first sequence the stream holds at `floor + 1` or after, when it is proved: the
    /// stream's first sequence `first_seq` when it is above, else the leader's first message
    /// from `floor + 1` (the hole's probe). `None` when nothing is proved (the leader does not
    /// answer, or holds nothing there yet): an open gap stays open, none is opened.
    pub(super) async fn held_from(
        &self,
        tracked: &StreamPosition,
        first_seq: u64,
        probe: &mut Probe,
    ) -> Option<u64> {
        let next = tracked.position.next_needed();
        if first_seq > next {
            return Some(first_seq);
        }
        match self.first_message_from(next).await {
            Ok(Some(seq)) => Some(seq.max(first_seq)),
            Ok(None) => None,
            Err(error) => {
                probe.failed(&error);
                None
            }
        }
    }

    /// Compares the position with the stream's first sequence `first_seq`; reports a gap (and
    /// returns true) when the stream no longer holds `floor + 1`.
    pub(super) async fn check_gap(
        &self,
        tracked: &mut StreamPosition,
        first_seq: u64,
    ) -> anyhow::Result<bool> {
        let recovery = &self.status.recovery;
        let next = tracked.position.next_needed();
        if first_seq <= next {
            recovery.close_gap(&tracked.stream);
            return Ok(false);
        }
        if self.own_seqs.covers(&tracked.stream, next, first_seq) {
            debug!(
                from = next,
                to = first_seq,
                "trimmed messages were all this node's own"
            );
            tracked.position.raise_floor(first_seq - 1);
            self.writer
                .apply(ApplyWork::positions(vec![tracked.clone()]))
                .await?;
            recovery.close_gap(&tracked.stream);
            return Ok(false);
        }
        let gap = OpenGap {
            stream: tracked.stream.clone(),
            incarnation: tracked.incarnation.clone(),
            first_missing: next,
            last_missing: first_seq - 1,
            since_ms: now_ms(),
        };
        let known = recovery
            .facts()
            .gaps
            .iter()
            .any(|g| g.stream == gap.stream && g.first_missing == gap.first_missing);
        if !known {
            self.metrics.stream_gaps.inc();
            warn!(
                stream = %gap.stream,
                first_missing = gap.first_missing,
                last_missing = gap.last_missing,
                "gap: the stream no longer holds what this node needs; waiting for a snapshot that covers it"
            );
        }
        recovery.open_gap(gap);
        Ok(true)
    }
}

/// How often a probe that keeps failing is logged (a permission the account lacks would hide a
/// removed message for as long as it lasts).
const PROBE_WARN_EVERY: Duration = Duration::from_secs(60);

/// The hole's probes of one pull: their failures, logged at most every `PROBE_WARN_EVERY`.
#[derive(Debug, Default)]
pub(super) struct Probe {
    warned: Option<Instant>,
}

impl Probe {
    fn failed(&mut self, error: &anyhow::Error) {
        if self
            .warned
            .is_some_and(|at| at.elapsed() < PROBE_WARN_EVERY)
        {
            return;
        }
        self.warned = Some(Instant::now());
        warn!(
            error = %format!("{error:#}"),
            "cannot ask the stream's leader for the message below a hole; a message removed from \
             inside the stream is not noticed meanwhile"
        );
    }
}
