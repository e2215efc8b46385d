//! Take → store → verify → restore, on real files and the local-directory store.

use rusqlite::Connection;

use super::restore::{Needs, restore_from};
use super::room::Limits;
use super::store::Store;
use super::{SnapshotError, create, history, verify};
use crate::apply::ApplyWork;
use crate::change::{ChangeBatch, RowChange, TableChanges, Value};
use crate::config::{Config, SnapshotStore};
use crate::db::testutil::{count, open_writer};
use crate::db::{Reader, WriterHandle};
use crate::ids::NodeId;
use crate::metrics::Metrics;
use crate::position::{Position, StreamPosition};

pub(super) const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);";

pub(super) struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn config(&self, node: u64) -> Config {
        let d = self.dir.path();
        let mut cfg = Config {
            db_path: d.join(format!("node{node}.db")),
            node_id: Some(node),
            seq_map_path: Some(d.join(format!("seq-{node}.cbor"))),
            data_dir: Some(d.join(format!("data-{node}"))),
            ..Config::default()
        };
        cfg.snapshot.store = SnapshotStore::Fs;
        cfg.snapshot.fs.path = d.join("store").to_string_lossy().into_owned();
        cfg
    }

    /// Downloads into `<fixture>/<dir>`, bounded as a default configuration bounds them.
    pub fn limits(&self, dir: &str) -> Limits {
        Limits {
            work_dir: self.dir.path().join(dir),
            db_dir: self.dir.path().to_path_buf(),
            max_bytes: Config::default().snapshot.max_size_bytes(),
        }
    }
}

/// A remote row, applied as sequence `seq` of shard 0's stream (the floor moves there).
pub(super) fn remote_row(id: i64, v: &str, version: u64, seq: u64) -> ApplyWork {
    ApplyWork {
        positions: vec![StreamPosition {
            stream: "harmonylite-changes-0".into(),
            incarnation: "inc".into(),
            position: Position::at(seq),
        }],
        horizon_ms: None,
        batches: vec![ChangeBatch {
            origin: NodeId(9),
            schema_hash: String::new(),
            tables: vec![TableChanges {
                table: "t".into(),
                key_columns: vec!["id".into()],
                columns: vec!["id".into(), "v".into()],
                rows: vec![RowChange {
                    version,
                    node: NodeId(9),
                    origin: NodeId(9),
                    deleted: false,
                    key: vec![Value::Integer(id)],
                    values: vec![Value::Integer(id), Value::text(v)],
                }],
            }],
        }],
    }
}

/// A node-1 database with capture, three local rows and one applied remote row (seq 42).
pub(super) async fn source_node(fx: &Fixture) -> (Config, WriterHandle) {
    let cfg = fx.config(1);
    let app = open_writer(&cfg.db_path);
    app.execute_batch(SCHEMA).unwrap();
    let writer = WriterHandle::spawn(&cfg.db_path, NodeId(1), vec![]).unwrap();
    writer.install_capture().await.unwrap();
    for i in 1..=3 {
        app.execute("INSERT INTO t VALUES (?1, 'local')", [i])
            .unwrap();
    }
    let version = crate::hlc::now_ms() << 16;
    writer
        .apply(remote_row(100, "remote", version, 42))
        .await
        .unwrap();
    (cfg, writer)
}

/// Takes a snapshot of node 1's database at `created_ms` and publishes it to `store`.
pub(super) async fn publish_snapshot(
    fx: &Fixture,
    src: &Config,
    store: &Store,
    created_ms: u64,
) -> create::Taken {
    let work = fx.dir.path().join("work");
    let taken = create::take(&src.db_path, &work, NodeId(1), &[], created_ms).unwrap();
    history::publish(store, &taken, &|_, _| {}).await.unwrap();
    taken
}

pub(super) fn dump(path: &std::path::Path) -> Vec<(i64, String)> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Writes rows 5 and 6 that nobody folds: the node's writer is closed first, so they stay in
/// the capture log.
async fn write_unfolded(src: &Config, writer: WriterHandle) {
    writer.close().await.unwrap();
    let app = open_writer(&src.db_path);
    app.execute_batch("INSERT INTO t VALUES (5, 'unfolded'), (6, 'unfolded');")
        .unwrap();
    assert_eq!(
        count(&app, "SELECT count(*) FROM __harmonylite__t_changes"),
        2
    );
}

