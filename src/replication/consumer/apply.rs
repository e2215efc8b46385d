//! Applying one fetched group of messages: decode (reassembling chunked payloads), hold back a
//! message the schema gate pauses on and everything after it, apply the rest in one
//! transaction together with the position they bring this node to, then ack.
//!
//! A message the position already holds (a redelivery after a restart or a pause) is acked
//! without being applied or judged again: it was applied under the schema it passed then, and
//! judging it against a schema that moved on since could pause the shard for good. A message
//! that cannot be decoded is counted, logged and terminated, and counts as done, so it never
//! stalls the shard. A message in the Go HarmonyLite format on one of our streams is not
//! malformed: it pauses the shard (`pause`), so the change it carries is never dropped.
//!
//! One transaction holds at most `MAX_DECODED_BYTES_PER_APPLY` of decoded batches (plus the
//! message that reaches it): a longer group is applied in several transactions, in order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::ShardConsumer;
use super::chunks::{ChunkSets, Chunked};
use super::go::Decoded;
use super::pause::{Flow, pause_of};
use crate::apply::ApplyWork;
use crate::change::ChangeBatch;
use crate::error::Chain;
use crate::hlc::now_ms;
use crate::ids::NodeId;
use crate::position::StreamPosition;
use crate::retry::Backoff;
use crate::schema::gate::{Decision, Pause};

/// Most decoded bytes (`wire::decode_sized`: CBOR once decompressed, plus the structures built
/// from it) applied in one transaction. A group is cut by received bytes when it is fetched
/// (`super::MAX_BYTES_PER_APPLY`), but a message that compresses well is tiny on the wire; this
/// bounds what one transaction holds in memory to this plus one message. Ordinary groups stay
/// far below it, so they are not split.
pub(super) const MAX_DECODED_BYTES_PER_APPLY: usize = 32 * 1024 * 1024;
/// Waits between attempts of an apply that failed transiently (the database was busy).
const APPLY_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

/// A message the group stops at, with its parts.
enum Hold {
    /// Stamped with a schema this node does not have.
    Schema(Pause, Vec<jetstream::Message>),
    /// In the Go HarmonyLite format (sequence, publishing node).
    Foreign(u64, NodeId, Vec<jetstream::Message>),
}

/// What one group comes to before it is applied.
#[derive(Default)]
struct Group {
    batches: Vec<ChangeBatch>,
    /// Messages to ack once the transaction committed.
    ack: Vec<jetstream::Message>,
    /// The position once the group is applied.
    next: Option<StreamPosition>,
    /// Decoded size of `batches` (`wire::decode_sized`).
    decoded_bytes: usize,
}

/// A whole message's payload, taken out of it: the message stays only to be acked (one held
/// back is NAKed and comes again whole), and a big row is not held twice while it is applied.
fn take_payload(mut msg: jetstream::Message) -> (bytes::Bytes, Vec<jetstream::Message>) {
    let payload = std::mem::take(&mut msg.message.payload);
    (payload, vec![msg])
}

