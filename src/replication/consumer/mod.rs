//! One durable consumer per shard: fetch what is ready, apply it in one transaction together
//! with the position it reaches, then ack.
//!
//! - this file: the task (set up again with backoff after any interruption) and the fetch loop;
//! - `position`: this node's position from the database and a consumer delivering from
//!   `floor + 1` (`crate::position`: the contiguous applied floor);
//! - `gap`: a stream that no longer holds `floor + 1`, reported, never gone past;
//! - `apply`: decoding, applying and acking one fetched group, terminating malformed messages;
//! - `chunks`: holding the parts of chunked messages until their set is complete;
//! - `stall`: a consumer that delivers nothing while its stream holds more, set up again;
//! - `pause`: schema pauses, and pauses on a Go HarmonyLite message without `go_compat`;
//! - `go`: the Go peer's messages on its own streams (with `replication_log.go_compat`).
//!
//! Every setup reads the position from the database and delivers from `floor + 1`, so an
//! interrupted pull, a failed apply, a pause, a restart or an operating-system crash that took
//! the last transactions with it all come back to the first message not applied. What is
//! applied twice is harmless (last writer wins).

mod apply;
mod chunks;
mod gap;
mod go;
mod pause;
mod position;
mod stall;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use self::chunks::ChunkSets;
use self::pause::Flow;
use self::stall::{Silence, Stalled};
use super::own_seqs::OwnSeqs;
use crate::config::Config;
use crate::db::WriterHandle;
use crate::ids::Lane;
use crate::metrics::Metrics;
use crate::nats::setup;
use crate::position::StreamPosition;
use crate::retry::Backoff;
use crate::schema::gate::{Gate, Pause};
use crate::status::NodeStatus;

/// Most messages applied in one transaction; keeps write transactions short for the
/// application's own writers.
const MAX_MESSAGES_PER_APPLY: usize = 32;
/// Most payload bytes (as received, often compressed) taken into one group, so large messages
/// do not pile up in memory as received. What they decode to is bounded per transaction by
/// `apply::MAX_DECODED_BYTES_PER_APPLY`.
const MAX_BYTES_PER_APPLY: usize = 4 * 1024 * 1024;
/// Waits between attempts to set the consumer up again after an interruption (capped at a
/// second, as the publisher's retries: heal-to-convergence is ours to keep short).
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
/// Lifetime of one pull request, and the idle heartbeat inside it: two missed heartbeats end
/// the pull, so a dead server is noticed within seconds.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// While a hole sits below what was applied, the stream's first sequence is checked this often
/// (a hole the stream still holds is an orphaned delivery that comes again; one it does not is a
/// gap); while nothing arrives, its last sequence too (`stall`, which checks every second while
/// a message is known to wait).
const HOLE_CHECK: Duration = Duration::from_secs(3);

/// One shard's consumer (a shard of ours, or of the Go peer's).
pub struct ShardConsumer {
    pub cfg: Arc<Config>,
    pub lane: Lane,
    pub js: jetstream::Context,
    pub writer: WriterHandle,
    pub status: Arc<NodeStatus>,
    pub metrics: Arc<Metrics>,
    /// Sequences this node published (see `own_seqs`): a trimmed range of only these is no gap.
    pub own_seqs: Arc<OwnSeqs>,
    pub gate: Gate,
}

/// How one stream of deliveries ended without an error.
enum StreamEnd {
    Cancelled,
    /// A schema pause: wait for the gate, then set up again.
    Paused(Pause),
    /// A Go HarmonyLite message without `go_compat`: look again later (the stream may have been
    /// replaced), set up again.
    Foreign,
}

/// What waiting for the next group gave.
enum Next {
    Group(Vec<jetstream::Message>),
    /// Nothing arrived for the silence asked for (`HOLE_CHECK`, or less: `stall`).
    Idle,
    Cancelled,
}

