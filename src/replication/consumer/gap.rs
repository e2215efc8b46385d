//! Gaps: the stream no longer holds the next sequence this node needs (history was trimmed past
//! its position), so only a snapshot can bring it up to date.
//!
//! A trimmed range made only of this node's own messages is no gap: the node holds those
//! changes already, and its position moves past them. Anything else is reported to the caller
//! as `GapDetected` (the node restores a snapshot), unless gaps are accepted, which is logged,
//! counted and recorded in the database (`gap_accepted`).

use tracing::{debug, warn};

use super::ShardConsumer;
use crate::apply::IncomingBatch;
use crate::change::ChangeBatch;
use crate::ids::StreamSeq;
use crate::sql::internal::STATE_GAP_ACCEPTED;

/// The stream was trimmed past this node's position: the messages it still needs are gone, so
/// only a snapshot can bring it up to date. Ends the consumer task; the node restores.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "stream {stream} no longer holds sequence {needed} (first kept: {first}): history was trimmed past this node's position"
)]
pub struct GapDetected {
    pub stream: String,
    pub needed: u64,
    pub first: u64,
}

impl ShardConsumer {
    /// Whether the stream still holds `expect`: `Ok(Ok(seq))` is where delivery really
    /// continues, `Ok(Err(gap))` a gap the node must close, `Err` a failed lookup (retried).
    pub(super) async fn check_gap(
        &self,
        stream_name: &str,
        expect: u64,
    ) -> anyhow::Result<Result<u64, GapDetected>> {
        let mut stream = self.js.get_stream(stream_name).await?;
        let first = stream.info().await?.state.first_sequence;
        if first <= expect {
            return Ok(Ok(expect));
        }
        if self.own_seqs.covers(stream_name, expect, first) {
            // Every message we missed was our own: this node already holds those changes.
            // Record the new position, so the node does not look behind.
            debug!(
                from = expect,
                to = first,
                "trimmed messages were all this node's own"
            );
            let advance = IncomingBatch {
                stream: stream_name.to_owned(),
                seq: StreamSeq(first - 1),
                batch: ChangeBatch {
                    origin: self.status.node_id,
                    schema_hash: String::new(),
                    tables: Vec::new(),
                },
            };
            self.writer.apply(vec![advance]).await?;
            return Ok(Ok(first));
        }
        let gap = GapDetected {
            stream: stream_name.to_owned(),
            needed: expect,
            first,
        };
        if !self.accept_gaps {
            warn!(%gap, "gap in the stream, a snapshot restore is needed");
            return Ok(Err(gap));
        }
        self.metrics.stream_gaps.inc();
        self.writer
            .set_state(STATE_GAP_ACCEPTED, Some(gap.to_string()))
            .await?;
        tracing::error!(%gap, "gap in the stream accepted (no snapshot closes it): changes in the trimmed part are missing here");
        Ok(Ok(first))
    }
}