impl ShardConsumer {
    /// Decodes and applies `messages`, then acks them. Stops at a message the gate pauses on:
    /// that one and the rest are held (`Flow::Paused`).
    pub(super) async fn apply_and_ack(
        &self,
        tracked: &mut StreamPosition,
        messages: Vec<jetstream::Message>,
        chunks: &mut ChunkSets,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Flow> {
        let mut group = Group::default();
        let mut next = tracked.clone();
        self.drop_expired(chunks, &mut next).await?;
        let mut messages = messages.into_iter();
        let mut hold = None;
        for msg in messages.by_ref() {
            let seq = seq_of(&msg);
            if tracked.position.contains(seq) {
                group.ack.push(msg);
                continue;
            }
            // A whole message, or the parts of a chunked one once the last part arrived.
            let (payload, parts): (bytes::Bytes, Vec<jetstream::Message>) =
                match chunks.take(msg).await? {
                    Chunked::NotAChunk(msg) => take_payload(*msg),
                    Chunked::Taken => continue,
                    Chunked::Done(msg) => {
                        mark_all(&mut next, std::slice::from_ref(&*msg));
                        group.ack.push(*msg);
                        continue;
                    }
                    Chunked::Complete { payload, messages } => (payload.into(), messages),
                    Chunked::Rejected { reason, messages } => {
                        self.skip_malformed(seq, reason, &messages).await?;
                        mark_all(&mut next, &messages);
                        continue;
                    }
                };
            // Taken, not kept while the group is applied: a big row would be held twice over.
            let decoded = self.decode(payload, &parts[0]);
            match decoded {
                Decoded::Batch(batch, _)
                    if self.gate.decide(batch.origin, &batch.schema_hash) == Decision::Pause =>
                {
                    hold = Some(Hold::Schema(pause_of(&batch, seq), parts));
                    break;
                }
                Decoded::Batch(batch, size) => {
                    mark_all(&mut next, &parts);
                    group.batches.push(batch);
                    group.ack.extend(parts);
                    group.decoded_bytes += size;
                    // What was received says little of what a transaction holds: a message
                    // that compresses well decodes to far more. Commit once the decoded
                    // batches reach the bound, then go on with a new transaction.
                    if group.decoded_bytes >= MAX_DECODED_BYTES_PER_APPLY
                        && !self.commit(tracked, &mut group, &next, cancel).await?
                    {
                        return Ok(Flow::Continue);
                    }
                }
                Decoded::Done => {
                    mark_all(&mut next, &parts);
                    group.ack.extend(parts);
                }
                Decoded::Malformed(reason) => {
                    self.skip_malformed(seq, &reason, &parts).await?;
                    mark_all(&mut next, &parts);
                }
                Decoded::Foreign(from) => {
                    hold = Some(Hold::Foreign(seq, from, parts));
                    break;
                }
            }
        }
        if !self.commit(tracked, &mut group, &next, cancel).await? {
            return Ok(Flow::Continue);
        }
        // Order is kept: nothing after the paused message is applied before it, and partial
        // chunk sets are delivered again from their first chunk.
        let rest = |mut held: Vec<jetstream::Message>| {
            held.extend(messages);
            held.extend(chunks.drain());
            held
        };
        match hold {
            None => {
                self.status.resume_foreign(&self.cfg.lane_stream(self.lane));
                Ok(Flow::Continue)
            }
            Some(Hold::Schema(pause, held)) => self.pause(pause, rest(held)).await,
            Some(Hold::Foreign(seq, from, held)) => self.pause_foreign(seq, from, rest(held)).await,
        }
    }

    /// Terminates the chunk sets that stayed incomplete too long (they can no longer complete)
    /// and marks their messages done in `next`, so no hole stays below them.
    async fn drop_expired(
        &self,
        chunks: &mut ChunkSets,
        next: &mut StreamPosition,
    ) -> anyhow::Result<()> {
        for (set, parts) in chunks.expired() {
            let seq = parts.first().map_or(0, seq_of);
            warn!(chunk_set = %set, "chunk set still incomplete after the maximum age");
            self.skip_malformed(seq, "incomplete chunk set expired", &parts)
                .await?;
            mark_all(next, &parts);
        }
        Ok(())
    }

    /// Applies and acks what `group` gathered, bringing the position to `next`; the group is
    /// empty afterwards. False when cancelled before it committed.
    async fn commit(
        &self,
        tracked: &mut StreamPosition,
        group: &mut Group,
        next: &StreamPosition,
        cancel: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let mut group = std::mem::take(group);
        if next != tracked {
            group.next = Some(next.clone());
        }
        self.apply_group(tracked, group, cancel).await
    }

    /// Applies a group in one transaction with the position it reaches (retrying transient
    /// failures), then acks it. False when cancelled before it committed.
    async fn apply_group(
        &self,
        tracked: &mut StreamPosition,
        group: Group,
        cancel: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let decoded = group.decoded_bytes;
        if let Some(next) = &group.next {
            let changes: usize = group.batches.iter().map(ChangeBatch::row_count).sum();
            let work = Arc::new(ApplyWork {
                batches: group.batches,
                positions: vec![next.clone()],
                horizon_ms: Some(now_ms().saturating_add(self.cfg.max_clock_skew_ms())),
            });
            if !self.apply_retrying(work, changes, cancel).await? {
                return Ok(false);
            }
            *tracked = next.clone();
        }
        // The batches are gone (applied and dropped with `work`).
        crate::memory::return_free_memory_after(decoded);
        for msg in &group.ack {
            msg.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
        Ok(true)
    }

    /// Applies `work`, retrying transient failures; false when cancelled first.
    async fn apply_retrying(
        &self,
        work: Arc<ApplyWork>,
        changes: usize,
        cancel: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let mut backoff = APPLY_RETRY;
        let started = std::time::Instant::now();
        let report = loop {
            match self.writer.apply(work.clone()).await {
                Ok(report) => break report,
                Err(error) if !error.is_fatal() => {
                    let delay = backoff.next_delay();
                    warn!(error = %Chain(&error), retry_ms = delay.as_millis() as u64, "apply failed, retrying");
                    if !crate::retry::sleep(delay, cancel).await {
                        return Ok(false);
                    }
                }
                Err(error) => return Err(error.into()),
            }
        };
        self.metrics.observe_apply(started);
        let m = &self.metrics;
        m.applied_batches.inc_by(work.batches.len() as u64);
        m.applied_changes.inc_by(report.applied);
        m.stale_changes.inc_by(report.stale);
        m.quarantined_changes.inc_by(report.quarantined);
        if report.applied > 0 {
            self.status
                .last_applied_ms
                .store(now_ms(), Ordering::Relaxed);
        }
        debug!(
            messages = work.batches.len(),
            changes,
            applied = report.applied,
            "applied"
        );
        Ok(true)
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

/// A message's stream sequence (0 without JetStream metadata, which no delivery lacks).
pub(super) fn seq_of(msg: &jetstream::Message) -> u64 {
    msg.info().map(|i| i.stream_sequence).unwrap_or(0)
}

/// Marks every message's sequence as done in `position`.
fn mark_all(position: &mut StreamPosition, messages: &[jetstream::Message]) {
    for m in messages {
        if let Ok(info) = m.info() {
            position.position.mark(info.stream_sequence);
        }
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