impl ShardConsumer {
    /// Task body: consume until cancelled; sets the consumer up again with backoff on errors.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let span = info_span!("consumer", shard = %self.lane);
        async move {
            let mut backoff = RECONNECT;
            loop {
                let attempt = tokio::time::Instant::now();
                match self.consume(&cancel).await {
                    Ok(()) => return Ok(()),
                    Err(error) => {
                        // An attempt that outlived a pull request, or delivered until it was
                        // taken for stalled, was working: this failure starts a new series.
                        // Without the reset, every interruption after the first few waited the
                        // maximum before reconnecting.
                        if attempt.elapsed() > PULL_EXPIRES || error.is::<Stalled>() {
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

    /// Sets the consumer up at the database's floor and delivers until cancelled; a schema
    /// pause drops the delivery, waits for the gate and sets up again. The stream is read with
    /// `setup::first_answer`: a request sent while the stream's leader is elected gets no answer
    /// and would hold the shard, and so readiness, for the context's whole timeout.
    async fn consume(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        loop {
            let stream = setup::first_answer(&self.js, |js| async move {
                setup::lane_stream(&js, &self.cfg, self.lane).await
            })
            .await?;
            let (mut tracked, view) = self.load_position(&stream).await?;
            self.check_gap(&mut tracked, view.first_seq).await?;
            self.status.set_position_checked(self.lane);
            let consumer = self.ensure_consumer(tracked.position.floor()).await?;
            let silence = Silence::after(tracked.position.highest(), view.last_seq);
            match self
                .deliver(&consumer, &mut tracked, silence, cancel)
                .await?
            {
                StreamEnd::Cancelled => return Ok(()),
                StreamEnd::Paused(pause) => {
                    if !self.wait_until_accepted(&pause, cancel).await {
                        return Ok(());
                    }
                }
                StreamEnd::Foreign => {
                    if !crate::retry::sleep(pause::PAUSE_RECHECK, cancel).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Fetches and applies groups of messages from one pull stream until it ends: cancelled, a
    /// schema pause, or an error.
    async fn deliver(
        &self,
        consumer: &consumer::PullConsumer,
        tracked: &mut StreamPosition,
        mut silence: Silence,
        cancel: &CancellationToken,
    ) -> anyhow::Result<StreamEnd> {
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
        let mut chunks = ChunkSets::new(self.metrics.clone());
        let mut probe = gap::Probe::default();
        let mut last_check = tokio::time::Instant::now();
        loop {
            let check_after = silence.check_after(HOLE_CHECK);
            let batch = match next_group(&mut messages, check_after, cancel).await? {
                Next::Group(batch) => batch,
                Next::Idle => Vec::new(),
                Next::Cancelled => return Ok(StreamEnd::Cancelled),
            };
            let idle = batch.is_empty();
            if let Some(seq) = batch.iter().map(apply::seq_of).max() {
                silence.delivered(seq);
            }
            if !idle {
                match self
                    .apply_and_ack(tracked, batch, &mut chunks, cancel)
                    .await?
                {
                    Flow::Continue => {}
                    // Messages already on their way are delivered again to the consumer that
                    // replaces this one: dropping `messages` stops fetching.
                    Flow::Paused(pause) => return Ok(StreamEnd::Paused(pause)),
                    Flow::Foreign => return Ok(StreamEnd::Foreign),
                }
            }
            let hole = tracked.position.highest() > tracked.position.floor();
            if (hole || idle) && last_check.elapsed() >= check_after {
                last_check = tokio::time::Instant::now();
                self.look_at_stream(tracked, &mut silence, &mut probe, hole, idle)
                    .await?;
            }
        }
    }

    /// The periodic look at the stream, from its leader, while a hole sits above the floor
    /// (a gap it proves) or nothing arrives (a consumer that stalled, set up again).
    async fn look_at_stream(
        &self,
        tracked: &mut StreamPosition,
        silence: &mut Silence,
        probe: &mut gap::Probe,
        hole: bool,
        idle: bool,
    ) -> anyhow::Result<()> {
        let info = if hole {
            self.stream_info().await
        } else {
            tokio::time::timeout(stall::IDLE_LOOK, self.stream_info())
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {:?}", stall::IDLE_LOOK)))
        };
        let info = match info {
            Ok(info) => info,
            // Only looking for a stall: a stream that does not answer (a leader being elected)
            // says nothing either way, and the pull's heartbeats watch the connection.
            Err(error) if !hole => {
                debug!(error = %format!("{error:#}"), "cannot read the stream while idle");
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        if info.created.to_string() != tracked.incarnation {
            anyhow::bail!("the stream was recreated: set up again");
        }
        if hole
            && let Some(held_from) = self
                .held_from(tracked, info.state.first_sequence, probe)
                .await
        {
            self.check_gap(tracked, held_from).await?;
        }
        if idle && silence.idle(self.undelivered(silence, info.state.last_sequence).await) {
            self.metrics.consumer_stalls.inc();
            self.delete_durable().await?;
            return Err(Stalled.into());
        }
        Ok(())
    }

    /// The first message after those delivered, as the stream's leader holds it (`None` when
    /// there is none, or the leader does not answer within `IDLE_LOOK`: no sign of a stall
    /// either way).
    async fn undelivered(&self, silence: &Silence, last_seq: u64) -> Option<u64> {
        let from = silence.look_from(last_seq)?;
        let found = tokio::time::timeout(stall::IDLE_LOOK, self.first_message_from(from)).await;
        found.ok()?.ok().flatten()
    }

    /// The sequence of the first message at or after `from` that the stream's leader holds:
    /// `None` when it holds none there, an error when it does not answer.
    async fn first_message_from(&self, from: u64) -> anyhow::Result<Option<u64>> {
        let name = self.cfg.lane_stream(self.lane);
        let stream = self.js.get_stream_no_info(&name).await?;
        let found = stream
            .raw_message_builder()
            .sequence(from)
            // Every message of the stream, whatever its subject: the floor counts them all.
            .next_by_subject(">")
            .send()
            .await;
        match found {
            Ok(message) => Ok(Some(message.sequence)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The stream's info from its leader: one read with the context's own timeout, never
    /// creating the stream (a stream gone is the next setup's to find).
    async fn stream_info(&self) -> anyhow::Result<jetstream::stream::Info> {
        let name = self.cfg.lane_stream(self.lane);
        let stream = self.js.get_stream(&name).await?;
        Ok(stream.cached_info().clone())
    }
}

/// The next message and whatever else is already buffered (without waiting), within the
/// per-transaction budget.
async fn next_group(
    messages: &mut consumer::pull::Stream,
    idle_after: Duration,
    cancel: &CancellationToken,
) -> anyhow::Result<Next> {
    let first = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(Next::Cancelled),
        next = messages.next() => next,
        _ = tokio::time::sleep(idle_after) => return Ok(Next::Idle),
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
    Ok(Next::Group(batch))
}
