//! Resource faults: the database's file system filling up during capture and during apply, and
//! the application holding the database locked for a long time while remote changes arrive.
//!
//! The full file system is a small tmpfs mounted by the test (root only, as scripts/test.sh runs
//! on CI; without the permission the test fails and says why). Only the faulty node's database directory is on it:
//! the NATS server is an external one on the normal disk, so what fills up is SQLite's, not
//! JetStream's. The node under the fault runs as the real binary, so its log (the operator's
//! view) can be read and a fatal exit would show as one.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;
use rusqlite::{Connection, ErrorCode};
use tempfile::TempDir;

use crate::common::poll::poll;
use crate::harness::nats::NatsServer;
use crate::harness::node::NodeProcess;
use crate::harness::{AppDb, Node, converged, eventually, test_config};

// Generous: CI shares two cores between the build and every process of the test.
const CONVERGE: Duration = Duration::from_secs(45);

const ITEMS: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, body BLOB NOT NULL);";

/// A tmpfs of a fixed size, unmounted (lazily, so a file still open does not block it) when
/// dropped.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes`, or says why it cannot (not root, no mount permission).
    fn mount(bytes: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with `filler` until it is full; returns the bytes written.
    fn fill(&self, filler: &Path) -> u64 {
        let mut file = std::fs::File::create(filler).unwrap();
        let block = vec![0xa5u8; 16 * 1024];
        let mut written = 0;
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", filler.display()),
            }
        }
        // Page-sized writes leave a partial page behind; take it too.
        for _ in 0..4096 {
            match file.write(&[0]) {
                Ok(1) => written += 1,
                _ => break,
            }
        }
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The test's tmpfs; panics, saying why, when it cannot be mounted.
fn tmpfs(bytes: u64) -> Tmpfs {
    Tmpfs::mount(bytes).unwrap_or_else(|reason| {
        panic!(
            "this test needs a small tmpfs and cannot mount one ({reason}): run it as root \
             (CI runs scripts/test.sh as root) or in a container allowed to mount"
        )
    })
}

/// The config of a process node whose database (and sequence map) live in `db_dir` and whose
/// other files live in `dir`, connected to an external server.
fn process_config(dir: &Path, db_dir: &Path, node_id: u64, nats_url: &str) -> String {
    format!(
        "db_path = {:?}\nnode_id = {node_id}\nseq_map_path = {:?}\ndata_dir = {:?}\n\
         polling_interval = 50\ncleanup_interval = 200\n\
         [nats]\nurls = [{nats_url:?}]\n[snapshot]\nenabled = false\n",
        db_dir.join(format!("node{node_id}.db")),
        db_dir.join(format!("seq-map-{node_id}.cbor")),
        dir.join(format!("data-{node_id}")),
    )
}

/// An in-process node on the normal disk, connected to `server`.
async fn start_peer(dir: &Path, node_id: u64, server: &NatsServer) -> Node {
    let mut cfg = test_config(dir, node_id);
    cfg.nats.urls = vec![server.url()];
    AppDb::open(&cfg.db_path).exec(ITEMS);
    Node::start(cfg, EmbeddedOptions::default()).await
}

