//! The restore's promises on real files: nothing the application writes during a restore is
//! lost or left uncaptured, an older pending local value loses to the snapshot's newer one, a
//! snapshot merged into a database that holds data keeps the newer row of every key and never
//! moves a floor back, and one with another schema is refused unless the operator forces a
//! replace.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::create;
use super::tests::{Fixture, SCHEMA, dump, publish_snapshot, remote_row, source_node};
use crate::apply::ApplyWork;
use crate::db::restore::RestoreMode;
use crate::db::testutil::{count, open_writer};
use crate::db::{DbError, Reader, WriterHandle};
use crate::ids::NodeId;
use crate::position::{Position, StreamPosition};
use crate::snapshot::store::Store;

/// A snapshot of node 1 (floor 42 on shard 0), downloaded next to the fixture.
async fn snapshot_file(fx: &Fixture) -> std::path::PathBuf {
    let (src, _w) = source_node(fx).await;
    let store = Store::open(&src, None).await.unwrap();
    let taken = publish_snapshot(fx, &src, &store, 1_764_000_000_000).await;
    super::verify::fetch_verified(&store, &taken.manifest, &fx.limits("dl"), &|_, _| {})
        .await
        .unwrap()
}

/// Node 2 with capture and `schema`.
async fn node2(fx: &Fixture, schema: &str) -> (crate::config::Config, WriterHandle) {
    let dst = fx.config(2);
    open_writer(&dst.db_path).execute_batch(schema).unwrap();
    let writer = WriterHandle::spawn(&dst.db_path, NodeId(2), vec![]).unwrap();
    writer.install_capture().await.unwrap();
    (dst, writer)
}

/// Node 2 with a row applied at stream sequence 50, and a snapshot whose floor is 42.
async fn node2_at_floor_50() -> (Fixture, std::path::PathBuf, WriterHandle) {
    let fx = Fixture::new();
    let file = snapshot_file(&fx).await;
    let (_dst, writer) = node2(&fx, SCHEMA).await;
    let now = crate::hlc::now_ms() << 16;
    writer
        .apply(remote_row(5, "applied here", now, 50))
        .await
        .unwrap();
    (fx, file, writer)
}

/// A fresh copy of the snapshot file (a restore consumes its file).
fn copy_of(fx: &Fixture, file: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = fx.dir.path().join(name);
    std::fs::copy(file, &path).unwrap();
    path
}

/// The merge of a snapshot taken by node 1.
fn merge() -> RestoreMode {
    RestoreMode::Merge {
        taker: NodeId(1),
        horizon_ms: None,
    }
}

fn floor_of(restored: &crate::db::restore::RestoreReport, stream: &str) -> Option<u64> {
    restored.sequences.get(stream).map(|s| s.0)
}

/// A gapped node (floor 11 on shard 0, which the snapshot covers up to 42) keeps what it holds
/// on shard 1 (floor 70, where the snapshot knows nothing) and its newer row of key 100.
#[tokio::test]
async fn a_merge_raises_floors_and_keeps_the_newer_row_of_each_key() {
    let fx = Fixture::new();
    let file = snapshot_file(&fx).await;
    let (dst, writer) = node2(&fx, SCHEMA).await;
    let now = crate::hlc::now_ms();
    writer
        .apply(remote_row(5, "applied here", now << 16, 10))
        .await
        .unwrap();
    writer
        .apply(remote_row(100, "newer here", (now + 10_000) << 16, 11))
        .await
        .unwrap();
    writer
        .apply(ApplyWork::positions(vec![StreamPosition {
            stream: "harmonylite-changes-1".into(),
            incarnation: "inc".into(),
            position: Position::at(70),
        }]))
        .await
        .unwrap();
    let restored = writer.restore(file, merge()).await.unwrap();
    let merged = restored.merged.clone().expect("merged, not replaced");
    assert_eq!(
        merged.applied, 3,
        "node 1's rows 1..=3; its key 100 is older"
    );
    assert_eq!(floor_of(&restored, "harmonylite-changes-0"), Some(42));
    assert_eq!(floor_of(&restored, "harmonylite-changes-1"), Some(70));
    assert_eq!(
        dump(&dst.db_path),
        vec![
            (1, "local".into()),
            (2, "local".into()),
            (3, "local".into()),
            (5, "applied here".into()),
            (100, "newer here".into()),
        ]
    );
    let mut reader = Reader::open(&dst.db_path).unwrap();
    let pending = reader.scan(NodeId(2), usize::MAX).unwrap();
    assert_eq!(
        pending.row_count(),
        0,
        "merged rows are not node 2's to publish"
    );
}

