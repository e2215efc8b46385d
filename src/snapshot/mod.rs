//! Snapshots: taking a verified copy of the database, storing it, and restoring a node from it.
//!
//! - `manifest`: what a snapshot is and covers (JSON, checked on read).
//! - `store`: where snapshots live (NATS object store, S3, WebDAV, SFTP, a local directory).
//! - `create`: `VACUUM INTO`, strip, compress, hash.
//! - `signing`: the HMAC that proves a manifest came from a holder of the cluster's key.
//! - `room`: whether a manifest's sizes fit the configured bound and the disk, before download.
//! - `unpack`: hash and decompress a download as it arrives.
//! - `verify`: download and prove a snapshot sound before it is used.
//! - `history`: list, publish (data → manifest → `latest.json`), prune.
//! - `leader`: the KV lease that makes one node the snapshot taker.
//! - `service`: the task that takes snapshots on schedule, on stream growth and on request;
//!   `retry`: when it tries again after a failure.
//! - `restore`: choosing a snapshot and writing it into the live database.
//!
//! Design: `docs/decisions/005-snapshots.md`.

pub mod create;
pub mod history;
pub mod leader;
pub mod manifest;
pub mod restore;
pub mod retry;
pub mod room;
pub mod service;
pub mod signing;
pub mod store;
pub mod unpack;
pub mod verify;

use std::path::{Path, PathBuf};

pub use manifest::Manifest;
pub use service::{SnapshotHandle, Snapshotter};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed")]
    Sqlite {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("snapshot {id} refused: {reason}")]
    Corrupt { id: String, reason: String },
    /// With `[snapshot] signing_key` set: not signed by one of this node's keys.
    #[error("snapshot {id} refused as not authentic")]
    Unauthentic {
        id: String,
        #[source]
        reason: signing::SignatureError,
    },
    /// Larger than `[snapshot] max_size_mb` allows (checked before any download).
    #[error(
        "snapshot {id} refused: its manifest says {size} bytes compressed and {raw_size} bytes \
         as a database, more than snapshot.max_size_mb = {limit_mb} allows"
    )]
    TooLarge {
        id: String,
        size: u64,
        raw_size: u64,
        limit_mb: u64,
    },
    /// Not enough free space to download and install it (checked before any download).
    #[error(
        "snapshot {id} not downloaded: it needs {need} bytes free in {path} ({what}), and {free} \
         are"
    )]
    NoRoom {
        id: String,
        path: PathBuf,
        what: &'static str,
        need: u64,
        free: u64,
    },
    #[error("manifest {name} refused")]
    Manifest {
        name: String,
        #[source]
        source: manifest::ManifestError,
    },
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("snapshot task failed: {0}")]
    Task(String),
}

impl SnapshotError {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the snapshot itself is bad (so an older one may still be good). Too little free
    /// space is not: an older snapshot would not be of use (it covers less) and the space may
    /// come back, so the restore waits and tries again.
    pub fn is_bad_snapshot(&self) -> bool {
        matches!(
            self,
            SnapshotError::Corrupt { .. }
                | SnapshotError::Manifest { .. }
                | SnapshotError::Unauthentic { .. }
                | SnapshotError::TooLarge { .. }
        ) || matches!(
            self,
            SnapshotError::Store(store::StoreError::NotFound { .. })
        )
    }
}

/// Where snapshot files are staged: `<data_dir>/snapshots`.
pub fn work_dir(cfg: &crate::config::Config) -> PathBuf {
    cfg.data_dir().join("snapshots")
}

#[cfg(test)]
mod restore_tests;
#[cfg(test)]
mod signing_store_tests;
#[cfg(test)]
mod tests;