fn integrity(db: &Path) -> String {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Waits until both databases hold the same items, `want` of them.
async fn wait_items(what: &str, a: &AppDb, b: &AppDb, want: i64) {
    wait_items_within(what, a, b, want, CONVERGE).await
}

async fn wait_items_within(what: &str, a: &AppDb, b: &AppDb, want: i64, deadline: Duration) {
    eventually(what, deadline, async || {
        let (na, nb) = (a.count("items"), b.count("items"));
        if na == want && nb == want {
            converged(&[a, b], &["items"])
        } else {
            Err(format!("{na} and {nb} of {want} rows"))
        }
    })
    .await;
}

/// The application's connection: writes that may fail return their error, as they would to
/// the application.
fn app_conn(db: &Path) -> Connection {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

fn insert(conn: &Connection, id: i64, bytes: usize) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO items VALUES (?1, ?2)",
        rusqlite::params![id, vec![(id % 251) as u8; bytes]],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_during_capture_fails_the_app_write_and_recovers() {
    let fs = tmpfs(4 << 20);
    let _permit = crate::harness::CLUSTERS.acquire().await.unwrap();
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let db_a = fs.path().join("node1.db");
    AppDb::open(&db_a).exec(ITEMS);
    let mut a = NodeProcess::spawn(
        dir.path(),
        1,
        &process_config(dir.path(), fs.path(), 1, &server.url()),
        &[],
    );
    a.wait_ready().await;
    let b = start_peer(dir.path(), 2, &server).await;
    let (app_a, app_b) = (AppDb::open(&db_a), b.app_db());

    let conn = app_conn(&db_a);
    for id in 0..20 {
        insert(&conn, id, 1000).unwrap();
    }
    wait_items("rows before the disk fills", &app_a, &app_b, 20).await;

    // Fill the disk, then write until SQLite has no room left for the WAL to grow.
    let filler = fs.path().join("filler");
    fs.fill(&filler);
    let mut next = 20;
    let full = loop {
        match insert(&conn, next, 4000) {
            Ok(_) => next += 1,
            Err(e) => break e,
        }
        assert!(next < 2000, "the full file system kept taking writes");
    };
    assert_eq!(
        full.sqlite_error_code(),
        Some(ErrorCode::DiskFull),
        "the application sees SQLITE_FULL, got {full}"
    );
    // Whatever was committed before the disk filled still replicates.
    let committed = next;
    wait_items(
        "rows committed before the disk filled",
        &app_a,
        &app_b,
        committed,
    )
    .await;
    assert_eq!(integrity(&db_a), "ok");
    assert!(a.exited().is_none(), "node exited:\n{}", a.log());

    std::fs::remove_file(&filler).unwrap();
    for id in committed..committed + 50 {
        insert(&conn, id, 1000).unwrap();
    }
    wait_items("rows after space is back", &app_a, &app_b, committed + 50).await;
    assert_eq!(integrity(&db_a), "ok");
    assert!(a.exited().is_none(), "node exited:\n{}", a.log());
    drop(conn);
    assert!(matches!(b.stop().await, Outcome::Stopped));
    a.signal(libc::SIGTERM);
    assert_eq!(
        a.exit_code(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        a.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_during_apply_retries_without_loss_and_catches_up() {
    let fs = tmpfs(4 << 20);
    let _permit = crate::harness::CLUSTERS.acquire().await.unwrap();
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let a = start_peer(dir.path(), 1, &server).await;
    let db_b = fs.path().join("node2.db");
    AppDb::open(&db_b).exec(ITEMS);
    let mut b = NodeProcess::spawn(
        dir.path(),
        2,
        &process_config(dir.path(), fs.path(), 2, &server.url()),
        &[],
    );
    b.wait_ready().await;
    let (app_a, app_b) = (a.app_db(), AppDb::open(&db_b));
    let conn = app_conn(&a.cfg.db_path);
    for id in 0..20 {
        insert(&conn, id, 1000).unwrap();
    }
    wait_items("rows before the disk fills", &app_a, &app_b, 20).await;

    // B's disk fills; A then writes about a quarter of the tmpfs: nothing of it fits until
    // the filler goes, all of it fits after.
    let filler = fs.path().join("filler");
    fs.fill(&filler);
    let rows = 20 + 250;
    for chunk in (20..rows).collect::<Vec<_>>().chunks(50) {
        let tx = conn.unchecked_transaction().unwrap();
        for id in chunk {
            insert(&tx, *id, 4000).unwrap();
        }
        tx.commit().unwrap();
    }
    let failed = eventually("B reports the failed apply", CONVERGE, async || {
        let log = b.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("database or disk is full"))
            .collect();
        match lines.first() {
            Some(line) => Ok(line.to_string()),
            None => Err(format!("{} log lines", log.lines().count())),
        }
    })
    .await;
    println!("B logged: {failed}");
    assert!(app_b.count("items") < rows, "B cannot hold every row");
    assert_eq!(integrity(&db_b), "ok");

    // Space is back: B catches up on its own (restarted if it gave up, as systemd would).
    std::fs::remove_file(&filler).unwrap();
    // B either keeps running or exits soon; give it 5 s to show which.
    if let Ok(status) = poll(Duration::from_secs(5), async || b.exited().ok_or(())).await {
        println!("B exited on the full disk ({status}); restarting it as systemd would");
        b.restart().unwrap();
        b.wait_ready().await;
    }
    let freed = Instant::now();
    wait_items_within("B caught up", &app_a, &app_b, rows, CONVERGE).await;
    println!("B caught up {:?} after space was freed", freed.elapsed());
    assert_eq!(integrity(&db_b), "ok");
    drop(conn);
    assert!(matches!(a.stop().await, Outcome::Stopped));
    b.signal(libc::SIGTERM);
    assert_eq!(
        b.exit_code(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        b.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "slow-tests"),
    ignore = "slow (15 s); cargo test --features slow-tests"
)]
async fn a_long_application_lock_delays_apply_without_loss() {
    const HOLD: Duration = Duration::from_secs(15);
    let _permit = crate::harness::CLUSTERS.acquire().await.unwrap();
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let a = start_peer(dir.path(), 1, &server).await;
    let b = start_peer(dir.path(), 2, &server).await;
    let (app_a, app_b) = (a.app_db(), b.app_db());
    let conn = app_conn(&a.cfg.db_path);
    insert(&conn, 0, 100).unwrap();
    wait_items("first row", &app_a, &app_b, 1).await;

    // The application on B takes the write lock and sits on it, longer than the writer's busy
    // timeout, while A keeps writing.
    let locker = app_conn(&b.cfg.db_path);
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked_at = Instant::now();
    for id in 1..=200 {
        insert(&conn, id, 100).unwrap();
    }
    // The lock is held for HOLD on purpose (time must pass, this waits for no condition); B's
    // readers are checked meanwhile.
    while locked_at.elapsed() < HOLD {
        assert_eq!(
            app_b_count_stale(&b.cfg.db_path),
            1,
            "applied under the lock"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    locker.execute_batch("COMMIT").unwrap();
    let released = Instant::now();
    wait_items("rows after the lock is released", &app_a, &app_b, 201).await;
    println!("caught up {:?} after a {HOLD:?} lock", released.elapsed());
    assert_eq!(integrity(&b.cfg.db_path), "ok");
    drop(conn);
    drop(locker);
    assert!(matches!(b.stop().await, Outcome::Stopped));
    assert!(matches!(a.stop().await, Outcome::Stopped));
}

/// Rows B's readers see while the lock is held (WAL readers are not blocked by it).
fn app_b_count_stale(db: &Path) -> i64 {
    let conn = Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .unwrap()
}

/// The snapshot staging directory (`<data_dir>/snapshots`) fills up while the leader copies the
/// database: the snapshot fails with a clear error and is retried; nothing partial is left or
/// uploaded; the database is untouched; once space is back the retry uploads a sound snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_during_snapshot_fails_cleanly_and_the_retry_succeeds() {
    let fs = tmpfs(4 << 20);
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut cfg = test_config(dir.path(), 1);
    cfg.nats.urls = vec![server.url()];
    cfg.data_dir = Some(fs.path().join("data"));
    cfg.snapshot.enabled = true;
    cfg.snapshot.store = harmonylite::config::SnapshotStore::Fs;
    cfg.snapshot.fs.path = store.to_string_lossy().into_owned();
    // Due one second after this node leads (the store holds none yet).
    cfg.snapshot.interval = 1000;
    cfg.snapshot.leader_ttl = 1000;
    let app = app_conn(&cfg.db_path);
    app.execute_batch(ITEMS).unwrap();
    // About 3 MB of rows: the copy cannot fit once the file system is nearly full.
    for id in 0..300 {
        insert(&app, id, 10_000).unwrap();
    }
    let filler = fs.path().join("filler");
    fs.fill(&filler);
    let node = Node::start(cfg.clone(), EmbeddedOptions::default()).await;
    let failures = || {
        node.metric("harmonylite_snapshot_failures_total")
            .unwrap_or(0.0)
    };
    eventually("a snapshot failed on the full disk", CONVERGE, async || {
        if failures() >= 1.0 {
            Ok(())
        } else {
            Err(failures())
        }
    })
    .await;
    let staged: Vec<_> = std::fs::read_dir(fs.path().join("data/snapshots"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(staged.is_empty(), "a failed snapshot left {staged:?}");
    let uploaded = std::fs::read_dir(&store).map(|d| d.count()).unwrap_or(0);
    assert_eq!(uploaded, 0, "nothing reached the store");
    assert_eq!(integrity(&cfg.db_path), "ok");

    std::fs::remove_file(&filler).unwrap();
    eventually("the retry uploaded a snapshot", CONVERGE, async || {
        if store.join("latest.json").exists() {
            Ok(())
        } else {
            Err(failures())
        }
    })
    .await;
    assert_eq!(integrity(&cfg.db_path), "ok");
    assert!(matches!(node.stop().await, Outcome::Stopped));
}
