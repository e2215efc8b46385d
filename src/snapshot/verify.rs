//! Fetching a snapshot and proving it sound before anything uses it: its sizes must fit
//! (`room`, judged before the download starts), the download must have
//! the manifest's size and SHA-256, decompress to exactly the manifest's raw size (which also
//! bounds a decompression bomb), pass `PRAGMA integrity_check` and carry our tables. Anything
//! else is `SnapshotError::Corrupt`, and the file is deleted.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::SnapshotError;
use super::create::{remove_quietly, sha256_file};
use super::manifest::Manifest;
use super::room::{self, Limits};
use super::store::{Progress, Store};
use crate::sql::internal::{FLOORS, LEGACY_APPLIED, TRACKED};

/// Downloads snapshot `manifest` from `store` into `limits.work_dir` and verifies it; returns
/// the path of the decompressed database. Nothing is downloaded when it does not fit `limits`.
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
    let compressed = work_dir.join(format!("restore-{}.db.zst", manifest.id));
    let raw = work_dir.join(format!("restore-{}.db", manifest.id));
    let result = async {
        let got = store
            .get_file(&manifest.data_name(), &compressed, manifest.size, progress)
            .await
            .map_err(|e| match e {
                super::store::StoreError::TooLarge { size, .. } => corrupt(
                    manifest,
                    format!("{size} bytes arrived, the manifest says {}", manifest.size),
                ),
                e => SnapshotError::Store(e),
            })?;
        if got != manifest.size {
            return Err(corrupt(
                manifest,
                format!("truncated: {got} of the manifest's {} bytes", manifest.size),
            ));
        }
        let (compressed, raw, m) = (compressed.clone(), raw.clone(), manifest.clone());
        tokio::task::spawn_blocking(move || check_file(&compressed, &raw, &m))
            .await
            .map_err(|e| SnapshotError::Task(e.to_string()))?
    }
    .await;
    remove_quietly(&compressed);
    if result.is_err() {
        remove_quietly(&raw);
    }
    result.map(|()| raw)
}

/// Hash, decompress and open the downloaded file.
fn check_file(compressed: &Path, raw: &Path, manifest: &Manifest) -> Result<(), SnapshotError> {
    let sha = sha256_file(compressed)?;
    if sha != manifest.sha256 {
        return Err(corrupt(
            manifest,
            format!(
                "SHA-256 {sha} does not match the manifest's {}",
                manifest.sha256
            ),
        ));
    }
    decompress(compressed, raw, manifest)?;
    check_database(raw, manifest)
}

fn decompress(compressed: &Path, raw: &Path, manifest: &Manifest) -> Result<(), SnapshotError> {
    let input = File::open(compressed).map_err(|e| SnapshotError::io("reading", compressed, e))?;
    let decoder = zstd::Decoder::new(BufReader::new(input))
        .map_err(|e| corrupt(manifest, format!("not zstd: {e}")))?;
    let output = File::create(raw).map_err(|e| SnapshotError::io("creating", raw, e))?;
    let mut out = BufWriter::new(output);
    // One byte more than promised is enough to know the promise was broken.
    let mut limited = decoder.take(manifest.raw_size + 1);
    let written = std::io::copy(&mut limited, &mut out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::ENOSPC) {
            SnapshotError::io("writing", raw, e)
        } else {
            corrupt(manifest, format!("cannot decompress: {e}"))
        }
    })?;
    if written != manifest.raw_size {
        return Err(corrupt(
            manifest,
            format!(
                "decompresses to {written} bytes, the manifest says {}",
                manifest.raw_size
            ),
        ));
    }
    out.flush()
        .map_err(|e| SnapshotError::io("writing", raw, e))?;
    out.get_ref()
        .sync_all()
        .map_err(|e| SnapshotError::io("syncing", raw, e))
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
