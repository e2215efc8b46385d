//! The node's small long-running tasks: housekeeping (sequence map mirror, conflict journal
//! trim), the liveness heartbeat, `sleep_timeout`, and `-save-snapshot`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::db::WriterHandle;
use crate::error::Chain;
use crate::hlc::now_ms;
use crate::replication::seq_map;
use crate::snapshot::SnapshotHandle;
use crate::snapshot::service::ProgressFn;
use crate::status::NodeStatus;

/// Conflict journal entries kept; older ones are trimmed.
const KEEP_CONFLICTS: u64 = 10_000;

/// Every `cleanup_interval`: mirror applied sequences into the seq map file and trim the
/// conflict journal.
pub(super) async fn housekeeping(
    cfg: Arc<Config>,
    writer: WriterHandle,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(cfg.cleanup_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(error) = flush_seq_map(&cfg, &writer).await {
            warn!(error = %format!("{error:#}"), "cannot write the sequence map");
        }
        if let Err(error) = writer.prune_conflicts(KEEP_CONFLICTS).await {
            warn!(error = %Chain(&error), "cannot trim the conflict journal");
        }
    }
}

/// Writes the database's applied sequences to the sequence map file.
pub(super) async fn flush_seq_map(cfg: &Config, writer: &WriterHandle) -> anyhow::Result<()> {
    let seqs = writer.floors().await?;
    let path = cfg.seq_map_path();
    tokio::task::spawn_blocking(move || seq_map::save(&path, &seqs)).await??;
    Ok(())
}

/// How often the heartbeat beats (`web::live` reads it).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// The liveness probe's heartbeat: a beat a second while the runtime runs its tasks.
pub(super) async fn heartbeat(
    status: Arc<NodeStatus>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => status.liveness.heartbeat_ms.store(now_ms(), Ordering::Relaxed),
        }
    }
}

/// `-save-snapshot`: one snapshot, then the node stops (the task ending is the signal).
pub(super) async fn save_and_stop(
    snapshots: SnapshotHandle,
    progress: ProgressFn,
) -> anyhow::Result<()> {
    let manifest = snapshots.take_now(Some(progress)).await?;
    info!(id = %manifest.id, size = manifest.size, "snapshot saved");
    Ok(())
}

/// `sleep_timeout`: once nothing was published or applied for `idle`, take a snapshot if
/// leader, then end (the node exits 0).
pub(super) async fn sleep_when_idle(
    idle: Duration,
    status: Arc<NodeStatus>,
    snapshots: SnapshotHandle,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let started = now_ms();
    loop {
        let last = status
            .last_published_ms
            .load(Ordering::Relaxed)
            .max(status.last_applied_ms.load(Ordering::Relaxed))
            .max(started);
        let quiet = Duration::from_millis(now_ms().saturating_sub(last));
        if quiet >= idle {
            break;
        }
        let until_idle = (idle - quiet).max(Duration::from_millis(100));
        if !crate::retry::sleep(until_idle, &cancel).await {
            return Ok(());
        }
    }
    if snapshots.is_leader() {
        match snapshots.take_now(None).await {
            Ok(m) => info!(id = %m.id, "snapshot taken before sleeping"),
            Err(error) => warn!(error = %format!("{error:#}"), "snapshot before sleeping failed"),
        }
    }
    Ok(())
}
