//! Schema pauses of one shard (`crate::schema::gate`): a message whose schema hash is neither
//! this node's current nor its previous one stops the shard. It, everything after it and any
//! partial chunk set are NAKed with a delay, fetching stops, and the shard waits until the gate
//! accepts that hash (local DDL landed). It then resumes from its floor (`position`): nothing is
//! skipped, stream order holds, and what it applied before the pause is acked without being
//! judged again.
//!
//! A message in the Go HarmonyLite format on one of our streams (a Go cluster next to this one
//! with the same names, and no `replication_log.go_compat`) pauses the shard the same way, never
//! dropped: the reason is on `/health/ready`, the dashboard and in the log, and the shard looks
//! again every `PAUSE_RECHECK` (the stream may have been replaced meanwhile).

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::ShardConsumer;
use crate::change::ChangeBatch;
use crate::error::Chain;
use crate::ids::{Lane, NodeId, ShardId};
use crate::schema::gate::{Decision, Pause};
use crate::status::ForeignPause;

/// Redelivery delay asked for messages held by a schema pause. Nobody fetches them while the
/// shard is paused; the delay only keeps JetStream from offering them again right away.
const PAUSE_NAK_DELAY: Duration = Duration::from_secs(5);
/// While paused, the gate is re-read this often even without a change notification.
pub(super) const PAUSE_RECHECK: Duration = Duration::from_secs(30);

/// How a fetched group of messages ended.
pub(super) enum Flow {
    Continue,
    /// A message did not pass the schema gate; it and every unfinished message were NAKed.
    Paused(Pause),
    /// A message is in the Go HarmonyLite format; it and every unfinished message were NAKed.
    Foreign,
}

/// The pause a message stamped with an unknown schema causes.
pub(super) fn pause_of(batch: &ChangeBatch, seq: u64) -> Pause {
    Pause {
        received: batch.schema_hash.clone(),
        origin: batch.origin,
        seq,
    }
}

impl ShardConsumer {
    /// The shard the schema gate knows this consumer by. Only our own shards meet the gate:
    /// the Go peer's messages carry no hash it checks (`go`).
    pub(super) fn gate_shard(&self) -> ShardId {
        match self.lane {
            Lane::Native(shard) => shard,
            Lane::Go(n) => ShardId(n),
        }
    }

    /// Waits until the gate accepts the paused message's hash (true) or cancellation (false).
    pub(super) async fn wait_until_accepted(
        &self,
        pause: &Pause,
        cancel: &CancellationToken,
    ) -> bool {
        let mut changes = self.gate.subscribe();
        loop {
            if self.gate.decide(pause.origin, &pause.received) == Decision::Apply {
                info!(
                    seq = pause.seq,
                    origin = %pause.origin,
                    received = %pause.received,
                    current = %self.gate.versions().current,
                    "schema matches again, resuming shard"
                );
                self.gate.resume(self.gate_shard());
                return true;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return false,
                changed = changes.changed() => {
                    if changed.is_err() {
                        // Every gate handle is gone: the node is stopping.
                        cancel.cancelled().await;
                        return false;
                    }
                }
                _ = tokio::time::sleep(PAUSE_RECHECK) => {}
            }
        }
    }

    /// Pauses the shard on `pause`: logs and NAKs `held` with a delay.
    pub(super) async fn pause(
        &self,
        pause: Pause,
        held: Vec<jetstream::Message>,
    ) -> anyhow::Result<Flow> {
        let versions = self.gate.versions();
        info!(
            seq = pause.seq,
            origin = %pause.origin,
            received = %pause.received,
            expected = %versions.current,
            previous = %versions.previous.as_ref().map(|p| p.0.as_str()).unwrap_or("none"),
            held = held.len(),
            "schema mismatch, pausing shard until the local schema matches"
        );
        self.gate.pause(self.gate_shard(), pause.clone());
        // The NAKs are a courtesy to JetStream: the consumer is set up again at the floor on
        // resume, so one that does not arrive loses nothing.
        for msg in held {
            if let Err(error) = msg.ack_with(AckKind::Nak(Some(PAUSE_NAK_DELAY))).await {
                debug!(error = %Chain(&*error), "cannot NAK a held message");
            }
        }
        Ok(Flow::Paused(pause))
    }
}

impl ShardConsumer {
    /// Pauses the shard on a Go HarmonyLite message at `seq` from `from_node`: reports it (logged
    /// once per message) and NAKs `held`.
    pub(super) async fn pause_foreign(
        &self,
        seq: u64,
        from_node: NodeId,
        held: Vec<jetstream::Message>,
    ) -> anyhow::Result<Flow> {
        let pause = ForeignPause {
            stream: self.cfg.lane_stream(self.lane),
            seq,
            from_node,
        };
        if self.status.pause_foreign(pause.clone()) {
            self.metrics.go_format_pauses.inc();
            tracing::error!(stream = %pause.stream, seq, from_node = %from_node, "{pause}");
        }
        for msg in held {
            if let Err(error) = msg.ack_with(AckKind::Nak(Some(PAUSE_NAK_DELAY))).await {
                debug!(error = %Chain(&*error), "cannot NAK a held message");
            }
        }
        Ok(Flow::Foreign)
    }
}