#[tokio::test]
async fn taken_snapshot_restores_into_a_fresh_database() {
    let fx = Fixture::new();
    let (src, writer) = source_node(&fx).await;
    // The snapshot folds them into its clocks and carries no log record.
    write_unfolded(&src, writer).await;
    let taken = create::take(
        &src.db_path,
        &fx.dir.path().join("work"),
        NodeId(1),
        &[],
        1_764_000_000_000,
    )
    .unwrap();
    let m = &taken.manifest;
    assert_eq!(m.sequences.len(), 1);
    assert_eq!(m.node_id, 1);
    assert!(m.size > 0 && m.raw_size > m.size / 2);
    let store = Store::open(&src, None).await.unwrap();
    history::publish(&store, &taken, &|_, _| {}).await.unwrap();
    let listed = history::list(&store).await.unwrap();
    assert_eq!(listed, vec![m.clone()]);

    // The verified copy has no triggers and no conflict journal, but keeps the clocks.
    let raw = verify::fetch_verified(&store, m, &fx.limits("dl"), &|_, _| {})
        .await
        .unwrap();
    let copy = Connection::open(&raw).unwrap();
    assert_eq!(
        count(
            &copy,
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"
        ),
        0
    );
    assert_eq!(
        count(&copy, "SELECT count(*) FROM __harmonylite__t_clock"),
        6
    );
    assert_eq!(
        count(
            &copy,
            "SELECT count(*) FROM __harmonylite__t_clock WHERE k0 IN (5, 6) AND node = 1"
        ),
        2
    );
    assert_eq!(
        count(&copy, "SELECT count(*) FROM __harmonylite__t_changes"),
        0
    );
    drop(copy);

    // A fresh node restores it and gets capture back.
    let dst = fx.config(2);
    let writer = WriterHandle::spawn(&dst.db_path, NodeId(2), vec![]).unwrap();
    let metrics = Metrics::new(&Default::default(), NodeId(2)).unwrap();
    let restored = restore_from(&store, &dst, &writer, &metrics, &Needs::default())
        .await
        .unwrap();
    assert!(matches!(restored, Some((ref r, _)) if r.id == m.id));
    assert_eq!(dump(&dst.db_path), dump(&src.db_path));
    let seqs = writer.floors().await.unwrap();
    assert_eq!(
        seqs.into_iter()
            .map(|(k, v)| (k, v.0))
            .collect::<std::collections::BTreeMap<_, _>>(),
        m.sequences
    );
    let conn = open_writer(&dst.db_path);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"
        ),
        4
    );
    // Nothing restored counts as a local change to publish; a new write does.
    let mut reader = Reader::open(&dst.db_path).unwrap();
    assert_eq!(reader.scan(NodeId(2), 100).unwrap().row_count(), 0);
    conn.execute("INSERT INTO t VALUES (7, 'after')", [])
        .unwrap();
    assert_eq!(reader.scan(NodeId(2), 100).unwrap().row_count(), 1);
    assert_eq!(seq_file_entries(&dst), 1);
}

fn seq_file_entries(cfg: &Config) -> usize {
    crate::replication::seq_map::load(&cfg.seq_map_path())
        .unwrap()
        .len()
}

#[tokio::test]
async fn unpublished_local_changes_survive_a_restore() {
    let fx = Fixture::new();
    let (src, _w) = source_node(&fx).await;
    let store = Store::open(&src, None).await.unwrap();
    publish_snapshot(&fx, &src, &store, 1_764_000_000_000).await;

    // Node 2 has its own unpublished writes: one new row, one row the snapshot also has.
    let dst = fx.config(2);
    let app = open_writer(&dst.db_path);
    app.execute_batch(SCHEMA).unwrap();
    let writer = WriterHandle::spawn(&dst.db_path, NodeId(2), vec![]).unwrap();
    writer.install_capture().await.unwrap();
    app.execute("INSERT INTO t VALUES (50, 'mine')", [])
        .unwrap();
    app.execute("INSERT INTO t VALUES (2, 'newer here')", [])
        .unwrap();
    let metrics = Metrics::new(&Default::default(), NodeId(2)).unwrap();
    restore_from(&store, &dst, &writer, &metrics, &Needs::default())
        .await
        .unwrap();

    let rows = dump(&dst.db_path);
    assert!(rows.contains(&(50, "mine".into())), "{rows:?}");
    assert!(rows.contains(&(2, "newer here".into())), "{rows:?}");
    assert!(rows.contains(&(100, "remote".into())), "{rows:?}");
    // And they are still waiting to be published.
    let mut reader = Reader::open(&dst.db_path).unwrap();
    let pending = reader.scan(NodeId(2), 100).unwrap();
    assert_eq!(pending.row_count(), 2, "{pending:?}");
}

