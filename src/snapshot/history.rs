//! The snapshots a store holds: listing them with their manifests, publishing a new one in the
//! safe order, and pruning old ones.
//!
//! Publishing order: the data, then its manifest, then `latest.json`. A reader that follows
//! the pointer always finds a complete snapshot, and a crash part-way leaves at worst an
//! orphan that the next prune removes. Pruning never deletes what `latest.json` names.

use crate::error::Chain;
use std::collections::BTreeSet;

use tracing::{info, warn};

use super::SnapshotError;
use super::create::Taken;
use super::manifest::{Manifest, id_of_manifest_name};
use super::store::{Progress, Store};
use super::verify::read_manifest;

/// The pointer to the newest snapshot: a copy of its manifest.
pub const LATEST: &str = "latest.json";

/// Manifests in the store, newest first; unreadable ones are logged and left out.
pub async fn list(store: &Store) -> Result<Vec<Manifest>, SnapshotError> {
    let names = store.list().await?;
    let ids = manifest_ids(&names);
    let mut manifests = Vec::with_capacity(ids.len());
    for id in ids {
        let name = super::manifest::manifest_name(id);
        match read_manifest(store, &name).await {
            Ok(m) if m.id == id => manifests.push(m),
            Ok(m) => {
                warn!(store = store.describe(), %name, inner = %m.id, "manifest names another snapshot; ignored")
            }
            Err(error) => {
                warn!(store = store.describe(), error = %Chain(&error), "unreadable manifest ignored")
            }
        }
    }
    Ok(manifests)
}

/// Ids of the snapshots whose manifests are among `names`, newest first.
fn manifest_ids(names: &[String]) -> Vec<&str> {
    let mut ids: Vec<&str> = names
        .iter()
        .filter_map(|n| id_of_manifest_name(n))
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids
}

/// The snapshots to try for a restore, best first: the one `latest.json` names, then the
/// others newest first.
pub async fn candidates(store: &Store) -> Result<Vec<Manifest>, SnapshotError> {
    let mut out = Vec::new();
    match read_manifest(store, LATEST).await {
        Ok(m) => out.push(m),
        Err(SnapshotError::Store(super::store::StoreError::NotFound { .. })) => {}
        Err(error) => {
            warn!(store = store.describe(), error = %Chain(&error), "latest.json unreadable; using the history")
        }
    }
    for m in list(store).await? {
        if !out.iter().any(|o| o.id == m.id) {
            out.push(m);
        }
    }
    Ok(out)
}

/// Uploads a taken snapshot and moves the pointer to it.
pub async fn publish(
    store: &Store,
    taken: &Taken,
    progress: Progress<'_>,
) -> Result<(), SnapshotError> {
    let m = &taken.manifest;
    store
        .put_file(&m.data_name(), &taken.file, progress)
        .await?;
    store.put_bytes(&m.manifest_name(), m.to_json()).await?;
    store.put_bytes(LATEST, m.to_json()).await?;
    Ok(())
}

/// Deletes all but the newest `keep` snapshots (and data files no manifest names). Never the
/// one `latest` names.
pub async fn prune(store: &Store, keep: usize, latest: &str) -> Result<usize, SnapshotError> {
    let names = store.list().await?;
    let ids = manifest_ids(&names);
    let kept: BTreeSet<&str> = ids
        .iter()
        .copied()
        .take(keep.max(1))
        .chain(std::iter::once(latest))
        .collect();
    let mut removed = 0;
    for id in ids.iter().filter(|id| !kept.contains(*id)) {
        store.delete(&format!("{id}.db.zst")).await?;
        store.delete(&super::manifest::manifest_name(id)).await?;
        removed += 1;
    }
    // Data without a manifest: an upload that died before its manifest, older than the
    // newest kept snapshot (a newer one may be uploading right now).
    let newest = ids.first().copied().unwrap_or(latest);
    for name in &names {
        if let Some(id) = name.strip_suffix(".db.zst")
            && !ids.contains(&id)
            && id < newest
        {
            store.delete(name).await?;
            removed += 1;
        }
    }
    if removed > 0 {
        info!(
            store = store.describe(),
            removed, keep, "pruned old snapshots"
        );
    }
    Ok(removed)
}
