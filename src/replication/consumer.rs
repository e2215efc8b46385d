//! One durable consumer per shard: fetch what is ready, apply it in one transaction, then ack.
//!
//! The database is the source of truth for how far a shard was applied
//! (`__harmonylite__applied`, written with the changes). When the durable consumer is missing,
//! or is ahead of the database (a fresh or replaced database file), it is recreated to deliver
//! from the database's position. A message that cannot be decoded is skipped, counted, logged
//! and terminated, so it never stalls the shard; an apply that fails transiently is retried
//! before anything is acked.
//!
//! Schema gate (`crate::schema::gate`): a message whose schema hash is neither this node's
//! current nor its previous one pauses the shard. The messages before it are applied and acked;
//! it, everything after it and any partial chunk set are NAKed with a delay, fetching stops,
//! and the shard waits until the gate accepts that hash (local DDL landed). It then resumes with
//! a fresh durable consumer that starts at the lowest message it did not finish, so delivery
//! restarts exactly there: nothing is skipped and the stream order is kept. Other shards go on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, AckKind, consumer};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{chunk, wire};
use crate::apply::IncomingBatch;
use crate::change::ChangeBatch;
use crate::config::Config;
use crate::db::WriterHandle;
use crate::hlc::now_ms;
use crate::ids::{ShardId, StreamSeq};
use crate::schema::gate::{Decision, Gate, Pause};
use crate::sql::internal::STATE_GAP_ACCEPTED;
use crate::status::NodeStatus;

/// Most messages applied in one transaction; keeps write transactions short for the
/// application's own writers.
const MAX_MESSAGES_PER_APPLY: usize = 32;
/// Most payload bytes (as received, often compressed) applied in one transaction, so large
/// messages do not pile up in memory.
const MAX_BYTES_PER_APPLY: usize = 4 * 1024 * 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long JetStream waits for an ack before offering a message again. Messages delivered to a
/// pull that died with an interrupted stream or a killed process come back only after this, and
/// the shard waits for them: it bounds catch-up after a fault. A slow apply (the application
/// holding the database) may see a message twice, which the applier makes a no-op.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// Lifetime of one pull request, and the idle heartbeat inside it.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// Redelivery delay asked for messages held by a schema pause. Nobody fetches them while the
/// shard is paused; the delay only keeps JetStream from offering them again right away.
const PAUSE_NAK_DELAY: Duration = Duration::from_secs(5);
/// While paused, the gate is re-read this often even without a change notification.
const PAUSE_RECHECK: Duration = Duration::from_secs(30);

/// One shard's consumer.
pub struct ShardConsumer {
    pub cfg: Arc<Config>,
    pub shard: ShardId,
    pub js: jetstream::Context,
    pub writer: WriterHandle,
    pub status: Arc<NodeStatus>,
    pub gate: Gate,
    /// Go on past a gap (logged and counted) instead of ending with `GapDetected`: set when
    /// snapshots are off or no snapshot could close the gap.
    pub accept_gaps: bool,
}

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

/// Where a consumer recreated after a schema pause starts.
#[derive(Debug, Clone, Copy)]
struct Restart {
    /// The lowest sequence not applied or terminated before the pause.
    at: u64,
    /// The paused message's sequence: everything below it that comes again was applied before
    /// (the applier makes that a no-op), so the gate does not judge it a second time.
    replay_below: u64,
}

/// How a fetched group of messages ended.
enum Flow {
    Continue,
    /// A message did not pass the schema gate; it and every unfinished message were NAKed.
    Paused {
        pause: Pause,
        /// The lowest stream sequence not applied or terminated: delivery restarts there.
        restart_at: u64,
    },
}

impl ShardConsumer {
    /// Durable consumer name of this node (one per stream).
    fn durable_name(&self) -> String {
        format!("harmonylite-node-{}", self.status.node_id)
    }

