//! Signed snapshots on real files and the local-directory store: what a node with keys lists,
//! restores and refuses (before any download), how rotation goes, what pruning keeps, and the
//! size bounds judged from the manifest alone.

use std::path::Path;

use super::SnapshotError;
use super::history::{self, LATEST};
use super::restore::{Needs, restore_from};
use super::store::Store;
use super::tests::{Fixture, dump, publish_snapshot, source_node};
use super::verify;
use crate::config::{Config, KeyList, Secret};
use crate::db::WriterHandle;
use crate::ids::NodeId;
use crate::metrics::Metrics;

const KEY: &str = "cluster-key-0123456789abcdef0123456789abcdef";
const OTHER: &str = "someone-else-0123456789abcdef0123456789abcd";
const T0: u64 = 1_764_000_000_000;

fn with_keys(mut cfg: Config, keys: &[&str]) -> Config {
    let keys = keys.iter().map(|k| k.to_string()).collect();
    cfg.snapshot.signing_key = Secret::new(KeyList::new(keys));
    cfg
}

/// Rewrites snapshot `id`'s manifest in the fs store (and `latest.json` when it names `id`).
fn rewrite_manifest(cfg: &Config, id: &str, change: impl Fn(&mut serde_json::Value)) {
    let dir = Path::new(&cfg.snapshot.fs.path);
    for name in [super::manifest::manifest_name(id), LATEST.to_owned()] {
        let path = dir.join(name);
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if json["id"] == id {
            change(&mut json);
            std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        }
    }
}

fn refused(metrics: &Metrics, reason: &str) -> u64 {
    metrics.snapshot_refused.with_label_values(&[reason]).get()
}

#[tokio::test]
async fn a_node_with_keys_restores_only_authentic_snapshots() {
    let fx = Fixture::new();
    let (src, _w) = source_node(&fx).await;
    let signer = Store::open(&with_keys(src.clone(), &[KEY]), None)
        .await
        .unwrap();
    let unsigned = Store::open(&src, None).await.unwrap();
    let forger = Store::open(&with_keys(src.clone(), &[OTHER]), None)
        .await
        .unwrap();
    let good = publish_snapshot(&fx, &src, &signer, T0).await;
    publish_snapshot(&fx, &src, &unsigned, T0 + 1000).await;
    publish_snapshot(&fx, &src, &forger, T0 + 2000).await;
    // Signed with the right key, then a floor raised in the store: the MAC no longer matches.
    let tampered = publish_snapshot(&fx, &src, &signer, T0 + 3000).await;
    rewrite_manifest(&src, &tampered.manifest.id, |m| {
        m["sequences"]["harmonylite-changes-0"] = 1_000_000.into();
    });

    let dst = with_keys(fx.config(2), &[KEY]);
    let reader = Store::open(&dst, None).await.unwrap();
    let verdicts: Vec<Option<&str>> = history::list_checked(&reader)
        .await
        .unwrap()
        .iter()
        .map(|l| l.refused.as_ref().map(|r| r.kind()))
        .collect();
    assert_eq!(
        verdicts,
        [
            Some("mismatch"),
            Some("unknown_key"),
            Some("unsigned"),
            None
        ]
    );
    let authentic: Vec<String> = history::list(&reader)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(authentic, std::slice::from_ref(&good.manifest.id));

    let writer = WriterHandle::spawn(&dst.db_path, NodeId(2), vec![]).unwrap();
    let metrics = Metrics::new(&Default::default(), NodeId(2)).unwrap();
    let (restored, _) = restore_from(&reader, &dst, &writer, &metrics, &Needs::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(restored.id, good.manifest.id);
    assert_eq!(dump(&dst.db_path), dump(&src.db_path));
    for reason in ["mismatch", "unknown_key", "unsigned"] {
        assert_eq!(refused(&metrics, reason), 1, "{reason}");
    }
    assert_eq!(metrics.snapshot_failures.get(), 3);

    // The same store, read without keys, is what it always was: the newest is taken.
    let plain = fx.config(3);
    let plain_store = Store::open(&plain, None).await.unwrap();
    assert_eq!(history::list(&plain_store).await.unwrap().len(), 4);
}

#[tokio::test]
async fn refused_snapshots_are_never_downloaded_and_the_restore_says_why() {
    let fx = Fixture::new();
    let (src, _w) = source_node(&fx).await;
    let unsigned = Store::open(&src, None).await.unwrap();
    let taken = publish_snapshot(&fx, &src, &unsigned, T0).await;
    // Its data gone: a download would fail as `not found`, not as a refusal.
    std::fs::remove_file(Path::new(&src.snapshot.fs.path).join(taken.manifest.data_name()))
        .unwrap();
    let dst = with_keys(fx.config(2), &[KEY]);
    let reader = Store::open(&dst, None).await.unwrap();
    let writer = WriterHandle::spawn(&dst.db_path, NodeId(2), vec![]).unwrap();
    let metrics = Metrics::new(&Default::default(), NodeId(2)).unwrap();
    let err = restore_from(&reader, &dst, &writer, &metrics, &Needs::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SnapshotError::Unauthentic { ref id, .. } if *id == taken.manifest.id),
        "{err}"
    );
    let text = crate::error::Chain(&err).to_string();
    assert!(
        text.contains(&taken.manifest.id) && text.contains("not signed"),
        "{text}"
    );
    assert!(!text.contains(KEY), "{text}");
    assert_eq!(refused(&metrics, "unsigned"), 1);
}