#[tokio::test]
async fn truncated_or_flipped_snapshots_are_refused_and_the_previous_one_used() {
    let fx = Fixture::new();
    let (src, _w) = source_node(&fx).await;
    let store = Store::open(&src, None).await.unwrap();
    let older = publish_snapshot(&fx, &src, &store, 1_764_000_000_000).await;
    let newer = publish_snapshot(&fx, &src, &store, 1_764_000_001_000).await;
    let data = std::path::Path::new(&src.snapshot.fs.path).join(newer.manifest.data_name());
    let good = std::fs::read(&data).unwrap();
    let dl = fx.dir.path().join("dl");

    std::fs::write(&data, &good[..good.len() / 2]).unwrap();
    let err = verify::fetch_verified(&store, &newer.manifest, &fx.limits("dl"), &|_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    std::fs::write(&data, &flipped).unwrap();
    let err = verify::fetch_verified(&store, &newer.manifest, &fx.limits("dl"), &|_, _| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SHA-256"), "{err}");
    assert_eq!(
        std::fs::read_dir(&dl).unwrap().count(),
        0,
        "refused files are deleted"
    );

    // A restore skips the damaged newest snapshot and takes the older one.
    let dst = fx.config(2);
    let writer = WriterHandle::spawn(&dst.db_path, NodeId(2), vec![]).unwrap();
    let metrics = Metrics::new(&Default::default(), NodeId(2)).unwrap();
    let restored = restore_from(&store, &dst, &writer, &metrics, &Needs::default())
        .await
        .unwrap();
    assert!(matches!(restored, Some((ref m, _)) if m.id == older.manifest.id));
    assert_eq!(dump(&dst.db_path), dump(&src.db_path));
    assert_eq!(
        metrics.snapshot_failures.get(),
        1,
        "the refused snapshot counts"
    );
    assert_eq!(metrics.snapshot_restores.get(), 1);
}

#[tokio::test]
async fn prune_keeps_the_newest() {
    let fx = Fixture::new();
    let (src, _w) = source_node(&fx).await;
    let store = Store::open(&src, None).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..4 {
        let taken = publish_snapshot(&fx, &src, &store, 1_764_000_000_000 + n).await;
        ids.push(taken.manifest.id.clone());
    }
    let removed = history::prune(&store, 2, &ids[3]).await.unwrap();
    assert_eq!(removed, 2);
    let left: Vec<String> = history::list(&store)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, vec![ids[3].clone(), ids[2].clone()]);
    let mut names = store.list().await.unwrap();
    names.sort();
    assert_eq!(
        names.len(),
        5,
        "two snapshots, two manifests and latest.json: {names:?}"
    );
}

/// The download is decompressed as it arrives: at no point of it does the work directory hold
/// the compressed file, only the database growing towards its size.
#[tokio::test]
async fn a_restore_never_stores_the_compressed_file() {
    let fx = Fixture::new();
    let (src, _writer) = source_node(&fx).await;
    // Hex text of random bytes: about 8 MiB that compresses to about half, several chunks.
    let app = open_writer(&src.db_path);
    app.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1000 UNION ALL SELECT i + 1 FROM n WHERE i < 1063)
         INSERT INTO t SELECT i, hex(randomblob(65536)) FROM n;",
    )
    .unwrap();
    let store = Store::open(&src, None).await.unwrap();
    let taken = publish_snapshot(&fx, &src, &store, 1_764_000_000_000).await;
    let m = &taken.manifest;
    assert!(m.size > 3 * 1024 * 1024, "several chunks: {}", m.size);
    let limits = fx.limits("dl");
    let seen = std::sync::Mutex::new(Vec::new());
    let watch = |done: u64, _total: u64| {
        let files: Vec<(String, u64)> = std::fs::read_dir(&limits.work_dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let size = e.metadata().unwrap().len();
                (e.file_name().to_string_lossy().into_owned(), size)
            })
            .collect();
        seen.lock().unwrap().push((done, files));
    };
    let raw = verify::fetch_verified(&store, m, &limits, &watch)
        .await
        .unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(seen.len() >= 3, "progress during the download: {seen:?}");
    for (done, files) in &seen {
        assert!(
            files.iter().all(|(name, _)| !name.ends_with(".zst")),
            "at {done} bytes downloaded the work directory held {files:?}"
        );
        let held: u64 = files.iter().map(|(_, size)| size).sum();
        assert!(held <= m.raw_size, "at {done}: {files:?}");
    }
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), m.raw_size);
    assert_eq!(dump(&raw).len(), 3 + 1 + 64);
}
