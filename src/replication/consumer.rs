//! One durable consumer per shard: fetch what is ready, apply it in one transaction, then ack.
//!
//! The database is the source of truth for how far a shard was applied
//! (`__harmonylite__applied`, written with the changes). When the durable consumer is missing,
//! or is ahead of the database (a fresh or replaced database file), it is recreated to deliver
//! from the database's position. A message that cannot be decoded is skipped, counted, logged
//! and terminated, so it never stalls the shard; an apply that fails transiently is retried
//! before anything is acked.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{chunk, wire};
use crate::apply::IncomingBatch;
use crate::config::Config;
use crate::db::WriterHandle;
use crate::ids::{ShardId, StreamSeq};
use crate::status::{NodeStatus, now_ms};

/// Most messages applied in one transaction; keeps write transactions short for the
/// application's own writers.
const MAX_MESSAGES_PER_APPLY: usize = 64;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One shard's consumer.
pub struct ShardConsumer {
    pub cfg: Arc<Config>,
    pub shard: ShardId,
    pub js: jetstream::Context,
    pub writer: WriterHandle,
    pub status: Arc<NodeStatus>,
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
            let mut backoff = Duration::from_millis(200);
            loop {
                match self.consume(&cancel).await {
                    Ok(()) => return Ok(()),
                    Err(error) => {
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

    async fn ensure_consumer(&self) -> anyhow::Result<consumer::PullConsumer> {
        let stream_name = self.cfg.stream_name(self.shard);
        let stream = self.js.get_stream(&stream_name).await?;
        let applied = self.writer.applied_seqs().await?.get(&stream_name).copied();
        let name = self.durable_name();
        if let Ok(mut existing) = stream.get_consumer::<consumer::pull::Config>(&name).await {
            let floor = existing.info().await?.ack_floor.stream_sequence;
            let db_seq = applied.map(|s| s.0).unwrap_or(0);
            if floor <= db_seq {
                return Ok(existing);
            }
            info!(
                consumer_floor = floor,
                database_seq = db_seq,
                "consumer is ahead of the database, recreating it"
            );
            stream.delete_consumer(&name).await?;
        }
        let deliver_policy = match applied {
            Some(StreamSeq(seq)) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            },
            None => consumer::DeliverPolicy::All,
        };
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            deliver_policy,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 10_000,
            ..Default::default()
        };
        Ok(stream.create_consumer(config).await?)
    }

    async fn consume(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let consumer = self.ensure_consumer().await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(512)
            .messages()
            .await?;
        let stream_name = self.cfg.stream_name(self.shard);
        let mut chunks = ChunkSets::default();
        loop {
            let first = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            let Some(first) = first else {
                anyhow::bail!("message stream ended")
            };
            let mut batch = vec![first?];
            // Take whatever else is already buffered, without waiting.
            while batch.len() < MAX_MESSAGES_PER_APPLY {
                match messages.next().now_or_never() {
                    Some(Some(msg)) => batch.push(msg?),
                    _ => break,
                }
            }
            self.apply_and_ack(&stream_name, batch, &mut chunks, cancel)
                .await?;
        }
    }

    async fn apply_and_ack(
        &self,
        stream_name: &str,
        messages: Vec<jetstream::Message>,
        chunks: &mut ChunkSets,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut incoming = Vec::with_capacity(messages.len());
        let mut good = Vec::with_capacity(messages.len());
        for msg in messages {
            let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            let msg = match chunks.take(msg).await? {
                Chunked::NotAChunk(msg) => msg,
                Chunked::Held => continue,
                Chunked::Complete { payload, messages } => {
                    match wire::decode(&payload) {
                        Ok(batch) => {
                            let stream = stream_name.to_owned();
                            incoming.push(IncomingBatch {
                                stream,
                                seq: StreamSeq(seq),
                                batch,
                            });
                            good.extend(messages);
                        }
                        Err(error) => {
                            NodeStatus::add(&self.status.malformed_messages, 1);
                            warn!(seq, %error, "skipping malformed chunked message");
                            terminate(&messages).await?;
                        }
                    }
                    continue;
                }
                Chunked::Rejected { reason, messages } => {
                    NodeStatus::add(&self.status.malformed_messages, 1);
                    warn!(seq, reason, "skipping bad chunk");
                    terminate(&messages).await?;
                    continue;
                }
            };
            match wire::decode(&msg.payload) {
                Ok(batch) => {
                    incoming.push(IncomingBatch {
                        stream: stream_name.to_owned(),
                        seq: StreamSeq(seq),
                        batch,
                    });
                    good.push(msg);
                }
                Err(error) => {
                    NodeStatus::add(&self.status.malformed_messages, 1);
                    warn!(seq, %error, "skipping malformed message");
                    msg.ack_with(AckKind::Term)
                        .await
                        .map_err(|e| anyhow::anyhow!(e))?;
                }
            }
        }
        if incoming.is_empty() {
            return Ok(());
        }
        let changes: usize = incoming.iter().map(|b| b.batch.row_count()).sum();
        // Shared, so a retry after a transient failure does not copy the batches.
        let incoming = Arc::new(incoming);
        let mut backoff = Duration::from_millis(50);
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

/// Chunks of oversized messages held until their set is complete; acked with it.
#[derive(Default)]
struct ChunkSets {
    reassembly: chunk::Reassembly,
    held: HashMap<String, Vec<jetstream::Message>>,
}

enum Chunked {
    NotAChunk(jetstream::Message),
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
            return Ok(Chunked::NotAChunk(msg));
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

/// Tells JetStream never to redeliver these messages.
async fn terminate(messages: &[jetstream::Message]) -> anyhow::Result<()> {
    for msg in messages {
        msg.ack_with(AckKind::Term)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(())
}