#[tokio::test]
async fn rotation_signs_with_the_new_key_and_accepts_the_old_until_dropped() {
    let fx = Fixture::new();
    let (src, _w) = source_node(&fx).await;
    let before = Store::open(&with_keys(src.clone(), &[OTHER]), None)
        .await
        .unwrap();
    let during = Store::open(&with_keys(src.clone(), &[KEY, OTHER]), None)
        .await
        .unwrap();
    let after = Store::open(&with_keys(src.clone(), &[KEY]), None)
        .await
        .unwrap();
    let old = publish_snapshot(&fx, &src, &before, T0).await;
    let ids = |list: Vec<super::Manifest>| list.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(
        ids(history::list(&during).await.unwrap()),
        std::slice::from_ref(&old.manifest.id)
    );
    let new = publish_snapshot(&fx, &src, &during, T0 + 1000).await;
    let listed = history::list_checked(&during).await.unwrap();
    let new_key = super::signing::key_id(KEY.as_bytes());
    assert_eq!(listed[0].signed_by(), Some(new_key.as_str()));
    assert!(listed.iter().all(|l| l.refused.is_none()));
    assert_eq!(
        ids(history::list(&after).await.unwrap()),
        std::slice::from_ref(&new.manifest.id)
    );
    let listed = history::list_checked(&after).await.unwrap();
    assert_eq!(
        listed[1].refused.as_ref().map(|r| r.kind()),
        Some("unknown_key")
    );
}

#[tokio::test]
async fn prune_with_keys_keeps_authentic_snapshots_despite_forged_newer_ones() {
    let fx = Fixture::new();
    let (src, _w) = source_node(&fx).await;
    let signer = Store::open(&with_keys(src.clone(), &[KEY]), None)
        .await
        .unwrap();
    let forger = Store::open(&with_keys(src.clone(), &[OTHER]), None)
        .await
        .unwrap();
    let a1 = publish_snapshot(&fx, &src, &signer, T0).await.manifest.id;
    let forged_old = publish_snapshot(&fx, &src, &forger, T0 + 500)
        .await
        .manifest
        .id;
    let a2 = publish_snapshot(&fx, &src, &signer, T0 + 1000)
        .await
        .manifest
        .id;
    let a3 = publish_snapshot(&fx, &src, &signer, T0 + 2000)
        .await
        .manifest
        .id;
    // Dated far ahead: unchecked, it would count as the newest and push a2 out.
    let forged_new = publish_snapshot(&fx, &src, &forger, T0 + 9_000_000)
        .await
        .manifest
        .id;
    let removed = history::prune(&signer, 2, &a3).await.unwrap();
    assert_eq!(removed, 2, "a1 and the forged snapshot older than a2");
    let left: Vec<String> = history::list_checked(&signer)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.manifest.id)
        .collect();
    assert_eq!(left, [forged_new, a3, a2]);
    assert!(!left.contains(&a1) && !left.contains(&forged_old));
}

#[tokio::test]
async fn sizes_are_judged_from_the_manifest_before_any_download() {
    let fx = Fixture::new();
    let (src, _w) = source_node(&fx).await;
    let store = Store::open(&src, None).await.unwrap();
    let taken = publish_snapshot(&fx, &src, &store, T0).await;
    std::fs::remove_file(Path::new(&src.snapshot.fs.path).join(taken.manifest.data_name()))
        .unwrap();
    let mut limits = fx.limits("dl");
    limits.max_bytes = taken.manifest.raw_size - 1;
    let err = verify::fetch_verified(&store, &taken.manifest, &limits, &|_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, SnapshotError::TooLarge { .. }), "{err}");
    let mut huge = taken.manifest.clone();
    huge.raw_size = 1 << 52;
    limits.max_bytes = u64::MAX;
    let err = verify::fetch_verified(&store, &huge, &limits, &|_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, SnapshotError::NoRoom { .. }), "{err}");

    // A restore refuses a manifest that claims more than snapshot.max_size_mb, and counts it.
    store.delete(&taken.manifest.manifest_name()).await.unwrap();
    let second = publish_snapshot(&fx, &src, &store, T0 + 1000).await;
    rewrite_manifest(&src, &second.manifest.id, |m| {
        m["raw_size"] = (2u64 << 20).into();
    });
    let dst = fx.config(2);
    let writer = WriterHandle::spawn(&dst.db_path, NodeId(2), vec![]).unwrap();
    let metrics = Metrics::new(&Default::default(), NodeId(2)).unwrap();
    let mut small = dst.clone();
    small.snapshot.max_size_mb = 1;
    let err = restore_from(&store, &small, &writer, &metrics, &Needs::default())
        .await
        .unwrap_err();
    assert_eq!(refused(&metrics, "too_large"), 1, "{err}");
    let text = crate::error::Chain(&err).to_string();
    assert!(text.contains("snapshot.max_size_mb"), "{text}");
}