    /// Task body: consume until cancelled; reconnects the consumer with backoff on errors.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let span = info_span!("consumer", shard = self.shard.0);
        async move {
            const FIRST_BACKOFF: Duration = Duration::from_millis(200);
            let mut backoff = FIRST_BACKOFF;
            // Set by a schema pause: the durable consumer must restart there. Kept across
            // retries until a consumer was recreated.
            let mut restart = None;
            loop {
                let attempt = tokio::time::Instant::now();
                match self.consume(&cancel, &mut restart).await {
                    Ok(()) => return Ok(()),
                    Err(error) if error.is::<GapDetected>() => return Err(error),
                    Err(error) => {
                        // An attempt that outlived a pull request was working: this failure
                        // starts a new series. Without the reset, every interruption after the
                        // first few waited the maximum before reconnecting.
                        if attempt.elapsed() > PULL_EXPIRES {
                            backoff = FIRST_BACKOFF;
                        }
                        warn!(error = %format!("{error:#}"), retry_ms = backoff.as_millis() as u64, "consumer interrupted");
                        tokio::select! {
                            _ = cancel.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// The durable consumer; recreated at the database's position when it is ahead of the
    /// database, or at `restart_at` after a schema pause.
    async fn ensure_consumer(
        &self,
        restart_at: Option<u64>,
    ) -> anyhow::Result<consumer::PullConsumer> {
        let stream_name = self.cfg.stream_name(self.shard);
        let stream = self.js.get_stream(&stream_name).await?;
        let applied = self.writer.applied_seqs().await?.get(&stream_name).copied();
        let name = self.durable_name();
        // `consumer_info` keeps JetStream's error kind (`get_consumer` boxes it), so "not found"
        // is told apart from a timeout while a consumer leader moves: only the first may create
        // the consumer, the second is retried (creating now would clash with the existing one).
        let found = match stream.consumer_info(&name).await {
            Ok(info) => Some(info),
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(info) = found {
            let floor = info.ack_floor.stream_sequence;
            let db_seq = applied.map(|s| s.0).unwrap_or(0);
            if floor <= db_seq && restart_at.is_none() {
                return stream
                    .get_consumer(&name)
                    .await
                    .map_err(|e| anyhow::anyhow!(e));
            }
            if restart_at.is_none() {
                info!(
                    consumer_floor = floor,
                    database_seq = db_seq,
                    "consumer is ahead of the database, recreating it"
                );
            }
            stream.delete_consumer(&name).await?;
        }
        let deliver_policy = match (restart_at, applied) {
            (Some(seq), _) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq,
            },
            (None, Some(StreamSeq(seq))) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            },
            (None, None) => consumer::DeliverPolicy::All,
        };
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            deliver_policy,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: 10_000,
            ..Default::default()
        };
        Ok(stream.create_consumer(config).await?)
    }

    /// Fetches and applies until cancelled. A schema pause drops the fetch, waits for the gate
    /// and starts over at the paused position.
    async fn consume(
        &self,
        cancel: &CancellationToken,
        restart: &mut Option<Restart>,
    ) -> anyhow::Result<()> {
        let stream_name = self.cfg.stream_name(self.shard);
        loop {
            let restart_at = restart.map(|r| r.at);
            let consumer = self.ensure_consumer(restart_at).await?;
            let replay_below = restart.take().map_or(0, |r| r.replay_below);
            // The next sequence this node needs; a delivery beyond it may mean a gap.
            let mut expect = match restart_at {
                Some(at) => at,
                None => self.applied_seq(&stream_name).await? + 1,
            };
            expect = self.check_gap(&stream_name, expect).await?;
            // Short pull requests with frequent idle heartbeats: when the server holding the
            // stream restarts, two missed heartbeats end this stream within seconds and the
            // consumer is set up again (the client default notices after about 30 s).
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(512)
                .expires(PULL_EXPIRES)
                .heartbeat(PULL_HEARTBEAT)
                .messages()
                .await?;
            let mut chunks = ChunkSets::default();
            let (pause, at) = loop {
                let first = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(()),
                    next = messages.next() => next,
                };
                let Some(first) = first else {
                    anyhow::bail!("message stream ended")
                };
                let first = first?;
                let mut bytes = first.payload.len();
                let mut batch = vec![first];
                // Take whatever else is already buffered, without waiting, within the budget.
                while batch.len() < MAX_MESSAGES_PER_APPLY && bytes < MAX_BYTES_PER_APPLY {
                    match messages.next().now_or_never() {
                        Some(Some(msg)) => {
                            let msg = msg?;
                            bytes += msg.payload.len();
                            batch.push(msg);
                        }
                        _ => break,
                    }
                }
                let seqs = batch
                    .iter()
                    .filter_map(|m| m.info().ok().map(|i| i.stream_sequence));
                if seqs.clone().min().is_some_and(|first| first > expect) {
                    expect = self.check_gap(&stream_name, expect).await?;
                }
                let lowest = seqs.clone().min();
                if let Some(last) = seqs.max() {
                    expect = expect.max(last + 1);
                }
                let flow = self
                    .apply_and_ack(&stream_name, batch, &mut chunks, replay_below, cancel)
                    .await;
                let flow = match flow {
                    Ok(flow) => flow,
                    Err(error) => {
                        // Nothing of this group was acked: start again exactly there (not
                        // after JetStream's ack wait, and never past it), in stream order.
                        // Chunks held for an incomplete set are lost with this attempt too.
                        let held = chunks.lowest_seq();
                        if let Some(at) = lowest.into_iter().chain(held).min() {
                            *restart = Some(Restart {
                                at,
                                replay_below: 0,
                            });
                        }
                        return Err(error);
                    }
                };
                match flow {
                    Flow::Continue => {}
                    Flow::Paused { pause, restart_at } => break (pause, restart_at),
                }
            };
            // Stop fetching: messages already on their way are delivered again to the consumer
            // that replaces this one.
            drop(messages);
            if !self.wait_until_accepted(&pause, cancel).await {
                return Ok(());
            }
            *restart = Some(Restart {
                at,
                replay_below: pause.seq,
            });
        }
    }

    async fn applied_seq(&self, stream_name: &str) -> anyhow::Result<u64> {
        let applied = self.writer.applied_seqs().await?;
        Ok(applied.get(stream_name).map_or(0, |s| s.0))
    }

    /// Whether the stream still holds `expect`; returns where delivery really continues. A
    /// gap ends the task with `GapDetected`, unless gaps are accepted.
    async fn check_gap(&self, stream_name: &str, expect: u64) -> anyhow::Result<u64> {
        let mut stream = self.js.get_stream(stream_name).await?;
        let first = stream.info().await?.state.first_sequence;
        if first <= expect {
            return Ok(expect);
        }
        if self.status.own_seqs.covers(stream_name, expect, first) {
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
            return Ok(first);
        }
        let gap = GapDetected {
            stream: stream_name.to_owned(),
            needed: expect,
            first,
        };
        if !self.accept_gaps {
            warn!(%gap, "gap in the stream, a snapshot restore is needed");
            return Err(gap.into());
        }
        NodeStatus::add(&self.status.stream_gaps, 1);
        self.writer
            .set_state(STATE_GAP_ACCEPTED, Some(gap.to_string()))
            .await?;
        tracing::error!(%gap, "gap in the stream accepted (no snapshot closes it): changes in the trimmed part are missing here");
        Ok(first)
    }

    /// Waits until the gate accepts the paused message's hash (true) or cancellation (false).
    async fn wait_until_accepted(&self, pause: &Pause, cancel: &CancellationToken) -> bool {
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
                self.gate.resume(self.shard);
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

    /// Pauses the shard on `pause`: logs, NAKs `held` with a delay, and tells the caller where
    /// delivery must restart.
    async fn pause(&self, pause: Pause, held: Vec<jetstream::Message>) -> anyhow::Result<Flow> {
        let versions = self.gate.versions();
        let seq_of = |m: &jetstream::Message| m.info().map(|i| i.stream_sequence).ok();
        let restart_at = held
            .iter()
            .filter_map(seq_of)
            .min()
            .unwrap_or(pause.seq)
            .min(pause.seq);
        info!(
            seq = pause.seq,
            origin = %pause.origin,
            received = %pause.received,
            expected = %versions.current,
            previous = %versions.previous.as_ref().map(|p| p.0.as_str()).unwrap_or("none"),
            held = held.len(),
            "schema mismatch, pausing shard until the local schema matches"
        );
        self.gate.pause(self.shard, pause.clone());
        // The NAKs are a courtesy to JetStream: the consumer is recreated at `restart_at` on
        // resume, so one that does not arrive loses nothing.
        for msg in held {
            if let Err(error) = msg.ack_with(AckKind::Nak(Some(PAUSE_NAK_DELAY))).await {
                debug!(%error, "cannot NAK a held message");
            }
        }
        Ok(Flow::Paused { pause, restart_at })
    }

    async fn apply_and_ack(
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
        let mut backoff = Duration::from_millis(50);
        let started = std::time::Instant::now();
        let report = loop {
            match self.writer.apply(incoming.clone()).await {
                Ok(report) => break report,
                Err(error) if !error.is_fatal() => {
                    warn!(%error, retry_ms = backoff.as_millis() as u64, "apply failed, retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(error) => return Err(error.into()),
            }
        };
        crate::metrics::observe_apply(&self.status, started);
        for msg in &good {
            msg.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
        let s = &self.status;
        NodeStatus::add(&s.applied_batches, good.len() as u64);
        NodeStatus::add(&s.applied_changes, report.applied as u64);
        NodeStatus::add(&s.stale_changes, report.stale as u64);
        NodeStatus::add(&s.conflicts, report.conflicts as u64);
        if report.applied > 0 {
            s.last_applied_ms.store(now_ms(), Ordering::Relaxed);
        }
        debug!(
            messages = good.len(),
            changes,
            applied = report.applied,
            "applied"
        );
        Ok(())
    }
}

impl ShardConsumer {
    /// Counts, logs and terminates a message that cannot be applied, so it never blocks the
    /// shard.
    async fn skip_malformed(
        &self,
        seq: u64,
        reason: &str,
        messages: &[jetstream::Message],
    ) -> anyhow::Result<()> {
        NodeStatus::add(&self.status.malformed_messages, 1);
        warn!(seq, reason, "skipping malformed message");
        terminate(messages).await
    }
}

/// Chunks of oversized messages held until their set is complete; acked with it.
#[derive(Default)]
struct ChunkSets {
    reassembly: chunk::Reassembly,
    held: HashMap<String, Vec<jetstream::Message>>,
}

enum Chunked {
    NotAChunk(Box<jetstream::Message>),
    Held,
    Complete {
        payload: Vec<u8>,
        messages: Vec<jetstream::Message>,
    },
    Rejected {
        reason: &'static str,
        messages: Vec<jetstream::Message>,
    },
}

impl ChunkSets {
    /// The lowest stream sequence of any chunk held.
    fn lowest_seq(&self) -> Option<u64> {
        self.held
            .values()
            .flatten()
            .filter_map(|m| m.info().ok().map(|i| i.stream_sequence))
            .min()
    }

    /// Every chunk held for an incomplete set; the sets are forgotten.
    fn drain(&mut self) -> Vec<jetstream::Message> {
        self.reassembly = chunk::Reassembly::default();
        self.held.drain().flat_map(|(_, m)| m).collect()
    }

    /// Routes a message: ordinary messages pass through; chunks are held until their set is
    /// complete. Sets that stay incomplete too long are terminated and counted as malformed.
    async fn take(&mut self, msg: jetstream::Message) -> anyhow::Result<Chunked> {
        let now = std::time::Instant::now();
        for stale in self.reassembly.expire(now) {
            let messages = self.held.remove(&stale).unwrap_or_default();
            warn!(chunk_set = %stale, "dropping an incomplete chunked message");
            terminate(&messages).await?;
        }
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let (Some(id), Some(position)) =
            (header(chunk::CHUNK_ID_HEADER), header(chunk::CHUNK_HEADER))
        else {
            return Ok(Chunked::NotAChunk(Box::new(msg)));
        };
        let Some((index, total)) = chunk::parse_header(&position) else {
            return Ok(Chunked::Rejected {
                reason: "bad chunk header",
                messages: vec![msg],
            });
        };
        Ok(
            match self.reassembly.add(&id, index, total, &msg.payload, now) {
                chunk::Added::Pending => {
                    self.held.entry(id).or_default().push(msg);
                    Chunked::Held
                }
                chunk::Added::Complete(payload) => {
                    let mut messages = self.held.remove(&id).unwrap_or_default();
                    messages.push(msg);
                    Chunked::Complete { payload, messages }
                }
                chunk::Added::Rejected(reason) => Chunked::Rejected {
                    reason,
                    messages: vec![msg],
                },
            },
        )
    }
}

/// The pause a message stamped with an unknown schema causes.
fn pause_of(batch: &ChangeBatch, seq: u64) -> Pause {
    Pause {
        received: batch.schema_hash.clone(),
        origin: batch.origin,
        seq,
    }
}

/// Tells JetStream never to redeliver these messages.
async fn terminate(messages: &[jetstream::Message]) -> anyhow::Result<()> {
    for msg in messages {
        msg.ack_with(AckKind::Term)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(())
}
