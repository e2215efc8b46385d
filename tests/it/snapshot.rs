//! Snapshots end to end: a fresh node restores and catches up, a node behind a trimmed stream
//! restores and converges, one leader at a time with hand-over, `-save-snapshot` and
//! `sleep_timeout` on the real binary.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use harmonylite::config::{Config, SnapshotStore};
use harmonylite::snapshot::history;
use harmonylite::snapshot::store::Store;

use crate::harness::stores::{StoreKind, TestStore};
use crate::harness::{ClosedPort, Cluster, NodeProcess, eventually};

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, n INTEGER);";

/// Snapshot settings shared by every node of a test cluster.
pub fn with_fs_store(cfg: &mut Config, store: &Path) {
    cfg.snapshot.enabled = true;
    cfg.snapshot.store = SnapshotStore::Fs;
    cfg.snapshot.fs.path = store.to_string_lossy().into_owned();
}

fn write_rows(cluster: &Cluster, node: usize, from: i64, count: i64) {
    let mut db = cluster.db(node);
    db.tx(|tx| {
        for id in from..from + count {
            tx.execute(
                "INSERT INTO items VALUES (?1, ?2, ?3)",
                rusqlite::params![id, format!("item {id}"), id * 7],
            )
            .unwrap();
        }
    });
}

/// Waits until the store lists a snapshot; returns the newest.
pub async fn newest_snapshot(store: &Store, deadline: Duration) -> harmonylite::snapshot::Manifest {
    eventually(
        &format!("a snapshot in {}", store.describe()),
        deadline,
        async || match history::list(store).await {
            Ok(list) => list.into_iter().next().ok_or_else(|| "none".to_owned()),
            Err(e) => Err(e.to_string()),
        },
    )
    .await
}

/// Stops node 3, deletes its database, writes more, starts it: it restores and catches up.
pub async fn fresh_node_restores_and_catches_up(tune: impl Fn(&mut Config) + Clone) {
    let mut cluster = Cluster::start(3, SCHEMA, |cfg| {
        cfg.snapshot.interval = 1000;
        cfg.replication_log.replicas = Some(3);
        tune(cfg);
    })
    .await;
    write_rows(&cluster, 0, 1, 300);
    cluster
        .wait_converged(&["items"], Duration::from_secs(30))
        .await;
    let store = open_store(&cluster).await;
    let m = newest_snapshot(&store, Duration::from_secs(30)).await;
    assert!(m.size > 0);
    cluster.stop_node(2).await;
    cluster.wipe_db(2);
    write_rows(&cluster, 1, 1000, 50);
    cluster.start_node(2).await;
    // A lost database file: new, without the application's tables. It restores a snapshot
    // (with the history still complete, replaying would find no table to write to).
    let node = cluster.node(2);
    eventually(
        "the fresh node restored a snapshot",
        Duration::from_secs(30),
        async || match node.metrics.snapshot_restores.get() {
            0 => Err(node.status.recovery.facts()),
            n => Ok(n),
        },
    )
    .await;
    write_rows(&cluster, 2, 2000, 10);
    cluster
        .wait_converged(&["items"], Duration::from_secs(30))
        .await;
    assert_eq!(cluster.db(2).count("items"), 360);
    cluster.stop().await;
}

