//! Restoring this node from the newest sound snapshot.
//!
//! When: at start when the database file was missing or empty or the sequence map file is
//! missing, and whenever a consumer finds its stream trimmed past its position (a gap). The
//! snapshots are tried newest first; one that fails verification is refused, reported and the
//! next older one is tried. The database is written through the writer (`db::restore`), which
//! keeps unpublished local changes and reinstalls capture. Consumers then resume from the
//! snapshot's sequences.

use std::sync::atomic::Ordering;
use std::time::Instant;

use async_nats::jetstream;
use tracing::{error, info, warn};

use super::store::Store;
use super::{Manifest, SnapshotError, create, history, verify, work_dir};
use crate::config::Config;
use crate::db::WriterHandle;
use crate::error::Chain;
use crate::metrics::Metrics;
use crate::replication::seq_map;
use crate::status::NodeStatus;

/// What `restore_latest` did.
#[derive(Debug)]
pub enum Restored {
    /// The store holds no snapshot.
    NothingToRestore,
    /// Restored from this snapshot.
    From(Manifest),
}

/// Whether a node starting now should look for a snapshot: its database file was missing or
/// empty, or it has no sequence map. Call before anything opens the database.
pub fn needed_at_start(cfg: &Config) -> Option<&'static str> {
    if !cfg.snapshot.enabled || !cfg.replicate {
        return None;
    }
    let db_empty = std::fs::metadata(&cfg.db_path).map_or(true, |m| m.len() == 0);
    if db_empty {
        return Some("the database file is missing or empty");
    }
    if !cfg.seq_map_path().exists() {
        return Some("there is no sequence map");
    }
    None
}

/// A stream position a snapshot must reach to be of use: it must cover `stream` up to at least
/// `first - 1` (the stream still holds everything from `first` on).
#[derive(Debug, Clone)]
pub struct Needs {
    pub stream: String,
    pub first: u64,
}

impl Needs {
    fn met_by(&self, m: &Manifest) -> bool {
        m.sequences
            .get(&self.stream)
            .is_some_and(|seq| seq.saturating_add(1) >= self.first)
    }
}

/// Restores the newest snapshot that passes verification (and meets `needs`, when given).
pub async fn restore_latest(
    cfg: &Config,
    js: &jetstream::Context,
    writer: &WriterHandle,
    status: &NodeStatus,
    metrics: &Metrics,
    reason: &str,
    needs: Option<&Needs>,
) -> Result<Restored, SnapshotError> {
    status.restoring.store(true, Ordering::Relaxed);
    let result = match Store::open(cfg, Some(js)).await {
        Ok(store) => restore_from(&store, cfg, writer, metrics, reason, needs).await,
        Err(e) => Err(e.into()),
    };
    status.restoring.store(false, Ordering::Relaxed);
    if result.is_err() {
        metrics.snapshot_failures.inc();
    }
    result
}

/// Restores from `store`: the newest snapshot that passes verification.
pub async fn restore_from(
    store: &Store,
    cfg: &Config,
    writer: &WriterHandle,
    metrics: &Metrics,
    reason: &str,
    needs: Option<&Needs>,
) -> Result<Restored, SnapshotError> {
    let mut candidates = history::candidates(store).await?;
    if let Some(needs) = needs {
        candidates.retain(|m| needs.met_by(m));
    }
    if candidates.is_empty() {
        info!(store = store.describe(), reason, needs = ?needs, "no snapshot to restore");
        return Ok(Restored::NothingToRestore);
    }
    info!(
        store = store.describe(),
        reason,
        candidates = candidates.len(),
        "restoring from the newest snapshot"
    );
    let dir = work_dir(cfg);
    let mut last_error = None;
    for manifest in candidates {
        let started = Instant::now();
        let progress = progress_logger(&manifest);
        match verify::fetch_verified(store, &manifest, &dir, &progress).await {
            Ok(raw) => {
                let report = writer.restore(raw.clone()).await;
                create::remove_quietly(&raw);
                let report = report?;
                if let Err(error) = seq_map::save(&cfg.seq_map_path(), &report.sequences) {
                    warn!(error = %Chain(&error), "cannot write the sequence map after the restore");
                }
                info!(
                    store = store.describe(),
                    id = %manifest.id,
                    from_node = manifest.node_id,
                    size = manifest.size,
                    sequences = ?manifest.sequences,
                    reapplied_local_changes = report.reapplied,
                    took_ms = started.elapsed().as_millis() as u64,
                    "snapshot restored"
                );
                metrics.snapshot_restores.inc();
                return Ok(Restored::From(manifest));
            }
            Err(e) if e.is_bad_snapshot() => {
                error!(
                    store = store.describe(),
                    id = %manifest.id,
                    error = %e,
                    "snapshot refused; trying the previous one"
                );
                metrics.snapshot_failures.inc();
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| SnapshotError::Task("no snapshot".to_owned())))
}

/// Logs download progress about every tenth of the way.
fn progress_logger(manifest: &Manifest) -> impl Fn(u64, u64) + Send + Sync + use<> {
    let id = manifest.id.clone();
    let last = std::sync::atomic::AtomicU64::new(0);
    move |done, total| {
        let tenth = done.saturating_mul(10) / total.max(1);
        if tenth > last.swap(tenth, Ordering::Relaxed) {
            info!(id = %id, done, total, "downloading snapshot");
        }
    }
}
