//! Where delivery starts: this node's position in the shard's stream, read from the database
//! (the database decides, never a file or the durable consumer's memory), and a durable consumer
//! that delivers from exactly `floor + 1`.
//!
//! The durable consumer is reused only when it holds no state the database lacks: its ack
//! floor is the database's floor and it delivered nothing beyond it. Otherwise (acks ahead of a
//! database that lost its last transactions, messages delivered to a pull that died, a new or
//! replaced database) it is recreated at `floor + 1`, so nothing can be skipped and orphaned
//! deliveries come again at once, not after the ack wait.
//!
//! Every request here is sent again while unanswered (`setup::first_answer`): one sent while the
//! consumer's or the stream's leader is elected gets no answer, and waiting out its timeout
//! (10 s) held the shard that long after the election (the fault program's heal-to-convergence
//! after a killed server). Each is harmless to repeat: reads, a create with the same
//! configuration, a delete whose repeat finds nothing to delete.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{self, FromConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{self, ConsumerError, ConsumerErrorKind};
use tracing::{info, warn};

use super::ShardConsumer;
use crate::apply::ApplyWork;
use crate::ids::Lane;
use crate::nats::setup;
use crate::position::{Position, StreamPosition};
use crate::replication::seq_map;

/// How long JetStream waits for an ack before offering a message again. Messages delivered to a
/// pull that died with an interrupted stream or a killed process come back only after this
/// (when the consumer is not set up again first). A slow apply (the application holding the
/// database) may see a message twice, which the applier makes a no-op.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// Replicas of the durable consumers' state, whatever the stream's. Its state is never what
/// decides a position (the database's floor does, and a consumer that disagrees is recreated),
/// so copies of it buy nothing, while with the stream's three every ack and delivery was a
/// write replicated to three servers: one replica took commit-to-visible at 1,000 writes/s from
/// p50 3.1-3.9 to 1.9-2.4 ms (`docs/benchmarks.md`, run J). A consumer whose one server is away
/// is created again elsewhere (`ensure_consumer`).
const CONSUMER_REPLICAS: usize = 1;

/// The stream as this setup found it.
pub(super) struct StreamView {
    /// The stream's creation time: its incarnation.
    pub incarnation: String,
    pub first_seq: u64,
    /// Read before the position and the consumer are set up, so possibly a little low (never
    /// high: within one incarnation it only grows); `stall` uses it only to check sooner.
    pub last_seq: u64,
}

impl ShardConsumer {
    /// Durable consumer name of this node (one per stream).
    pub(super) fn durable_name(&self) -> String {
        format!("harmonylite-node-{}", self.status.node_id)
    }

    /// This node's position in the stream, from the database, and the stream's state. A
    /// position of another incarnation (the stream was recreated) starts over at 0; a position
    /// migrated from the highest-sequence format is capped at the durable consumer's ack floor.
    pub(super) async fn load_position(
        &self,
        stream: &stream::Stream,
    ) -> anyhow::Result<(StreamPosition, StreamView)> {
        // Read just now by the setup (`setup::lane_stream`).
        let info = stream.cached_info();
        let view = StreamView {
            incarnation: info.created.to_string(),
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
        };
        let name = self.cfg.lane_stream(self.lane);
        let stored = self
            .writer
            .positions()
            .await?
            .into_iter()
            .find(|p| p.stream == name);
        let fresh = |floor: u64| StreamPosition {
            stream: name.clone(),
            incarnation: view.incarnation.clone(),
            position: Position::at(floor),
        };
        let position = match stored {
            Some(p) if p.incarnation == view.incarnation => return Ok((p, view)),
            Some(p) if p.incarnation.is_empty() => {
                let ack_floor = self
                    .durable_info()
                    .await?
                    .map(|i| i.ack_floor.stream_sequence);
                let floor = ack_floor.map_or(p.position.floor(), |a| a.min(p.position.floor()));
                info!(
                    recorded = p.position.floor(),
                    floor, "position migrated from the highest applied sequence"
                );
                fresh(floor)
            }
            Some(p) => {
                warn!(
                    recorded_incarnation = %p.incarnation,
                    incarnation = %view.incarnation,
                    floor = p.position.floor(),
                    "the stream was recreated: reading it from its start"
                );
                fresh(0)
            }
            None => fresh(self.first_floor(&name, view.first_seq)),
        };
        self.writer
            .apply(ApplyWork::positions(vec![position.clone()]))
            .await?;
        Ok((position, view))
    }

