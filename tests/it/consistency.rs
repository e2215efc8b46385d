//! Content digests, `-verify-cluster` and self-repair (issue 16) on a real 3-node cluster: a
//! converged cluster agrees; a row changed behind capture's back on one node, or one inserted
//! there with capture off, is reported with its table and node; with repair on, a changed, a
//! deleted and an inserted row are all repaired and every node agrees again; under continuous
//! writes, a difference in versions differs once it outlives the settle time.

use std::process::Command;
use std::time::Duration;

use harmonylite::config::Secret;

use crate::harness::{Cluster, eventually};
use crate::web::{admin_addr, health_addr, http};

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);
                      CREATE TABLE other(id INTEGER PRIMARY KEY, n INTEGER);";
const DEADLINE: Duration = Duration::from_secs(60);
const TOKEN: &str = "consistency-test-admin-token";

/// Runs `harmonylite -verify-cluster` against node 1's server: (exit status, stdout).
fn verify_cluster(cluster: &Cluster) -> (Option<i32>, String) {
    let dir = cluster.dir.path();
    let node1 = &cluster.node(0).cfg;
    let toml = format!(
        "db_path = {:?}\nnode_id = 1\ndata_dir = {:?}\n[nats]\nurls = [{:?}]\n\
         [consistency]\ndigest_interval_ms = 500\n",
        node1.db_path,
        node1.data_dir(),
        cluster.node(0).nats_url()
    );
    std::fs::write(dir.join("verify.toml"), toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_harmonylite"))
        .arg("-config")
        .arg(dir.join("verify.toml"))
        .arg("-verify-cluster")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    (out.status.code(), format!("{text}{err}"))
}

/// A converged 3-node cluster with 200 rows, digests every 500 ms, repair on or off, health
/// check and dashboard on free loopback ports.
async fn start(repair: bool) -> Cluster {
    let cluster = Cluster::start(3, SCHEMA, |cfg| {
        cfg.consistency.digest_interval_ms = 500;
        cfg.consistency.repair = repair;
        cfg.consistency.settle_ms = 3000;
        cfg.health_check.enable = true;
        cfg.health_check.bind = "127.0.0.1:0".into();
        cfg.admin.enable = true;
        cfg.admin.bind = "127.0.0.1:0".into();
        cfg.admin.auth_token = Secret::new(TOKEN.to_owned());
    })
    .await;
    let mut db = cluster.db(0);
    db.tx(|tx| {
        for id in 1..=200 {
            tx.execute(
                "INSERT INTO items VALUES (?1, ?2)",
                rusqlite::params![id, format!("item {id}")],
            )
            .unwrap();
        }
    });
    cluster.wait_converged(&["items"], DEADLINE).await;
    cluster
}

/// Runs `sql` on node `i`'s database with capture held off (the applier's guard), as an
/// application or operator writing with the triggers dropped would.
fn behind_capture(cluster: &Cluster, i: usize, sql: &str) {
    cluster.db(i).exec(&format!(
        "BEGIN; INSERT INTO __harmonylite__guard VALUES (1); {sql};
         DELETE FROM __harmonylite__guard; COMMIT;"
    ));
}

/// Waits until `-verify-cluster` exits with `code` over the digests of all three nodes.
async fn wait_verdict(cluster: &Cluster, code: i32, what: &str) -> String {
    let text = eventually(what, DEADLINE, async || match verify_cluster(cluster) {
        (Some(c), text) if c == code && text.contains(": 3 nodes") => Ok(text),
        other => Err(other),
    })
    .await;
    println!("{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_cluster_agrees_then_names_what_was_written_behind_capture() {
    let cluster = start(false).await;
    let text = wait_verdict(&cluster, 0, "every table agrees").await;
    assert!(text.contains("items: agree"), "{text}");
    assert!(text.contains("3 nodes"), "{text}");

    // Node 2 changes a row with capture held off (the applier's guard): same version, other
    // content.
    behind_capture(
        &cluster,
        1,
        "UPDATE items SET name = 'changed behind the back' WHERE id = 17",
    );
    let text = wait_verdict(&cluster, 1, "the change is reported").await;
    assert!(text.contains("items: DIFFERS"), "{text}");
    assert!(
        text.contains("node-2 (the same versions with different content)"),
        "{text}"
    );
    // Every node's own comparison says the same, on /health, /api/consistency and the metric.
    let node2 = cluster.node(1);
    let health = eventually("node 2's health names the table", DEADLINE, async || {
        let body = http::get(health_addr(node2), "/health").await.json();
        match body["consistency"]["diverged_tables"][0].as_str() {
            Some("items") => Ok(body),
            _ => Err(body),
        }
    })
    .await;
    assert!(
        health["consistency"]["nodes"].as_array().unwrap().len() == 3,
        "{health}"
    );
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    let api = http::request(admin_addr(node2), "GET", "/api/consistency", &auth, "")
        .await
        .json();
    let items = &api["tables"][0];
    assert_eq!(items["state"], "differ", "{api}");
    assert_eq!(items["buckets"][0]["nodes"][0], 2, "{api}");
    assert_eq!(node2.metric("harmonylite_diverged_tables"), Some(1.0));

    // Node 3 inserts a row with capture held off: a row without a clock row.
    behind_capture(
        &cluster,
        2,
        "INSERT INTO items VALUES (5000, 'no clock row')",
    );
    let text = eventually(
        "the insert is reported",
        DEADLINE,
        async || match verify_cluster(&cluster) {
            (Some(1), text) if text.contains("node-3 (rows without a clock row") => Ok(text),
            other => Err(other),
        },
    )
    .await;
    assert!(text.contains("verdict: 1 table(s) differ"), "{text}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_changed_deleted_or_inserted_behind_capture_are_repaired() {
    let cluster = start(true).await;
    wait_verdict(&cluster, 0, "every table agrees").await;
    behind_capture(
        &cluster,
        1,
        "UPDATE items SET name = 'changed behind the back' WHERE id = 17",
    );
    behind_capture(&cluster, 0, "DELETE FROM items WHERE id = 30");
    behind_capture(
        &cluster,
        2,
        "INSERT INTO items VALUES (5000, 'no clock row')",
    );
    let name = |i: usize, id: i64| {
        cluster
            .db(i)
            .query_string(&format!("SELECT name FROM items WHERE id = {id}"))
    };
    eventually("every node repaired", DEADLINE, async || {
        let state: Vec<_> = (0..3)
            .map(|i| (name(i, 17), name(i, 30), name(i, 5000)))
            .collect();
        let want = (
            Some("item 17".to_owned()),
            Some("item 30".to_owned()),
            Some("no clock row".to_owned()),
        );
        if state.iter().all(|s| *s == want) {
            Ok(())
        } else {
            Err(state)
        }
    })
    .await;
    cluster.wait_converged(&["items"], DEADLINE).await;
    wait_verdict(&cluster, 0, "every table agrees again").await;
    let repairs = |i: usize, kind: &str| {
        cluster
            .node(i)
            .metrics
            .repairs
            .with_label_values(&[kind])
            .get()
    };
    assert_eq!(repairs(2, "adopted"), 1, "node 3 adopted its row");
    assert!(
        repairs(1, "equal_version") >= 1,
        "node 2 took the majority's content"
    );
    assert!(repairs(0, "equal_version") >= 1, "node 1 got its row back");
    let journaled = cluster
        .db(1)
        .query_i64(
            "SELECT count(*) FROM __harmonylite__conflicts WHERE kind = 'repair_equal_version'",
        )
        .unwrap();
    assert!(journaled >= 1, "the repair is journaled");
    cluster.stop().await;
}

/// Under continuous writes the cluster is never quiet, so a difference in versions first counts
/// as in flight; once it outlives the settle time while every node applied what was travelling,
/// it differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_difference_under_writes_differs_after_the_settle_time() {
    let cluster = start(false).await;
    wait_verdict(&cluster, 0, "every table agrees").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (cluster.db(0), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                db.execute("INSERT OR REPLACE INTO other VALUES (?1, ?2)", [n % 50, n]);
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Node 2 holds row 9 at a version nobody else has, without anything to publish.
    behind_capture(
        &cluster,
        1,
        "UPDATE items SET name = 'another version' WHERE id = 9;
         UPDATE __harmonylite__items_clock SET ver = ver + 1000 WHERE k0 = 9",
    );
    let text = eventually(
        "the difference outlives the settle time",
        DEADLINE,
        async || match verify_cluster(&cluster) {
            (Some(1), text) if text.contains("outlived the settle time") => Ok(text),
            other => Err(other),
        },
    )
    .await;
    println!("{text}");
    assert!(text.contains("items: DIFFERS"), "{text}");
    assert!(
        text.contains("other: agree") || text.contains("other: changes in flight"),
        "{text}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    cluster.stop().await;
}
