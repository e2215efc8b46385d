//! Where delivery starts: the durable consumer of this node on the shard's stream, and the
//! position the database holds (`__harmonylite__applied`, written with the changes).
//!
//! When the durable consumer is missing, or is ahead of the database (a fresh or replaced
//! database file), it is recreated to deliver from the database's position; after a pause or a
//! failed apply it is recreated at the exact sequence to restart from.

use std::time::Duration;

use async_nats::jetstream::consumer;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use tracing::info;

use super::ShardConsumer;
use crate::ids::StreamSeq;

/// How long JetStream waits for an ack before offering a message again. Messages delivered to a
/// pull that died with an interrupted stream or a killed process come back only after this, and
/// the shard waits for them: it bounds catch-up after a fault. A slow apply (the application
/// holding the database) may see a message twice, which the applier makes a no-op.
const ACK_WAIT: Duration = Duration::from_secs(10);

impl ShardConsumer {
    /// Durable consumer name of this node (one per stream).
    pub(super) fn durable_name(&self) -> String {
        format!("harmonylite-node-{}", self.status.node_id)
    }

    /// The durable consumer; recreated at the database's position when it is ahead of the
    /// database, or at `restart_at` after a schema pause or a failed apply.
    pub(super) async fn ensure_consumer(
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

    /// The highest sequence of the shard's stream the database holds as applied (0 = none).
    pub(super) async fn applied_seq(&self, stream_name: &str) -> anyhow::Result<u64> {
        let applied = self.writer.applied_seqs().await?;
        Ok(applied.get(stream_name).map_or(0, |s| s.0))
    }
}
