//! Chunk reassembly on the consumer side: the JetStream messages of a chunked payload are held
//! until their set is complete (`replication::chunk` does the byte work and keeps the budget),
//! then applied and acked together.
//!
//! Nothing is dropped for lack of room: a chunk over the shard's budget, and the chunks of a set
//! evicted to make room for an older one, are NAKed with a delay and come again. Only what can
//! never be applied is terminated by the caller and counted as malformed: a set with
//! contradicting chunks, one larger than any receiver decodes, one still incomplete after
//! `chunk::MAX_AGE`. A chunk received again is held once: a redelivery (same stream sequence)
//! replaces the held delivery, a republished copy (another sequence) is done at once, since
//! the set carries its bytes. The bytes and chunks held show in the `chunks_held*` gauges.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::replication::chunk::{self, Added, SetKey};

/// Delay asked for a chunk handed back for lack of room: time for held sets to complete.
const REQUEUE_DELAY: Duration = Duration::from_secs(2);
/// Warnings about a full budget are repeated at most this often (with the counts between).
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Chunks of oversized messages held until their set is complete; acked with it.
pub(super) struct ChunkSets {
    reassembly: chunk::Reassembly,
    held: HashMap<SetKey, Vec<jetstream::Message>>,
    metrics: Arc<Metrics>,
    /// What this consumer added to the node-wide gauges (bytes, chunks).
    shown: (i64, i64),
    /// When the last full-budget warning was logged, and chunks requeued since.
    last_warning: Option<Instant>,
    requeued_since: u64,
}

/// What became of one message handed to `ChunkSets::take`.
pub(super) enum Chunked {
    NotAChunk(Box<jetstream::Message>),
    /// Held, or handed back to JetStream for later: nothing for the caller to do.
    Taken,
    /// A copy of a chunk its set holds: nothing to apply; mark it done and ack it.
    Done(Box<jetstream::Message>),
    Complete {
        payload: Vec<u8>,
        messages: Vec<jetstream::Message>,
    },
    /// Malformed: terminate these messages and count them.
    Rejected {
        reason: &'static str,
        messages: Vec<jetstream::Message>,
    },
}

impl ChunkSets {
    pub(super) fn new(metrics: Arc<Metrics>) -> ChunkSets {
        ChunkSets {
            reassembly: chunk::Reassembly::new(chunk::Budget::default()),
            held: HashMap::new(),
            metrics,
            shown: (0, 0),
            last_warning: None,
            requeued_since: 0,
        }
    }

    /// Every chunk held for an incomplete set; the sets are forgotten.
    pub(super) fn drain(&mut self) -> Vec<jetstream::Message> {
        self.reassembly.clear();
        self.show();
        self.held.drain().flat_map(|(_, m)| m).collect()
    }

    /// Sets incomplete for too long, with their messages: they can no longer complete.
    pub(super) fn expired(&mut self) -> Vec<(SetKey, Vec<jetstream::Message>)> {
        let expired = self.reassembly.expire(Instant::now());
        if expired.is_empty() {
            return Vec::new();
        }
        self.show();
        expired
            .into_iter()
            .map(|key| {
                let messages = self.held.remove(&key).unwrap_or_default();
                (key, messages)
            })
            .collect()
    }

    /// Routes a message: ordinary messages pass through; chunks are held until their set is
    /// complete, or handed back to JetStream when the budget is full.
    pub(super) async fn take(&mut self, msg: jetstream::Message) -> anyhow::Result<Chunked> {
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
        let key = SetKey { id, total };
        let added = self
            .reassembly
            .add(&key.id, index, total, msg.payload.clone(), Instant::now());
        let out = match added {
            Added::Pending { evicted } => {
                self.requeue_sets(evicted).await?;
                self.held.entry(key).or_default().push(msg);
                Chunked::Taken
            }
            Added::Complete { pieces, evicted } => {
                self.requeue_sets(evicted).await?;
                let mut messages = self.held.remove(&key).unwrap_or_default();
                messages.push(msg);
                // The messages stay to be acked, their payloads are not needed again (a
                // message held back is NAKed and comes again whole): dropped first, each piece
                // is freed as `join` copies it, so the set is not in memory twice over.
                for held in &mut messages {
                    held.message.payload = Bytes::new();
                }
                let payload = chunk::join(pieces);
                Chunked::Complete { payload, messages }
            }
            Added::Duplicate => {
                self.metrics.chunk_duplicates.inc();
                self.keep_duplicate(&key, msg)
            }
            Added::Deferred => {
                self.requeue(std::slice::from_ref(&msg)).await?;
                Chunked::Taken
            }
            Added::Malformed(reason) => Chunked::Rejected {
                reason,
                messages: vec![msg],
            },
            Added::SetRefused(reason) => {
                let mut messages = self.held.remove(&key).unwrap_or_default();
                messages.push(msg);
                Chunked::Rejected { reason, messages }
            }
        };
        self.show();
        Ok(out)
    }

    /// A chunk its set already holds. The same stream sequence delivered again (the ack wait
    /// passed) replaces the held delivery and must stay unacked: acked now, it would never come
    /// back if the set is evicted. A copy under another sequence is done now.
    fn keep_duplicate(&mut self, key: &SetKey, msg: jetstream::Message) -> Chunked {
        let seq = |m: &jetstream::Message| m.info().map(|i| i.stream_sequence).ok();
        let held = self.held.entry(key.clone()).or_default();
        match held.iter_mut().find(|h| seq(h) == seq(&msg)) {
            Some(same) => {
                debug!(chunk_set = %key, "chunk redelivered while its set is held");
                *same = msg;
                Chunked::Taken
            }
            None => Chunked::Done(Box::new(msg)),
        }
    }

    async fn requeue_sets(&mut self, evicted: Vec<SetKey>) -> anyhow::Result<()> {
        for key in evicted {
            let messages = self.held.remove(&key).unwrap_or_default();
            debug!(chunk_set = %key, chunks = messages.len(), "chunk set evicted for an older one");
            self.requeue(&messages).await?;
        }
        Ok(())
    }

    /// Hands chunks back to JetStream for later delivery, counted and warned about at most
    /// every `WARN_EVERY`.
    async fn requeue(&mut self, messages: &[jetstream::Message]) -> anyhow::Result<()> {
        for msg in messages {
            msg.ack_with(AckKind::Nak(Some(REQUEUE_DELAY)))
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        let n = messages.len() as u64;
        self.metrics.chunks_requeued.inc_by(n);
        self.requeued_since += n;
        if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            warn!(
                requeued = self.requeued_since,
                held_bytes = self.reassembly.held_bytes(),
                held_chunks = self.reassembly.held_chunks(),
                sets = self.reassembly.pending_sets(),
                "chunk memory of this shard is full: chunks handed back to JetStream for later"
            );
            self.last_warning = Some(Instant::now());
            self.requeued_since = 0;
        }
        Ok(())
    }

    /// Moves the node-wide gauges by this consumer's change.
    fn show(&mut self) {
        let now = (
            self.reassembly.held_bytes() as i64,
            self.reassembly.held_chunks() as i64,
        );
        self.metrics.chunks_held_bytes.add(now.0 - self.shown.0);
        self.metrics.chunks_held.add(now.1 - self.shown.1);
        self.shown = now;
    }
}

impl Drop for ChunkSets {
    /// What is held goes with this consumer (its messages come again to the next one).
    fn drop(&mut self) {
        self.reassembly.clear();
        self.show();
    }
}