/// A snapshot older than the database (floor 42 against 50) takes nothing away.
#[tokio::test]
async fn an_older_snapshot_moves_no_floor_back() {
    let (fx, file, writer) = node2_at_floor_50().await;
    let restored = writer.restore(file, merge()).await.unwrap();
    assert_eq!(floor_of(&restored, "harmonylite-changes-0"), Some(50));
    let rows = dump(&fx.config(2).db_path);
    assert!(rows.contains(&(5, "applied here".into())), "{rows:?}");
    assert!(rows.contains(&(100, "remote".into())), "{rows:?}");
}

#[tokio::test]
async fn another_schema_is_refused_and_a_forced_restore_replaces() {
    let (fx, file, writer) = node2_at_floor_50().await;
    let forced = writer
        .restore(copy_of(&fx, &file, "b.db"), RestoreMode::Replace)
        .await
        .unwrap();
    assert_eq!(floor_of(&forced, "harmonylite-changes-0"), Some(42));
    let rows = dump(&fx.config(2).db_path);
    assert!(!rows.iter().any(|(id, _)| *id == 5), "replaced: {rows:?}");

    let fx = Fixture::new();
    let file = snapshot_file(&fx).await;
    let (dst, writer) = node2(&fx, &format!("{SCHEMA} CREATE TABLE extra(x);")).await;
    open_writer(&dst.db_path)
        .execute("INSERT INTO t VALUES (1, 'mine')", [])
        .unwrap();
    let err = writer.restore(file, merge()).await.unwrap_err();
    assert!(
        matches!(&err, DbError::RestoreRefused { reason } if reason.contains("schema")),
        "{err}"
    );
}

