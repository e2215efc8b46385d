//! Applying one fetched group of messages: decode (reassembling chunked payloads), hold back a
//! message the schema gate pauses on and everything after it, apply the rest in one
//! transaction (retrying transient failures), then ack. A message that cannot be decoded is
//! counted, logged and terminated, so it never stalls the shard.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::ShardConsumer;
use super::chunks::{ChunkSets, Chunked};
use super::pause::{Flow, pause_of};
use crate::apply::IncomingBatch;
use crate::change::ChangeBatch;
use crate::error::Chain;
use crate::hlc::now_ms;
use crate::ids::StreamSeq;
use crate::replication::wire;
use crate::retry::Backoff;
use crate::schema::gate::Decision;

/// Waits between attempts of an apply that failed transiently (the database was busy).
const APPLY_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

impl ShardConsumer {
    /// Decodes and applies `messages`, then acks them. Stops at a message the gate pauses on:
    /// that one and the rest are held (`Flow::Paused`).
    pub(super) async fn apply_and_ack(
        &self,
        stream_name: &str,
        messages: Vec<jetstream::Message>,
        chunks: &mut ChunkSets,
        replay_below: u64,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Flow> {
        let holds = |batch: &ChangeBatch, seq: u64| {
            seq >= replay_below
                && self.gate.decide(batch.origin, &batch.schema_hash) == Decision::Pause
        };
        let mut incoming = Vec::with_capacity(messages.len());
        let mut good = Vec::with_capacity(messages.len());
        let mut pause = None;
        let mut held = Vec::new();
        let mut messages = messages.into_iter();
        for msg in messages.by_ref() {
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            // A whole message, or the parts of a chunked one once the last part arrived.
            let (payload, parts): (bytes::Bytes, Vec<jetstream::Message>) =
                match chunks.take(msg).await? {
                    Chunked::NotAChunk(msg) => (msg.payload.clone(), vec![*msg]),
                    Chunked::Held => continue,
                    Chunked::Complete { payload, messages } => (payload.into(), messages),
                    Chunked::Rejected { reason, messages } => {
                        self.skip_malformed(seq, reason, &messages).await?;
                        continue;
                    }
                };
            match wire::decode(&payload) {
                Ok(batch) if holds(&batch, seq) => {
                    pause = Some(pause_of(&batch, seq));
                    held.extend(parts);
                    break;
                }
                Ok(batch) => {
                    incoming.push(IncomingBatch {
                        stream: stream_name.to_owned(),
                        seq: StreamSeq(seq),
                        batch,
                    });
                    good.extend(parts);
                }
                Err(error) => self.skip_malformed(seq, &error.to_string(), &parts).await?,
            }
        }
        if !incoming.is_empty() {
            self.apply_good(incoming, good, cancel).await?;
        }
        let Some(pause) = pause else {
            return Ok(Flow::Continue);
        };
        // Order is kept: nothing after the paused message is applied before it, and partial
        // chunk sets are delivered again from their first chunk.
        held.extend(messages);
        held.extend(chunks.drain());
        self.pause(pause, held).await
    }

    /// Applies decoded messages in one transaction (retrying transient failures), then acks.
    async fn apply_good(
        &self,
        incoming: Vec<IncomingBatch>,
        good: Vec<jetstream::Message>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let changes: usize = incoming.iter().map(|b| b.batch.row_count()).sum();
        // Shared, so a retry after a transient failure does not copy the batches.
        let incoming = Arc::new(incoming);
        let mut backoff = APPLY_RETRY;
        let started = std::time::Instant::now();
        let report = loop {
            match self.writer.apply(incoming.clone()).await {
                Ok(report) => break report,
                Err(error) if !error.is_fatal() => {
                    let delay = backoff.next_delay();
                    warn!(error = %Chain(&error), retry_ms = delay.as_millis() as u64, "apply failed, retrying");
                    if !crate::retry::sleep(delay, cancel).await {
                        return Ok(());
                    }
                }
                Err(error) => return Err(error.into()),
            }
        };
        self.metrics.observe_apply(started);
        for msg in &good {
            msg.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
        let m = &self.metrics;
        m.applied_batches.inc_by(good.len() as u64);
        m.applied_changes.inc_by(report.applied);
        m.stale_changes.inc_by(report.stale);
        if report.applied > 0 {
            self.status
                .last_applied_ms
                .store(now_ms(), Ordering::Relaxed);
        }
        debug!(
            messages = good.len(),
            changes,
            applied = report.applied,
            "applied"
        );
        Ok(())
    }

    /// Counts, logs and terminates a message that cannot be applied, so it never blocks the
    /// shard.
    pub(super) async fn skip_malformed(
        &self,
        seq: u64,
        reason: &str,
        messages: &[jetstream::Message],
    ) -> anyhow::Result<()> {
        self.metrics.malformed_messages.inc();
        warn!(seq, reason, "skipping malformed message");
        terminate(messages).await
    }
}

/// Tells JetStream never to redeliver these messages.
pub(super) async fn terminate(messages: &[jetstream::Message]) -> anyhow::Result<()> {
    for msg in messages {
        msg.ack_with(AckKind::Term)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(())
}
