//! Operator safety (issue 19): ordinary commands that used to damage a cluster quietly.
//!
//! - a second process for a running node is refused (the lock), `-cleanup` too, and
//!   `-save-snapshot` asks the running node instead of starting a second one;
//! - two nodes with one node id never run together (the registry claim);
//! - the guide's "Option B" (`-cleanup` on a node that missed changes, then a restart) never
//!   brings back stale values or deleted rows.

use std::path::Path;
use std::time::Duration;

use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::{self, Settings};
use harmonylite::status::NodeStatus;
use tokio::process::Command;

use crate::harness::nats::NatsServer;
use crate::harness::node::{NodeProcess, metrics_for, process_toml, test_config};
use crate::harness::{AppDb, Cluster, Node};

const SCHEMA: &str = "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);";

/// Runs the binary with `args`; returns (exit code, stderr).
async fn run_binary(args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        Command::new(env!("CARGO_BIN_EXE_harmonylite"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the command ends within 90 s")
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A process node's config with snapshots to a local directory `store`, taken only on request.
fn snapshot_toml(dir: &Path, store: &Path) -> String {
    process_toml(dir, 1, "", "", "").replace(
        "[snapshot]\nenabled = false\n",
        &format!(
            "[snapshot]\nenabled = true\ninterval = 0\nstore = \"fs\"\n[snapshot.fs]\npath = {:?}\n",
            store
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_keeps_its_lock_and_takes_requested_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("snapshots");
    AppDb::open(&dir.path().join("node1.db"))
        .exec(&format!("{SCHEMA} INSERT INTO kv VALUES (1, 'one');"));
    let toml = snapshot_toml(dir.path(), &store);
    let mut node = NodeProcess::spawn(dir.path(), 1, &toml, &[]);
    node.wait_ready().await;
    let config = dir.path().join("node1.toml");
    let config = config.to_str().unwrap();
    let pid = node.pid().unwrap();

    let (code, err) = run_binary(&["-config", config]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("harmonylite.lock is locked"), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");

    let db = dir.path().join("node1.db");
    let (code, err) = run_binary(&["-cleanup", "-db", db.to_str().unwrap()]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("-cleanup refused"), "{err}");
    assert!(err.contains("node1.db-harmonylite.lock"), "{err}");

    let (code, err) = run_binary(&["-save-snapshot", "-config", config]).await;
    assert_eq!(code, Some(0), "{err}\n{}", node.log());
    assert!(err.contains("asking it for a snapshot"), "{err}");
    assert!(err.contains("snapshot: upload 100%"), "{err}");
    assert!(err.contains(" saved ("), "{err}");
    assert!(node.log().contains("snapshot requested by a command"));
    assert_eq!(node.pid(), Some(pid), "the node kept running");
    let stored = std::fs::read_dir(&store).unwrap().count();
    assert!(stored > 0, "nothing in the snapshot store");

    node.signal(libc::SIGTERM);
    assert_eq!(node.exit_code(Duration::from_secs(30)).await, Some(0));
    let (code, err) = run_binary(&["-cleanup", "-db", db.to_str().unwrap()]).await;
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_with_one_id_never_run_together() {
    let nats = NatsServer::start("").await;
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &Path| {
        let mut cfg = test_config(dir, 5);
        cfg.nats.urls = vec![nats.url()];
        AppDb::open(&cfg.db_path).exec(SCHEMA);
        cfg
    };
    let first = Node::start(config(first_dir.path()), EmbeddedOptions::default()).await;

    let second = config(second_dir.path());
    let status = NodeStatus::new(second.node_id());
    let metrics = metrics_for(&second);
    let settings = Settings::new(second.clone(), EmbeddedOptions::default());
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        node::run(settings, status, metrics, std::future::pending()),
    )
    .await
    .expect("the second node gives up within 60 s");
    let error = format!(
        "{:#}",
        refused.expect_err("a second node with id 5 must not start")
    );
    assert!(
        error.contains("node id 5 is held by a live node"),
        "{error}"
    );
    let first_data = std::fs::canonicalize(first.cfg.data_dir()).unwrap();
    assert!(error.contains(&first_data.display().to_string()), "{error}");
    assert_eq!(AppDb::open(&second.db_path).count("kv"), 0);

    // The same instance (host and data directory) starting again is the same node.
    let first = first.restart().await;
    first.stop().await;
}

/// The guide's Option B on a node that missed an update and a delete: after `-cleanup` and a
/// restart its old rows fill only keys nobody else has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_on_a_lagging_node_never_brings_back_stale_rows() {
    let mut cluster = Cluster::start(2, SCHEMA, |_| {}).await;
    cluster
        .db(0)
        .exec("INSERT INTO kv VALUES (1, 'old'), (2, 'doomed'), (3, 'kept');");
    cluster
        .wait_converged(&["kv"], Duration::from_secs(60))
        .await;
    cluster.stop_node(1).await;
    cluster
        .db(0)
        .exec("UPDATE kv SET v = 'new' WHERE k = 1; DELETE FROM kv WHERE k = 2;");
    let lagging = cluster.dir.path().join("node2.db");
    let (code, err) = cleanup_after_an_in_process_stop(&lagging).await;
    assert_eq!(code, Some(0), "{err}");
    cluster
        .db(1)
        .exec("INSERT INTO kv VALUES (4, 'only on the lagging node');");
    cluster.start_node(1).await;
    cluster
        .wait_converged(&["kv"], Duration::from_secs(60))
        .await;
    assert_eq!(
        cluster.db(0).dump("kv"),
        cluster.db(1).dump("kv"),
        "converged"
    );
    let db = cluster.db(0);
    let value = |k: i64| db.query_string(&format!("SELECT v FROM kv WHERE k = {k}"));
    assert_eq!(value(1).as_deref(), Some("new"), "the stale value lost");
    assert_eq!(value(2), None, "the deleted row stayed deleted");
    assert_eq!(value(3).as_deref(), Some("kept"));
    assert_eq!(value(4).as_deref(), Some("only on the lagging node"));
    assert_eq!(db.count("kv"), 3);
    cluster.stop().await;
}

/// `-cleanup` on the database of a node this test process just stopped. The stopped node's lock
/// can outlive it for a moment in a child another thread forked and has not exec'd yet (the
/// window `instance::take_lock` waits out for its own process); `-cleanup` is another process,
/// so a refusal naming this test process is tried again for up to 10 s. A lock held by any
/// other process fails at once.
async fn cleanup_after_an_in_process_stop(db: &std::path::Path) -> (Option<i32>, String) {
    let ours = format!("(pid {})", std::process::id());
    let outcome = crate::common::poll::poll(Duration::from_secs(10), async || {
        let (code, err) = run_binary(&["-cleanup", "-db", db.to_str().unwrap()]).await;
        let lingering = code != Some(0) && err.contains(&ours) && err.contains("is locked");
        if lingering {
            Err((code, err))
        } else {
            Ok((code, err))
        }
    })
    .await;
    outcome.unwrap_or_else(|last| last)
}

/// A downgrade: the database's internal tables were written by a newer build. The older binary
/// refuses to start with exit code 2 (the packaged unit does not restart on it), names the way
/// out, leaves the database as it was, and stops the bundled server it started meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_build_is_refused_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let toml = process_toml(dir.path(), 1, "", "", "");
    AppDb::open(&dir.path().join("node1.db")).exec(SCHEMA);
    let mut node = NodeProcess::spawn(dir.path(), 1, &toml, &[]);
    node.wait_ready().await;
    node.process.signal(libc::SIGTERM);
    assert_eq!(node.exit_code(Duration::from_secs(30)).await, Some(0));
    let db = AppDb::open(&dir.path().join("node1.db"));
    db.exec(r#"UPDATE "__harmonylite__state" SET value = 99 WHERE key = 'format'"#);

    let mut older = NodeProcess::spawn(dir.path(), 1, &toml, &[]);
    let code = older.exit_code(Duration::from_secs(30)).await;
    let log = older.log();
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("format 99, newer than this build"), "{log}");
    assert!(log.contains("downgrades are refused"), "{log}");
    // The bundled server starts beside the database (node::start): refused, the node stops the
    // server it started instead of leaving it to die with its parent.
    assert!(log.contains("Starting nats-server"), "{log}");
    assert!(log.contains("Server Exiting"), "{log}");
    assert_eq!(older.nats_pid(), None, "no bundled server is left running");
    let format = db.query_i64(r#"SELECT value FROM "__harmonylite__state" WHERE key = 'format'"#);
    assert_eq!(format, Some(99), "the database was left as it was");
}