#[tokio::test]
async fn an_older_pending_value_loses_to_the_snapshot() {
    let fx = Fixture::new();
    let (dst, writer) = node2(&fx, SCHEMA).await;
    // Node 2 writes key 100 first; node 1 holds a newer version of it in the snapshot.
    open_writer(&dst.db_path)
        .execute("INSERT INTO t VALUES (100, 'older here')", [])
        .unwrap();
    let (src, src_writer) = source_node(&fx).await;
    let newer = (crate::hlc::now_ms() + 10_000) << 16;
    src_writer
        .apply(remote_row(100, "newer in the snapshot", newer, 43))
        .await
        .unwrap();
    let store = Store::open(&src, None).await.unwrap();
    let taken = publish_snapshot(&fx, &src, &store, 1_764_000_000_000).await;
    let file = super::verify::fetch_verified(&store, &taken.manifest, &fx.limits("dl"), &|_, _| {})
        .await
        .unwrap();
    writer.restore(file, merge()).await.unwrap();
    let rows = dump(&dst.db_path);
    assert!(
        rows.contains(&(100, "newer in the snapshot".into())),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_writes_during_a_restore_are_kept_and_captured() {
    let fx = Fixture::new();
    let file = snapshot_file(&fx).await;
    let (dst, writer) = node2(&fx, SCHEMA).await;
    let stop = Arc::new(AtomicBool::new(false));
    let app = {
        let (path, stop) = (dst.db_path.clone(), stop.clone());
        std::thread::spawn(move || {
            let conn = open_writer(&path);
            let mut id = 1000;
            while !stop.load(Ordering::Relaxed) || id < 1050 {
                conn.execute("INSERT INTO t VALUES (?1, 'during')", [id])
                    .unwrap();
                id += 1;
            }
            id - 1000
        })
    };
    // Let the application get going, then restore while it writes.
    while count(&open_writer(&dst.db_path), "SELECT count(*) FROM t") < 20 {
        std::thread::yield_now();
    }
    writer.restore(file, merge()).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let written = app.join().unwrap();
    let conn = open_writer(&dst.db_path);
    let kept = count(&conn, "SELECT count(*) FROM t WHERE v = 'during'");
    assert_eq!(kept, written, "every application write is in the database");
    crate::db::testutil::fold_all(&conn);
    let uncaptured = count(
        &conn,
        "SELECT count(*) FROM t WHERE NOT EXISTS \
         (SELECT 1 FROM __harmonylite__t_clock c WHERE c.k0 = t.id)",
    );
    assert_eq!(uncaptured, 0, "every row has its clock row");
    // And every one of them waits to be published by node 2.
    let mut reader = Reader::open(&dst.db_path).unwrap();
    let pending = reader.scan(NodeId(2), usize::MAX).unwrap();
    assert_eq!(pending.row_count() as i64, written);
    create::remove_quietly(&fx.dir.path().join("dl"));
}

/// A change stamped in the year 2100 at stream sequence `seq`, for a node whose horizon is now.
fn future_row(id: i64, seq: u64) -> ApplyWork {
    let mut work = remote_row(id, "future", 4_102_444_800_000 << 16, seq);
    work.horizon_ms = Some(crate::hlc::now_ms());
    work
}

/// The keys a node holds in its quarantine.
fn held_keys(db: &std::path::Path) -> Vec<String> {
    let conn = open_writer(db);
    let held = crate::apply::quarantine::list(&conn, 100).unwrap();
    let mut keys: Vec<String> = held.into_iter().map(|q| q.key).collect();
    keys.sort();
    keys
}

/// The changes a snapshot's taker holds lie below its floors: a node that merges or replaces
/// from it holds them too (each once), beside its own, to decide on them as the others do.
#[tokio::test]
async fn a_restore_holds_the_changes_the_snapshot_held() {
    let fx = Fixture::new();
    let (src, src_writer) = source_node(&fx).await;
    src_writer.apply(future_row(7, 43)).await.unwrap();
    assert_eq!(held_keys(&src.db_path), vec!["[7]"]);
    let store = Store::open(&src, None).await.unwrap();
    let taken = publish_snapshot(&fx, &src, &store, 1_764_000_000_000).await;
    let file = super::verify::fetch_verified(&store, &taken.manifest, &fx.limits("dl"), &|_, _| {})
        .await
        .unwrap();

    // A merge into a node that holds key 7's change already, and key 8's of its own.
    let (dst, writer) = node2(&fx, SCHEMA).await;
    writer
        .apply(remote_row(5, "applied here", 1 << 16, 10))
        .await
        .unwrap();
    writer.apply(future_row(7, 43)).await.unwrap();
    writer.apply(future_row(8, 44)).await.unwrap();
    let before = held_keys(&dst.db_path);
    assert_eq!(before, vec!["[7]", "[8]"]);
    writer
        .restore(copy_of(&fx, &file, "m.db"), merge())
        .await
        .unwrap();
    assert_eq!(held_keys(&dst.db_path), before, "each change held once");

    // A replace: the snapshot's change and this node's own.
    let replaced = writer
        .restore(copy_of(&fx, &file, "r.db"), RestoreMode::Replace)
        .await
        .unwrap();
    assert!(replaced.merged.is_none());
    assert_eq!(replaced.held, 0, "node 2 held key 7's change already");
    assert_eq!(held_keys(&dst.db_path), vec!["[7]", "[8]"]);

    // Another change to key 7 (another version) is another held change, not a duplicate.
    let mut other = future_row(7, 45);
    other.batches[0].tables[0].rows[0].version += 1;
    writer.apply(other).await.unwrap();
    writer
        .restore(copy_of(&fx, &file, "o.db"), merge())
        .await
        .unwrap();
    assert_eq!(held_keys(&dst.db_path), vec!["[7]", "[7]", "[8]"]);

    // A merge into a node that held nothing: it holds the snapshot's.
    let fx3 = Fixture::new();
    let (dst3, writer3) = node2(&fx3, SCHEMA).await;
    writer3
        .apply(remote_row(5, "applied here", 1 << 16, 10))
        .await
        .unwrap();
    let merged = writer3.restore(file, merge()).await.unwrap();
    assert_eq!(merged.merged.expect("merged").held, 1);
    assert_eq!(held_keys(&dst3.db_path), vec!["[7]"]);
}
