//! Noticing commits: file-system events on the database and its `-wal` file wake the publisher
//! within milliseconds; `polling_interval` (or a slow safety tick) covers file systems without
//! events.

use crate::error::Chain;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Without events and without `polling_interval`, we still look this often.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// Watches the database and wakes `wake` on every commit. Runs until cancelled.
pub async fn run(
    db_path: PathBuf,
    polling: Option<Duration>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let _watcher = match watch_files(&db_path, wake.clone()) {
        Ok(w) => Some(w),
        Err(error) => {
            warn!(error = %Chain(&error), path = %db_path.display(), "file-system events unavailable, polling");
            None
        }
    };
    let period = match (polling, &_watcher) {
        (Some(p), _) => p,
        (None, Some(_)) => SAFETY_POLL,
        (None, None) => Duration::from_millis(100),
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => wake.notify_one(),
        }
    }
}

/// Watches the database's directory (SQLite replaces `-wal` files, so watching the files
/// themselves would lose them) and filters for the database and its WAL.
fn watch_files(db_path: &Path, wake: Arc<Notify>) -> notify::Result<notify::RecommendedWatcher> {
    let db = std::fs::canonicalize(db_path).unwrap_or_else(|_| db_path.to_path_buf());
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let dir = db
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.kind.is_modify()
            && event.paths.iter().any(|p| *p == db || *p == wal)
        {
            wake.notify_one();
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
