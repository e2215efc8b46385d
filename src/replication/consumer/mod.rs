//! One durable consumer per shard: fetch what is ready, apply it in one transaction, then ack.
//!
//! - this file: the task (reconnecting with backoff) and the fetch loop;
//! - `position`: where delivery starts (the durable consumer and the database's position);
//! - `gap`: a stream trimmed past this node's position (`GapDetected`, the engine's typed exit);
//! - `apply`: decoding, applying and acking one fetched group, terminating malformed messages;
//! - `chunks`: holding the parts of chunked messages until their set is complete;
//! - `pause`: schema pauses, and where delivery restarts after one.
//!
//! The database is the source of truth for how far a shard was applied; an apply that fails
//! transiently is retried before anything is acked, and one that fails for good restarts
//! delivery exactly at the lowest sequence of the failed group.

mod apply;
mod chunks;
mod gap;
mod pause;
mod position;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use self::chunks::ChunkSets;
use self::pause::{Flow, Restart};
use super::EngineStop;
use super::own_seqs::OwnSeqs;
use crate::config::Config;
use crate::db::WriterHandle;
use crate::ids::ShardId;
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::schema::gate::{Gate, Pause};
use crate::status::NodeStatus;
pub use gap::GapDetected;

/// Most messages applied in one transaction; keeps write transactions short for the
/// application's own writers.
const MAX_MESSAGES_PER_APPLY: usize = 32;
/// Most payload bytes (as received, often compressed) applied in one transaction, so large
/// messages do not pile up in memory.
const MAX_BYTES_PER_APPLY: usize = 4 * 1024 * 1024;
/// Waits between attempts to set the consumer up again after an interruption.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
/// Lifetime of one pull request, and the idle heartbeat inside it.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);

/// One shard's consumer.
pub struct ShardConsumer {
    pub cfg: Arc<Config>,
    pub shard: ShardId,
    pub js: jetstream::Context,
    pub writer: WriterHandle,
    pub status: Arc<NodeStatus>,
    pub metrics: Arc<Metrics>,
    /// Sequences this node published (see `own_seqs`): a trimmed range of only these is no gap.
    pub own_seqs: Arc<OwnSeqs>,
    pub gate: Gate,
    /// Go on past a gap (logged and counted) instead of ending with `GapDetected`: set when
    /// snapshots are off or no snapshot could close the gap.
    pub accept_gaps: bool,
}

/// How one consumer set-up ended without an error.
enum Ended {
    Cancelled,
    Gap(GapDetected),
}

/// How one stream of deliveries ended without an error.
enum StreamEnd {
    Cancelled,
    Gap(GapDetected),
    /// A schema pause: wait for the gate, then restart delivery at `at`.
    Paused {
        pause: Pause,
        at: u64,
    },
}