    /// Where a stream this node never read starts: ours from the beginning; a Go peer's where
    /// the Go node this one replaces left it (its `seq_map_path` file, same format) or else
    /// at what the stream still holds. The Go peer's history is not a gap to this node: its
    /// database came from a Go node or a snapshot, and the Go peer itself never replays trimmed
    /// history either.
    fn first_floor(&self, name: &str, first_seq: u64) -> u64 {
        if matches!(self.lane, Lane::Native(_)) {
            return 0;
        }
        let held_from = first_seq.saturating_sub(1);
        let left_at = seq_map::load(&self.cfg.seq_map_path())
            .ok()
            .and_then(|m| m.get(name).copied());
        match left_at {
            Some(at) if at < held_from => {
                warn!(
                    stream = name,
                    go_node_applied = at,
                    first_held = first_seq,
                    "the Go peer's stream no longer holds all the changes after those the Go node \
                     applied here; compare the databases or restore a Go node's snapshot"
                );
                held_from
            }
            Some(at) => at,
            None => held_from,
        }
    }

    /// This node's durable consumer's info (`None` when there is none).
    async fn durable_info(&self) -> anyhow::Result<Option<consumer::Info>> {
        let (stream, name) = (&self.cfg.lane_stream(self.lane), &self.durable_name());
        setup::first_answer(&self.js, |js| async move {
            let found = js
                .get_stream_no_info(stream)
                .await?
                .consumer_info(name)
                .await;
            match found {
                Ok(info) => Ok(Some(info)),
                Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(None),
                Err(e) => Err(anyhow::Error::from(e)),
            }
        })
        .await
    }

    /// Deletes this node's durable consumer (the next setup creates it at `floor + 1`); one
    /// already gone counts as deleted (a repeated delete finds nothing).
    pub(super) async fn delete_durable(&self) -> anyhow::Result<()> {
        let (stream, name) = (&self.cfg.lane_stream(self.lane), &self.durable_name());
        setup::first_answer(&self.js, |js| async move {
            match js.delete_consumer_from_stream(name, stream).await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(anyhow::Error::from(e)),
            }
        })
        .await
    }

    /// The durable consumer, delivering from `floor + 1`.
    pub(super) async fn ensure_consumer(
        &self,
        floor: u64,
    ) -> anyhow::Result<consumer::PullConsumer> {
        let name = self.durable_name();
        // `consumer_info` keeps JetStream's error kind (`get_consumer` boxes it), so "not found"
        // is told apart from a consumer that does not answer. The consumer has one replica
        // (`CONSUMER_REPLICAS`): one that does not answer sits on a server that is away, and
        // would stay away with it, so it is deleted (the meta leader removes it without its
        // server) and created again on a server that answers.
        let existing = match self.durable_info().await {
            Ok(info) => info,
            Err(error) => {
                warn!(error = %format!("{error:#}"), "the durable consumer does not answer (its server is away?), creating it again");
                self.delete_durable().await?;
                None
            }
        };
        if let Some(info) = existing {
            let acked = info.ack_floor.stream_sequence;
            let delivered = info.delivered.stream_sequence;
            if acked == floor && delivered == floor {
                // Built from the info just read: asking for it again is one more request that
                // an election could hold up.
                let config = consumer::pull::Config::try_from_consumer_config(info.config.clone())
                    .map_err(|e| anyhow::anyhow!(e))?;
                return Ok(consumer::Consumer::new(config, info, self.js.clone()));
            }
            if acked > floor {
                warn!(
                    consumer_ack_floor = acked,
                    database_floor = floor,
                    "the consumer acknowledged more than the database holds, recreating it"
                );
            }
            self.delete_durable().await?;
        }
        let deliver_policy = match floor {
            0 => consumer::DeliverPolicy::All,
            floor => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: floor + 1,
            },
        };
        let config = consumer::pull::Config {
            durable_name: Some(name),
            deliver_policy,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: 10_000,
            num_replicas: CONSUMER_REPLICAS,
            ..Default::default()
        };
        let stream = &self.cfg.lane_stream(self.lane);
        let config = &config;
        setup::first_answer(&self.js, |js| async move {
            js.create_consumer_on_stream(config.clone(), stream)
                .await
                .map_err(anyhow::Error::from)
        })
        .await
    }
}

/// Whether JetStream answered that the consumer does not exist.
fn is_not_found(error: &ConsumerError) -> bool {
    matches!(error.kind(), ConsumerErrorKind::JetStream(e) if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND)
}
