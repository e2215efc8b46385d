//! The replication engine: the publisher and one consumer per shard, restarted apart from
//! everything else after a snapshot restore, so every shard resumes from the snapshot's
//! sequences and the publisher re-reads its watermarks; and closing a gap with a snapshot.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::config::Config;
use crate::db::{Reader, WriterHandle};
use crate::error::Chain;
use crate::ids::ShardId;
use crate::metrics::Metrics;
use crate::replication::consumer::ShardConsumer;
use crate::replication::own_seqs::OwnSeqs;
use crate::replication::publisher::Publisher;
use crate::replication::{EngineStop, GapDetected};
use crate::schema::SchemaTracker;
use crate::snapshot;
use crate::status::NodeStatus;
use crate::tasks::Tasks;

/// How long a node behind a trimmed stream waits for a snapshot that covers the gap (the
/// leader takes one as the stream grows) before it goes on without one.
const GAP_WAIT: Duration = Duration::from_secs(90);
const GAP_RETRY: Duration = Duration::from_secs(3);

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
    /// Starts the publisher (when `publish`) and the consumers (when `replicate`).
    pub fn spawn(
        &self,
        cancel: CancellationToken,
        accept_gaps: bool,
    ) -> anyhow::Result<Tasks<EngineStop>> {
        let cfg = &self.cfg;
        let mut tasks = Tasks::new(cancel);
        if cfg.publish {
            let publisher = Publisher {
                cfg: cfg.clone(),
                js: self.js.clone(),
                writer: self.writer.clone(),
                reader: Arc::new(std::sync::Mutex::new(Reader::open(&cfg.db_path)?)),
                status: self.status.clone(),
                metrics: self.metrics.clone(),
                own_seqs: self.own_seqs.clone(),
                wake: self.wake.clone(),
                schema: self.schema.clone(),
                unpersisted: Default::default(),
            };
            self.wake.notify_one();
            let token = tasks.token();
            tasks.spawn("publisher", async move {
                publisher.run(token).await.map_err(EngineStop::Failed)
            });
        }
        if cfg.replicate {
            for n in 0..cfg.replication_log.shards {
                let consumer = ShardConsumer {
                    cfg: cfg.clone(),
                    shard: ShardId(n),
                    js: self.js.clone(),
                    writer: self.writer.clone(),
                    status: self.status.clone(),
                    metrics: self.metrics.clone(),
                    own_seqs: self.own_seqs.clone(),
                    gate: self.schema.gate().clone(),
                    accept_gaps,
                };
                tasks.spawn("consumer", consumer.run(tasks.token()));
            }
        }
        Ok(tasks)
    }

    /// Restores a snapshot that covers `gap`, waiting up to `GAP_WAIT` for one to appear; false
    /// when none did (snapshots off, store failing, or no snapshot new enough).
    pub async fn close_gap(&self, gap: &GapDetected) -> bool {
        let (cfg, status) = (&self.cfg, &self.status);
        if !cfg.snapshot.enabled {
            return false;
        }
        let needs = snapshot::restore::Needs {
            stream: gap.stream.clone(),
            first: gap.first,
        };
        let deadline = std::time::Instant::now() + GAP_WAIT;
        let reason = gap.to_string();
        loop {
            status.restoring.store(true, Ordering::Relaxed);
            let restored = snapshot::restore::restore_latest(
                cfg,
                &self.js,
                &self.writer,
                status,
                &self.metrics,
                &reason,
                Some(&needs),
            )
            .await;
            match restored {
                Ok(snapshot::restore::Restored::From(_)) => return true,
                Ok(snapshot::restore::Restored::NothingToRestore) => {}
                Err(error) => {
                    error!(error = %Chain(&error), "cannot restore a snapshot to close the gap")
                }
            }
            if std::time::Instant::now() >= deadline {
                status.restoring.store(false, Ordering::Relaxed);
                error!(
                    wait_s = GAP_WAIT.as_secs(),
                    "no snapshot covers the gap; going on without one"
                );
                return false;
            }
            status.restoring.store(true, Ordering::Relaxed);
            tokio::time::sleep(GAP_RETRY).await;
        }
    }
}