impl ShardConsumer {
    /// Task body: consume until cancelled; sets the consumer up again with backoff on errors.
    /// Ends on its own only with a gap.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), EngineStop> {
        let span = info_span!("consumer", shard = self.shard.0);
        async move {
            let mut backoff = RECONNECT;
            // Set by a schema pause or a failed apply: the durable consumer must restart there.
            // Kept across retries until a consumer was recreated.
            let mut restart = None;
            loop {
                let attempt = tokio::time::Instant::now();
                match self.consume(&cancel, &mut restart).await {
                    Ok(Ended::Cancelled) => return Ok(()),
                    Ok(Ended::Gap(gap)) => return Err(EngineStop::Gap(gap)),
                    Err(error) => {
                        // An attempt that outlived a pull request was working: this failure
                        // starts a new series. Without the reset, every interruption after the
                        // first few waited the maximum before reconnecting.
                        if attempt.elapsed() > PULL_EXPIRES {
                            backoff.reset();
                        }
                        let delay = backoff.next_delay();
                        warn!(error = %format!("{error:#}"), retry_ms = delay.as_millis() as u64, "consumer interrupted");
                        if !crate::retry::sleep(delay, &cancel).await {
                            return Ok(());
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Sets the consumer up and delivers until cancelled or a gap; a schema pause drops the
    /// delivery, waits for the gate and starts over at the paused position.
    async fn consume(
        &self,
        cancel: &CancellationToken,
        restart: &mut Option<Restart>,
    ) -> anyhow::Result<Ended> {
        let stream_name = self.cfg.stream_name(self.shard);
        loop {
            let restart_at = restart.map(|r| r.at);
            let consumer = self.ensure_consumer(restart_at).await?;
            let replay_below = restart.take().map_or(0, |r| r.replay_below);
            // The next sequence this node needs; a delivery beyond it may mean a gap.
            let expect = match restart_at {
                Some(at) => at,
                None => self.applied_seq(&stream_name).await? + 1,
            };
            let expect = match self.check_gap(&stream_name, expect).await? {
                Ok(expect) => expect,
                Err(gap) => return Ok(Ended::Gap(gap)),
            };
            let end = self
                .deliver(&consumer, expect, replay_below, cancel, restart)
                .await?;
            let (pause, at) = match end {
                StreamEnd::Cancelled => return Ok(Ended::Cancelled),
                StreamEnd::Gap(gap) => return Ok(Ended::Gap(gap)),
                StreamEnd::Paused { pause, at } => (pause, at),
            };
            if !self.wait_until_accepted(&pause, cancel).await {
                return Ok(Ended::Cancelled);
            }
            *restart = Some(Restart {
                at,
                replay_below: pause.seq,
            });
        }
    }

    /// Fetches and applies groups of messages from one pull stream until it ends: cancelled, a
    /// gap, a schema pause, or an error (a failed apply records where to restart in `restart`).
    async fn deliver(
        &self,
        consumer: &consumer::PullConsumer,
        mut expect: u64,
        replay_below: u64,
        cancel: &CancellationToken,
        restart: &mut Option<Restart>,
    ) -> anyhow::Result<StreamEnd> {
        let stream_name = self.cfg.stream_name(self.shard);
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
        loop {
            let Some(batch) = next_group(&mut messages, cancel).await? else {
                return Ok(StreamEnd::Cancelled);
            };
            let seqs = batch
                .iter()
                .filter_map(|m| m.info().ok().map(|i| i.stream_sequence));
            if seqs.clone().min().is_some_and(|first| first > expect) {
                expect = match self.check_gap(&stream_name, expect).await? {
                    Ok(expect) => expect,
                    Err(gap) => return Ok(StreamEnd::Gap(gap)),
                };
            }
            let lowest = seqs.clone().min();
            if let Some(last) = seqs.max() {
                expect = expect.max(last + 1);
            }
            let flow = self
                .apply_and_ack(&stream_name, batch, &mut chunks, replay_below, cancel)
                .await;
            match flow {
                Ok(Flow::Continue) => {}
                // Messages already on their way are delivered again to the consumer that
                // replaces this one: dropping `messages` stops fetching.
                Ok(Flow::Paused { pause, restart_at }) => {
                    return Ok(StreamEnd::Paused {
                        pause,
                        at: restart_at,
                    });
                }
                Err(error) => {
                    // Nothing of this group was acked: start again exactly there (not after
                    // JetStream's ack wait, and never past it), in stream order. Chunks held
                    // for an incomplete set are lost with this attempt too.
                    if let Some(at) = lowest.into_iter().chain(chunks.lowest_seq()).min() {
                        *restart = Some(Restart {
                            at,
                            replay_below: 0,
                        });
                    }
                    return Err(error);
                }
            }
        }
    }
}

/// The next message and whatever else is already buffered (without waiting), within the
/// per-transaction budget; `None` when cancelled.
async fn next_group(
    messages: &mut consumer::pull::Stream,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<Vec<jetstream::Message>>> {
    let first = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(None),
        next = messages.next() => next,
    };
    let Some(first) = first else {
        anyhow::bail!("message stream ended")
    };
    let first = first?;
    let mut bytes = first.payload.len();
    let mut batch = vec![first];
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
    Ok(Some(batch))
}
