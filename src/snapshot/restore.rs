//! Finding, fetching and installing the snapshot a node needs.
//!
//! A node needs one when a stream no longer holds what it needs next (a gap, `Needs` says how
//! far a snapshot must cover), or when its database is new, has none of the application's
//! tables, and the streams hold changes. The snapshots are tried newest first; one that fails
//! verification is refused, reported and the next older one is tried. Installing goes through
//! the writer (`db::restore`): the local changes not yet published are merged in and capture is
//! installed under the database's write lock. The caller stops the replication engine around
//! the install (`node::recovery`); consumers then resume from the snapshot's floors.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{error, info, warn};

use super::history::Listed;
use super::room::Limits;
use super::store::Store;
use super::{Manifest, SnapshotError, create, history, verify};
use crate::config::Config;
use crate::db::WriterHandle;
use crate::db::restore::{RestoreMode, RestoreReport};
use crate::error::Chain;
use crate::hlc::now_ms;
use crate::ids::NodeId;
use crate::metrics::Metrics;
use crate::replication::seq_map;

/// What a snapshot must cover to be of use: per stream, the last sequence it must hold (its
/// floor at least that). No entry: any snapshot will do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub covers: Vec<(String, u64)>,
}

impl Needs {
    /// Whether the snapshot `m` covers everything needed.
    pub fn met_by(&self, m: &Manifest) -> bool {
        self.covers
            .iter()
            .all(|(stream, last)| m.sequences.get(stream).is_some_and(|floor| *floor >= *last))
    }
}

/// A snapshot downloaded and verified, ready to install.
#[derive(Debug)]
pub struct Fetched {
    pub manifest: Manifest,
    pub file: PathBuf,
}

/// The newest snapshot in `store` that meets `needs` and passes verification, downloaded into
/// the data directory; `None` when no snapshot meets `needs`. Refused snapshots are counted;
/// one that is not authentic or too large is refused before its download.
pub async fn fetch_newest(
    store: &Store,
    cfg: &Config,
    metrics: &Metrics,
    needs: &Needs,
) -> Result<Option<Fetched>, SnapshotError> {
    let mut candidates = history::candidates(store).await?;
    candidates.retain(|l| needs.met_by(&l.manifest));
    if candidates.is_empty() {
        info!(store = store.describe(), needs = ?needs, "no snapshot meets what this node needs");
        return Ok(None);
    }
    let limits = Limits::new(cfg);
    let mut last_error = None;
    for Listed { manifest, refused } in candidates {
        let fetched = match refused {
            Some(reason) => Err(SnapshotError::Unauthentic {
                id: manifest.id.clone(),
                reason,
            }),
            None => {
                let progress = progress_logger(&manifest);
                verify::fetch_verified(store, &manifest, &limits, &progress).await
            }
        };
        match fetched {
            Ok(file) => return Ok(Some(Fetched { manifest, file })),
            Err(e) if e.is_bad_snapshot() => {
                error!(
                    store = store.describe(),
                    id = %manifest.id,
                    error = %Chain(&e),
                    "snapshot refused; trying the previous one"
                );
                metrics.snapshot_failures.inc();
                count_refusal(metrics, &e);
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| SnapshotError::Task("no snapshot".to_owned())))
}

/// Counts a refusal decided before download (`harmonylite_snapshot_refused_total`).
pub fn count_refusal(metrics: &Metrics, error: &SnapshotError) {
    let reason = match error {
        SnapshotError::Unauthentic { reason, .. } => reason.kind(),
        SnapshotError::TooLarge { .. } => "too_large",
        _ => return,
    };
    metrics.snapshot_refused.with_label_values(&[reason]).inc();
}

/// Writes `fetched` into the database through the writer (the engine must be stopped), then
/// mirrors the new floors into the sequence map file. The downloaded file is removed. Into a
/// database that holds data the snapshot is merged, unless `force` (the operator's
/// `-force-restore`) replaces it.
pub async fn install(
    fetched: Fetched,
    cfg: &Config,
    writer: &WriterHandle,
    metrics: &Metrics,
    force: bool,
) -> Result<RestoreReport, SnapshotError> {
    let started = Instant::now();
    let mode = if force {
        RestoreMode::Replace
    } else {
        RestoreMode::Merge {
            taker: NodeId(fetched.manifest.node_id),
            horizon_ms: Some(now_ms().saturating_add(cfg.max_clock_skew_ms())),
        }
    };
    let report = writer.restore(fetched.file.clone(), mode).await;
    create::remove_quietly(&fetched.file);
    let report = report?;
    if let Err(error) = seq_map::save(&cfg.seq_map_path(), &report.sequences) {
        warn!(error = %Chain(&error), "cannot write the sequence map after the restore");
    }
    let held = report.held + report.merged.as_ref().map_or(0, |m| m.held);
    if held > 0 {
        // Counted as held changes, so the gauge and the dashboard's banner follow at once.
        metrics.quarantined_changes.inc_by(held);
        warn!(
            held,
            "the snapshot's node held changes from the future that this node now holds too: \
             decide on them as on the other nodes (Recovery page)"
        );
    }
    let m = &fetched.manifest;
    info!(
        id = %m.id,
        from_node = m.node_id,
        size = m.size,
        floors = ?m.sequences,
        reapplied_local_changes = report.reapplied,
        merged = report.merged.is_some(),
        merged_rows = report.merged.as_ref().map_or(0, |m| m.applied),
        took_ms = started.elapsed().as_millis() as u64,
        "snapshot restored"
    );
    metrics.snapshot_restores.inc();
    Ok(report)
}

/// Fetches and installs the newest snapshot of `store` that meets `needs`, in one go (no
/// engine running: start-up, tools, tests). `None` when none meets them.
pub async fn restore_from(
    store: &Store,
    cfg: &Config,
    writer: &WriterHandle,
    metrics: &Metrics,
    needs: &Needs,
) -> Result<Option<(Manifest, RestoreReport)>, SnapshotError> {
    let Some(fetched) = fetch_newest(store, cfg, metrics, needs).await? else {
        return Ok(None);
    };
    let manifest = fetched.manifest.clone();
    let report = install(fetched, cfg, writer, metrics, false).await?;
    Ok(Some((manifest, report)))
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