/// The cluster's snapshot store, as node 1 is configured (through its server for NATS).
pub async fn open_store(cluster: &Cluster) -> Store {
    let node = cluster.node(0);
    let client = async_nats::connect(node.nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    Store::open(&node.cfg, Some(&js)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_node_restores_from_a_local_directory_store() {
    let store = tempfile::tempdir().unwrap();
    let path = store.path().to_path_buf();
    fresh_node_restores_and_catches_up(move |cfg| with_fs_store(cfg, &path)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_node_restores_from_the_nats_object_store() {
    fresh_node_restores_and_catches_up(|cfg| {
        cfg.snapshot.enabled = true;
        cfg.snapshot.store = SnapshotStore::Nats;
        cfg.snapshot.nats.replicas = 3;
    })
    .await;
}

/// Writes `count` rows on node 1, one transaction and one published message each, so the stream
/// (40 messages kept) is trimmed; then waits until the newest snapshot covers the stream's end.
async fn trim_the_stream_and_wait_for_a_covering_snapshot(cluster: &Cluster, count: i64) {
    let node0 = cluster.node(0);
    for id in 100..100 + count {
        let before = node0.published();
        write_rows(cluster, 0, id, 1);
        // Long enough for JetStream to replace a frozen stream leader.
        eventually("published", Duration::from_secs(30), async || {
            if node0.published() > before {
                Ok(())
            } else {
                Err(node0.published())
            }
        })
        .await;
    }
    let stream = node0.cfg.stream_name(harmonylite::ids::ShardId(0));
    let client = async_nats::connect(node0.nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let (first, last) = {
        let mut s = js.get_stream(&stream).await.unwrap();
        let info = s.info().await.unwrap();
        (info.state.first_sequence, info.state.last_sequence)
    };
    assert!(first > 30, "the stream was trimmed (first kept: {first})");
    let store = open_store(cluster).await;
    eventually(
        "a snapshot that covers the stream",
        Duration::from_secs(30),
        async || {
            let list = history::list(&store).await.unwrap();
            match list.first().and_then(|m| m.sequences.get(&stream)) {
                Some(seq) if *seq + 40 >= last => Ok(()),
                other => Err(format!("newest covers {other:?}, last {last}")),
            }
        },
    )
    .await;
}

async fn gap_cluster(path: &Path) -> Cluster {
    let path = path.to_path_buf();
    let cluster = Cluster::start(3, SCHEMA, move |cfg| {
        with_fs_store(cfg, &path);
        cfg.replication_log.replicas = Some(3);
        cfg.replication_log.max_entries = 40;
    })
    .await;
    write_rows(&cluster, 0, 1, 20);
    cluster
        .wait_converged(&["items"], Duration::from_secs(30))
        .await;
    cluster
}

/// Node 3 restored a snapshot, skipped no gap, and holds every row.
async fn node3_restored_without_skipping(cluster: &Cluster) {
    let node2 = cluster.node(2);
    // The restore writes the database before it counts itself done.
    eventually(
        "node 3 restored",
        Duration::from_secs(10),
        async || match node2.metrics.snapshot_restores.get() {
            0 => Err(0),
            n => Ok(n),
        },
    )
    .await;
    assert!(node2.metrics.stream_gaps.get() >= 1, "the gap was found");
    assert_eq!(node2.metrics.gaps_accepted.get(), 0, "no gap was given up");
    assert!(!node2.status.recovery.facts().lacks_data());
    assert_eq!(cluster.db(2).count("items"), 170);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_behind_a_trimmed_stream_restores_at_start_and_converges() {
    let store = tempfile::tempdir().unwrap();
    let mut cluster = gap_cluster(store.path()).await;
    cluster.stop_node(2).await;
    trim_the_stream_and_wait_for_a_covering_snapshot(&cluster, 150).await;
    cluster.start_node(2).await;
    cluster
        .wait_converged(&["items"], Duration::from_secs(60))
        .await;
    node3_restored_without_skipping(&cluster).await;
    cluster.stop().await;
}

/// Node 3's own server is frozen while the stream is trimmed past node 3's floor. Right after
/// the thaw its stale server may answer with the old stream state: that can delay finding the
/// gap, never skip it (the floor only moves over applied messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_node_cut_off_past_the_history_restores_while_running() {
    let store = tempfile::tempdir().unwrap();
    let cluster = gap_cluster(store.path()).await;
    // Freeze node 3's bundled server: node 3 keeps running but receives nothing.
    let pid = crate::harness::node::nats_server_pid(&cluster.node(2).cfg.data_dir())
        .expect("node 3's server pid") as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    trim_the_stream_and_wait_for_a_covering_snapshot(&cluster, 150).await;
    unsafe { libc::kill(pid, libc::SIGCONT) };
    cluster
        .wait_converged(&["items"], Duration::from_secs(90))
        .await;
    node3_restored_without_skipping(&cluster).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_uploads_and_another_takes_over_within_the_ttl() {
    let store = tempfile::tempdir().unwrap();
    let path = store.path().to_path_buf();
    let ttl = Duration::from_millis(3000);
    let mut cluster = Cluster::start(3, SCHEMA, |cfg| {
        with_fs_store(cfg, &path);
        cfg.replication_log.replicas = Some(3);
        cfg.snapshot.interval = 500;
        cfg.snapshot.leader_ttl = ttl.as_millis() as u64;
        cfg.snapshot.keep = 50;
    })
    .await;
    write_rows(&cluster, 0, 1, 10);
    let leader = wait_one_leader(&cluster, "one leader", Duration::from_secs(20)).await;
    let cfg = cluster.node(0).cfg.clone();
    let fs_store = Store::open(&cfg, None).await.unwrap();
    only_the_leader_uploads(&cluster, &fs_store, leader).await;

    cluster.kill_node(leader);
    let killed = Instant::now();
    let next = wait_one_leader(&cluster, "a new leader", ttl * 3).await;
    let handover = killed.elapsed();
    assert_ne!(next, leader);
    // The lease expires at most `ttl` after its last renewal; the others look every ttl/10.
    assert!(
        handover <= ttl + Duration::from_millis(1500),
        "hand-over took {handover:?} with leader_ttl {ttl:?}"
    );
    eventually(
        "the new leader uploads",
        Duration::from_secs(20),
        async || {
            let list = history::list(&fs_store).await.unwrap();
            if list.iter().any(|m| m.node_id == next as u64 + 1) {
                Ok(())
            } else {
                Err(list.len())
            }
        },
    )
    .await;
    eprintln!("leader hand-over took {handover:?} (leader_ttl {ttl:?})");
    cluster.stop().await;
}

/// The running nodes that currently consider themselves the snapshot leader.
fn leaders(cluster: &Cluster) -> Vec<usize> {
    cluster
        .running()
        .filter(|(_, n)| n.status.snapshot_leader.load(Ordering::Relaxed))
        .map(|(i, _)| i)
        .collect()
}

/// Waits until exactly one running node leads; returns it.
async fn wait_one_leader(cluster: &Cluster, what: &str, deadline: Duration) -> usize {
    eventually(what, deadline, async || match leaders(cluster)[..] {
        [one] => Ok(one),
        ref other => Err(other.to_vec()),
    })
    .await
}

/// Three snapshots appear, two more seconds pass without a second leader, and every snapshot
/// in the store was uploaded by `leader`.
async fn only_the_leader_uploads(cluster: &Cluster, fs_store: &Store, leader: usize) {
    eventually("three snapshots", Duration::from_secs(20), async || {
        let n = history::list(fs_store).await.unwrap().len();
        if n >= 3 { Ok(()) } else { Err(n) }
    })
    .await;
    // Watch for two leaders at once for two more seconds: time is meant to pass here (lease
    // renewals happen meanwhile), this is not a wait for a condition.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(leaders(cluster).len() <= 1, "two leaders at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let uploaders: std::collections::BTreeSet<u64> = history::list(fs_store)
        .await
        .unwrap()
        .iter()
        .map(|m| m.node_id)
        .collect();
    assert_eq!(
        uploaders,
        [leader as u64 + 1].into(),
        "only the leader uploads"
    );
}

fn single_node_toml(dir: &Path, store: &Path, top: &str) -> String {
    format!(
        "db_path = {:?}\nnode_id = 1\nseq_map_path = {:?}\ndata_dir = {:?}\n\
         polling_interval = 50\ncleanup_interval = 200\n{top}\n\
         [nats]\nbind_address = \"127.0.0.1:-1\"\n\
         [snapshot]\nenabled = true\nstore = \"fs\"\nleader_ttl = 2000\n\
         [snapshot.fs]\npath = {:?}\n",
        dir.join("node1.db"),
        dir.join("seq-map-1.cbor"),
        dir.join("data-1"),
        store,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_snapshot_flag_takes_one_shows_progress_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    crate::harness::AppDb::open(&dir.path().join("node1.db")).exec(SCHEMA);
    crate::harness::AppDb::open(&dir.path().join("node1.db"))
        .exec("INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2)");
    let toml = single_node_toml(dir.path(), &store, "");
    let mut node = NodeProcess::spawn(dir.path(), 1, &toml, &["-save-snapshot"]);
    let code = node.exit_code(Duration::from_secs(60)).await;
    let log = node.log();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("snapshot: upload 100%"), "{log}");
    let names: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "latest.json"), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(".db.zst")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_timeout_snapshots_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    crate::harness::AppDb::open(&dir.path().join("node1.db")).exec(SCHEMA);
    let toml = single_node_toml(dir.path(), &store, "sleep_timeout = 3000");
    let mut node = NodeProcess::spawn(dir.path(), 1, &toml, &[]);
    let code = node.exit_code(Duration::from_secs(60)).await;
    let log = node.log();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("snapshot taken before sleeping"), "{log}");
    assert!(store.join("latest.json").exists());
}

async fn fresh_node_restores_from(kind: StoreKind) {
    let ts = TestStore::start(kind).await;
    let ts = &ts;
    fresh_node_restores_and_catches_up(move |cfg| {
        ts.configure(cfg);
        cfg.snapshot.enabled = true;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_node_restores_from_s3() {
    fresh_node_restores_from(StoreKind::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_node_restores_from_sftp_with_a_password() {
    fresh_node_restores_from(StoreKind::SftpPassword).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_node_restores_from_sftp_with_a_key() {
    fresh_node_restores_from(StoreKind::SftpKey).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_node_restores_from_webdav() {
    fresh_node_restores_from(StoreKind::Webdav).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_counted_and_retried_with_backoff() {
    // Connections are refused there for the whole test.
    let closed = ClosedPort::bind();
    let cluster = Cluster::start(1, SCHEMA, |cfg| {
        cfg.snapshot.enabled = true;
        cfg.snapshot.store = SnapshotStore::S3;
        cfg.snapshot.s3.endpoint = format!("127.0.0.1:{}", closed.port);
        cfg.snapshot.s3.bucket = "snapshots".into();
        cfg.snapshot.s3.force_path_style = true;
        cfg.snapshot.s3.access_key = "key".into();
        // An hour: failures must be retried long before the next interval.
        cfg.snapshot.interval = 3_600_000;
        cfg.snapshot.leader_ttl = 1000;
    })
    .await;
    let failures = || {
        cluster
            .node(0)
            .metric("harmonylite_snapshot_failures_total")
            .unwrap_or(0.0)
    };
    // The start-up restore and the leader's first look at the store both fail at once.
    let first = eventually("a failed attempt", Duration::from_secs(20), async || {
        if failures() >= 1.0 {
            Ok(failures())
        } else {
            Err(0.0)
        }
    })
    .await;
    let seen = Instant::now();
    eventually("a retry", Duration::from_secs(20), async || {
        if failures() > first + 1.0 {
            Ok(())
        } else {
            Err(failures())
        }
    })
    .await;
    // Retries come 2 s, then 4 s apart: not in a loop, and not only after the hour.
    let waited = seen.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    cluster.stop().await;
}
