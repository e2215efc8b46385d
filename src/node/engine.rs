//! The replication engine: the publisher and one consumer per shard (and per Go peer shard with
//! `replication_log.go_compat`), restarted apart from
//! everything else after a snapshot restore or an accepted gap, so every shard resumes from the
//! database's new floors and the publisher re-reads its watermarks.

use std::sync::Arc;

use async_nats::jetstream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::db::{Reader, WriterHandle};
use crate::metrics::Metrics;
use crate::replication::consumer::ShardConsumer;
use crate::replication::own_seqs::OwnSeqs;
use crate::replication::publisher::Publisher;
use crate::schema::SchemaTracker;
use crate::status::NodeStatus;
use crate::tasks::Tasks;

/// What the engine's tasks are built from; kept by the node to restart them.
pub(super) struct Engine {
    pub cfg: Arc<Config>,
    pub js: jetstream::Context,
    pub writer: WriterHandle,
    pub status: Arc<NodeStatus>,
    pub metrics: Arc<Metrics>,
    pub wake: Arc<Notify>,
    pub schema: SchemaTracker,
    /// Sequences this node published, shared by the publisher and the consumers, kept across
    /// engine restarts.
    pub own_seqs: Arc<OwnSeqs>,
}

impl Engine {
    /// Starts the publisher (when `publish`) and the consumers (when `replicate`, and not while
    /// a new database waits for its snapshot: what they would apply has no table to go to).
    pub fn spawn(&self, cancel: CancellationToken) -> anyhow::Result<Tasks> {
        let cfg = &self.cfg;
        let mut tasks = Tasks::new(cancel);
        if cfg.publish {
            let publisher = Publisher {
                cfg: cfg.clone(),
                js: self.js.clone(),
                writer: self.writer.clone(),
                reader: Arc::new(std::sync::Mutex::new(Reader::open(&cfg.db_path)?)),
                watch: Arc::new(std::sync::Mutex::new(Reader::open(&cfg.db_path)?)),
                status: self.status.clone(),
                metrics: self.metrics.clone(),
                own_seqs: self.own_seqs.clone(),
                wake: self.wake.clone(),
                schema: self.schema.clone(),
                unpersisted: Default::default(),
            };
            self.wake.notify_one();
            tasks.spawn("publisher", publisher.run(tasks.token()));
        }
        let waiting = self.status.recovery.facts().waiting_for_snapshot;
        if let Some(why) = &waiting {
            info!(reason = %why, "consumers wait for a snapshot");
        }
        let replicating = cfg.replicate && waiting.is_none();
        let lanes = if replicating { cfg.lanes() } else { Vec::new() };
        self.status.expect_consumers(&lanes);
        if replicating {
            for lane in lanes {
                let consumer = ShardConsumer {
                    cfg: cfg.clone(),
                    lane,
                    js: self.js.clone(),
                    writer: self.writer.clone(),
                    status: self.status.clone(),
                    metrics: self.metrics.clone(),
                    own_seqs: self.own_seqs.clone(),
                    gate: self.schema.gate().clone(),
                };
                tasks.spawn("consumer", consumer.run(tasks.token()));
            }
        }
        Ok(tasks)
    }
}
