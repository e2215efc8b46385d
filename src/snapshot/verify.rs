//! Fetching a snapshot and proving it sound before anything uses it: its sizes must fit
//! (`room`, judged before the download starts), the download must have
//! the manifest's size and SHA-256, decompress to exactly the manifest's raw size (which also
//! bounds a decompression bomb), pass `PRAGMA integrity_check` and carry our tables. Anything
//! else is `SnapshotError::Corrupt`, and the file is deleted.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tempfile::TempPath;

use super::SnapshotError;
use super::manifest::Manifest;
use super::room::{self, Limits};
use super::store::{Progress, Store};
use super::unpack::{self, Unpacked};
use crate::sql::internal::{FLOORS, LEGACY_APPLIED, TRACKED};

/// Downloads snapshot `manifest` from `store` into `limits.work_dir` and verifies it; returns
/// the path of the decompressed database. Nothing is downloaded when it does not fit `limits`.
/// The download is hashed and decompressed as it arrives (`unpack`): only the database is
/// written to disk.
pub async fn fetch_verified(
    store: &Store,
    manifest: &Manifest,
    limits: &Limits,
    progress: Progress<'_>,
) -> Result<PathBuf, SnapshotError> {
    let work_dir = limits.work_dir.as_path();
    std::fs::create_dir_all(work_dir).map_err(|e| SnapshotError::io("creating", work_dir, e))?;
    let (checked, limits) = (manifest.clone(), limits.clone());
    tokio::task::spawn_blocking(move || room::check(&checked, &limits))
        .await
        .map_err(|e| SnapshotError::Task(e.to_string()))??;
    // Deleted when this returns an error or is dropped half-way (a cancelled restore).
    let raw = work_dir.join(format!("restore-{}.db", manifest.id));
    let raw = TempPath::try_from_path(&raw).map_err(|e| SnapshotError::io("naming", &raw, e))?;
    download(store, manifest, &raw, progress).await?;
    let (path, m) = (raw.to_path_buf(), manifest.clone());
    tokio::task::spawn_blocking(move || check_database(&path, &m))
        .await
        .map_err(|e| SnapshotError::Task(e.to_string()))??;
    raw.keep()
        .map_err(|e| SnapshotError::io("keeping", &e.path, e.error))
}

/// Streams the snapshot's data through the unpacking pipeline into `raw`, then judges what
/// arrived against the manifest: its size, its hash, then its decompression.
async fn download(
    store: &Store,
    manifest: &Manifest,
    raw: &Path,
    progress: Progress<'_>,
) -> Result<(), SnapshotError> {
    // One byte more than promised is enough to know the promise was broken.
    let cap = manifest.raw_size.saturating_add(1);
    let (mut feed, unpacking) =
        unpack::start(raw, cap).map_err(|e| SnapshotError::io("creating", raw, e))?;
    let got = store
        .get_into(&manifest.data_name(), &mut feed, manifest.size, progress)
        .await;
    drop(feed);
    // The file's own failure (a full disk) is what stopped a download it interrupted.
    let unpacked = unpacking
        .await
        .map_err(|e| SnapshotError::Task(e.to_string()))?
        .map_err(|e| SnapshotError::io("writing", raw, e))?;
    let got = got.map_err(|e| match e {
        super::store::StoreError::TooLarge { size, .. } => corrupt(
            manifest,
            format!("{size} bytes arrived, the manifest says {}", manifest.size),
        ),
        e => SnapshotError::Store(e),
    })?;
    judge(manifest, got, &unpacked)
}

/// Whether what arrived is what the manifest describes.
fn judge(manifest: &Manifest, got: u64, unpacked: &Unpacked) -> Result<(), SnapshotError> {
    if got != manifest.size {
        return Err(corrupt(
            manifest,
            format!("truncated: {got} of the manifest's {} bytes", manifest.size),
        ));
    }
    if unpacked.sha256 != manifest.sha256 {
        return Err(corrupt(
            manifest,
            format!(
                "SHA-256 {} does not match the manifest's {}",
                unpacked.sha256, manifest.sha256
            ),
        ));
    }
    if let Some(why) = &unpacked.damaged {
        return Err(corrupt(manifest, format!("cannot decompress: {why}")));
    }
    if unpacked.written != manifest.raw_size {
        return Err(corrupt(
            manifest,
            format!(
                "decompresses to {} bytes, the manifest says {}",
                unpacked.written, manifest.raw_size
            ),
        ));
    }
    Ok(())
}

fn check_database(raw: &Path, manifest: &Manifest) -> Result<(), SnapshotError> {
    let bad = |reason: String| corrupt(manifest, reason);
    let conn = Connection::open_with_flags(
        raw,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| bad(format!("not a database: {e}")))?;
    let verdict: Vec<String> = {
        let mut stmt = conn
            .prepare("PRAGMA integrity_check(20)")
            .map_err(|e| bad(format!("not a database: {e}")))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| bad(format!("integrity check failed to run: {e}")))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| bad(format!("integrity check failed to run: {e}")))?
    };
    if verdict != ["ok"] {
        return Err(bad(format!("integrity check: {}", verdict.join("; "))));
    }
    // Snapshots of format 1 record `__harmonylite__applied` instead of the floors.
    for tables in [&[FLOORS, LEGACY_APPLIED][..], &[TRACKED]] {
        let found: Option<i64> = conn
            .query_row(
                &format!(
                    "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name IN ({})",
                    vec!["?"; tables.len()].join(", ")
                ),
                rusqlite::params_from_iter(tables.iter()),
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| bad(e.to_string()))?;
        let table = tables[0];
        if found.is_none() {
            return Err(bad(format!(
                "table {table} is missing: not a HarmonyLite snapshot"
            )));
        }
    }
    Ok(())
}

fn corrupt(manifest: &Manifest, reason: String) -> SnapshotError {
    SnapshotError::Corrupt {
        id: manifest.id.clone(),
        reason,
    }
}

/// Reads and parses one manifest from the store.
pub async fn read_manifest(store: &Store, name: &str) -> Result<Manifest, SnapshotError> {
    let bytes = store
        .get_bytes(name, super::manifest::MAX_MANIFEST_BYTES as u64)
        .await?;
    Manifest::parse(&bytes).map_err(|source| SnapshotError::Manifest {
        name: name.to_owned(),
        source,
    })
}
