//! The snapshots a store holds: listing them with their manifests, publishing a new one in the
//! safe order, and pruning old ones.
//!
//! Publishing order: the data, then its manifest, then `latest.json`. A reader that follows
//! the pointer always finds a complete snapshot, and a crash part-way leaves at worst an
//! orphan that the next prune removes. Pruning never deletes what `latest.json` names.
//!
//! With `[snapshot] signing_key` set, every manifest read here is checked (`signing`): `list`
//! and the restore's candidates hold only authentic ones, `list_checked` also the refused ones
//! with why. Publishing signs. Pruning keeps the newest authentic snapshots, and leaves alone a
//! snapshot it cannot authenticate that is newer than them (a forged one must not push the
//! good ones out; a peer's signed with a key this node lacks yet is not this node's to delete).

use crate::error::Chain;
use std::collections::BTreeSet;

use tracing::{info, warn};

use super::SnapshotError;
use super::create::Taken;
use super::manifest::{Manifest, id_of_manifest_name};
use super::signing::SignatureError;
use super::store::{Progress, Store};
use super::verify::read_manifest;

/// The pointer to the newest snapshot: a copy of its manifest.
pub const LATEST: &str = "latest.json";

/// A manifest read from a store, and whether its signature was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub manifest: Manifest,
    /// Why it is not authentic (only with signing keys configured).
    pub refused: Option<SignatureError>,
}

impl Listed {
    fn check(store: &Store, manifest: Manifest) -> Listed {
        let refused = store.keys().verify(&manifest).err();
        Listed { manifest, refused }
    }

    /// The id of the key that signed it, as the manifest claims (checked or not).
    pub fn signed_by(&self) -> Option<&str> {
        let signature = self.manifest.signature.as_deref()?;
        signature.split(':').nth(1)
    }
}

/// Authentic manifests in the store, newest first; unreadable and refused ones are left out
/// (unreadable ones logged).
pub async fn list(store: &Store) -> Result<Vec<Manifest>, SnapshotError> {
    let listed = list_checked(store).await?;
    Ok(listed
        .into_iter()
        .filter(|l| l.refused.is_none())
        .map(|l| l.manifest)
        .collect())
}

/// The object `writable` writes and deletes again.
const PROBE: &str = "harmonylite-probe";

/// Whether the store takes a small write (and its delete): what a store outage stops, and a
/// listing does not always show (a local directory replaced by a file still lists).
pub async fn writable(store: &Store) -> bool {
    store.put_bytes(PROBE, Vec::new()).await.is_ok() && store.delete(PROBE).await.is_ok()
}

/// Readable manifests in the store, newest first, each with its signature's verdict.
pub async fn list_checked(store: &Store) -> Result<Vec<Listed>, SnapshotError> {
    let names = store.list().await?;
    let ids = manifest_ids(&names);
    let mut manifests = Vec::with_capacity(ids.len());
    for id in ids {
        let name = super::manifest::manifest_name(id);
        match read_manifest(store, &name).await {
            Ok(m) if m.id == id => manifests.push(Listed::check(store, m)),
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
/// others newest first; the refused ones among them say why.
pub async fn candidates(store: &Store) -> Result<Vec<Listed>, SnapshotError> {
    let mut out: Vec<Listed> = Vec::new();
    match read_manifest(store, LATEST).await {
        Ok(m) => out.push(Listed::check(store, m)),
        Err(SnapshotError::Store(super::store::StoreError::NotFound { .. })) => {}
        Err(error) => {
            warn!(store = store.describe(), error = %Chain(&error), "latest.json unreadable; using the history")
        }
    }
    for l in list_checked(store).await? {
        if !out.iter().any(|o| o.manifest.id == l.manifest.id) {
            out.push(l);
        }
    }
    Ok(out)
}

/// Uploads a taken snapshot, its manifest signed with the store's first key (if any), and
/// moves the pointer to it; returns the manifest as published.
pub async fn publish(
    store: &Store,
    taken: &Taken,
    progress: Progress<'_>,
) -> Result<Manifest, SnapshotError> {
    let m = store.keys().sign(taken.manifest.clone());
    store
        .put_file(&m.data_name(), &taken.file, progress)
        .await?;
    store.put_bytes(&m.manifest_name(), m.to_json()).await?;
    store.put_bytes(LATEST, m.to_json()).await?;
    Ok(m)
}

/// Deletes all but the newest `keep` snapshots (and data files no manifest names). Never the
/// one `latest` names. With signing keys, only authentic snapshots count towards `keep`, and
/// one that is not authentic is deleted only when older than every kept one.
pub async fn prune(store: &Store, keep: usize, latest: &str) -> Result<usize, SnapshotError> {
    let names = store.list().await?;
    let ids = manifest_ids(&names);
    let checked = store.keys().enabled();
    let authentic: Vec<String> = if checked {
        list(store).await?.into_iter().map(|m| m.id).collect()
    } else {
        Vec::new()
    };
    let counted: Vec<&str> = if checked {
        authentic.iter().map(String::as_str).collect()
    } else {
        ids.clone()
    };
    let kept: BTreeSet<&str> = counted
        .into_iter()
        .take(keep.max(1))
        .chain(std::iter::once(latest))
        .collect();
    let oldest_kept = kept.first().copied().unwrap_or(latest);
    let mut removed = 0;
    let deletable = |id: &str| {
        !kept.contains(id) && (!checked || authentic.iter().any(|a| a == id) || id < oldest_kept)
    };
    for id in ids.iter().filter(|id| deletable(id)) {
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
