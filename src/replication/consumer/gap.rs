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
//! "no message" proves nothing (a stale ex-leader may not have them yet) and is not taken.
//!
//! A trimmed range made only of this node's own messages is no gap: the node holds those
//! changes already, and its floor moves past them.

use tracing::{debug, warn};

use super::ShardConsumer;
use crate::apply::ApplyWork;
use crate::hlc::now_ms;
use crate::position::StreamPosition;
use crate::status::OpenGap;

impl ShardConsumer {
    /// The first sequence the stream holds at `floor + 1` or after, as far as is proved: the
    /// stream's first sequence `first_seq` when it is above, else the leader's first message
    /// from `floor + 1` (a hole's probe). Falls back to `first_seq` when the leader does not
    /// answer or holds nothing there.
    pub(super) async fn held_from(&self, tracked: &StreamPosition, first_seq: u64) -> u64 {
        let next = tracked.position.next_needed();
        if first_seq > next {
            return first_seq;
        }
        match self.first_message_from(next).await {
            Ok(Some(seq)) => seq.max(first_seq),
            Ok(None) => first_seq,
            Err(error) => {
                debug!(error = %format!("{error:#}"), "cannot ask the stream's leader for the hole's message");
                first_seq
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
