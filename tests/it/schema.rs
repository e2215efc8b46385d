//! Schema versioning on real 3-node clusters: the production guide's rolling upgrade (DDL with
//! the `sqlite3` shell on one node at a time, no restart), new tables, dropped and renamed
//! columns, the KV registry and the status commands.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::harness::app_db::sqlite3_shell;
use crate::harness::{Cluster, eventually};

const DDL_SEEN: Duration = Duration::from_secs(10);
const CONVERGE: Duration = Duration::from_secs(30);

/// Runs `sql` with the `sqlite3` shell, as an operator would; a failure fails the test.
fn sqlite3(db: &Path, sql: &str) {
    sqlite3_shell(db, sql).unwrap();
}

fn paused(cluster: &Cluster, i: usize) -> bool {
    cluster.node(i).status.schema_paused()
}

async fn wait_paused(cluster: &Cluster, i: usize) {
    eventually(&format!("node {} paused", i + 1), CONVERGE, async || {
        if paused(cluster, i) {
            Ok(())
        } else {
            Err(cluster.node(i).status.schema_hash())
        }
    })
    .await;
}

/// Waits until node `i` noticed its DDL: its hash differs from `old`. Returns the new hash.
async fn wait_new_hash(cluster: &Cluster, i: usize, old: &str) -> String {
    eventually(&format!("node {} rehashed", i + 1), DDL_SEEN, async || {
        let h = cluster.node(i).status.schema_hash();
        if h != old { Ok(h) } else { Err(h) }
    })
    .await
}

/// Every `node-*` registry entry as JSON, read with a plain NATS client.
async fn registry(url: &str) -> Vec<(String, serde_json::Value)> {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv = js
        .get_key_value("harmonylite-schema-registry")
        .await
        .unwrap();
    let mut keys: Vec<String> = kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        let bytes = kv.get(&k).await.unwrap().unwrap();
        out.push((k, serde_json::from_slice(&bytes).unwrap()));
    }
    out
}

/// Name of the server that holds shard 0's stream.
async fn stream_leader(url: &str) -> String {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("harmonylite-changes-0").await.unwrap();
    let info = stream.info().await.unwrap();
    info.cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap_or_default()
}

type Entries = Vec<(String, serde_json::Value)>;

/// Polls the registry until `check` accepts it; panics with the last entries at the deadline.
async fn wait_registry(url: &str, what: &str, check: impl Fn(&Entries) -> bool) -> Entries {
    eventually(what, CONVERGE, async || {
        let entries = registry(url).await;
        if check(&entries) {
            Ok(entries)
        } else {
            Err(entries)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_add_column_pauses_behind_nodes_and_resumes_without_loss() {
    let schema = "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL);";
    let cluster = Cluster::start(3, schema, |_| {}).await;
    for i in 1..=10 {
        cluster
            .db(0)
            .execute("INSERT INTO users VALUES (?1, 'base')", [i]);
    }
    cluster.wait_converged(&["users"], CONVERGE).await;
    let old = cluster.node(0).status.schema_hash();
    assert!(
        (0..3).all(|i| cluster.node(i).status.schema_hash() == old),
        "same DDL, same hash"
    );

    // Step 1: node 1 is upgraded with the shell while it runs.
    let started = Instant::now();
    sqlite3(
        &cluster.db(0).path,
        "ALTER TABLE users ADD COLUMN email TEXT",
    );
    let new = wait_new_hash(&cluster, 0, &old).await;
    eprintln!("node 1 rehashed {:?} after its DDL", started.elapsed());
    assert_eq!(
        cluster.node(0).status.schema_previous_hash().as_deref(),
        Some(old.as_str())
    );

    // Node 1 writes with the new column while node 2 writes with the old schema.
    write_on_both_schemas(&cluster);
    behind_nodes_hold_new_rows_back(&cluster).await;
    // Step 2: node 2 is upgraded; it resumes by itself and gets every held row.
    upgrade_node_2(&cluster, &new).await;
    // Step 3: node 3.
    upgrade_node_3(&cluster).await;
    assert!(cluster.node(1).metrics.schema_pauses.get() >= 1);
    assert_eq!(cluster.node(0).metrics.schema_pauses.get(), 0);

    // Writes keep flowing both ways on the new schema.
    cluster
        .db(2)
        .exec("UPDATE users SET email = 'late@x' WHERE id = 1");
    cluster.wait_converged(&["users"], CONVERGE).await;
    assert_eq!(
        cluster
            .db(0)
            .query_string("SELECT email FROM users WHERE id = 1")
            .as_deref(),
        Some("late@x")
    );
    cluster.stop().await;
}

/// Node 1 (upgraded) inserts users 100..150 with an email, node 2 (not yet) users 200..250
/// without, at the same time.
fn write_on_both_schemas(cluster: &Cluster) {
    let p1 = cluster.db(0).path.clone();
    let p2 = cluster.db(1).path.clone();
    let w1 = std::thread::spawn(move || {
        let db = crate::harness::AppDb::open(&p1);
        for i in 100..150 {
            db.execute(
                "INSERT INTO users(id, name, email) VALUES (?1, 'new', ?2)",
                rusqlite::params![i, format!("u{i}@x")],
            );
        }
    });
    let w2 = std::thread::spawn(move || {
        let db = crate::harness::AppDb::open(&p2);
        for i in 200..250 {
            db.execute("INSERT INTO users(id, name) VALUES (?1, 'old')", [i]);
        }
    });
    w1.join().unwrap();
    w2.join().unwrap();
}

/// After step 1 of the rolling upgrade: nodes 2 and 3 hold node 1's rows back; node 1 applies
/// node 2's (one version behind); the registry shows who waits.
async fn behind_nodes_hold_new_rows_back(cluster: &Cluster) {
    wait_paused(cluster, 1).await;
    wait_paused(cluster, 2).await;
    eventually("node 2's old-schema rows on node 1", CONVERGE, async || {
        let n = cluster
            .db(0)
            .query_i64("SELECT count(*) FROM users WHERE id BETWEEN 200 AND 249 AND email IS NULL");
        if n == Some(50) { Ok(()) } else { Err(n) }
    })
    .await;
    assert!(!paused(cluster, 0), "node 1 accepts its previous hash");
    for i in [1, 2] {
        let n = cluster
            .db(i)
            .query_i64("SELECT count(*) FROM users WHERE id BETWEEN 100 AND 149");
        assert_eq!(
            n,
            Some(0),
            "node {} applied rows it has no column for",
            i + 1
        );
    }
    let url = cluster.node(0).nats_url();
    wait_registry(&url, "node-2 paused in the registry", |entries| {
        entries.iter().any(|(k, v)| {
            k == "node-2" && v["paused"] == true && v["paused_shards"] == serde_json::json!([0])
        })
    })
    .await;
}

/// Step 2 of the rolling upgrade: node 2 gets the DDL, resumes by itself with every held row
/// and converges with node 1; node 3 still waits.
async fn upgrade_node_2(cluster: &Cluster, new: &str) {
    let started = Instant::now();
    sqlite3(
        &cluster.db(1).path,
        "ALTER TABLE users ADD COLUMN email TEXT",
    );
    eventually("node 2 resumed with every row", CONVERGE, async || {
        let n = cluster.db(1).query_i64(
            "SELECT count(*) FROM users WHERE id BETWEEN 100 AND 149 AND email = 'u' || id || '@x'",
        );
        if n == Some(50) && !paused(cluster, 1) {
            Ok(())
        } else {
            Err((n, paused(cluster, 1)))
        }
    })
    .await;
    eprintln!("node 2 resumed {:?} after its DDL", started.elapsed());
    assert_eq!(cluster.node(1).status.schema_hash(), new);
    cluster
        .wait_converged_among(&[0, 1], &["users"], CONVERGE)
        .await;
    assert!(paused(cluster, 2), "node 3 still waits for its DDL");
}

/// Step 3 of the rolling upgrade: node 3 gets the DDL; the cluster converges and nobody waits.
async fn upgrade_node_3(cluster: &Cluster) {
    let started = Instant::now();
    sqlite3(
        &cluster.db(2).path,
        "ALTER TABLE users ADD COLUMN email TEXT",
    );
    cluster.wait_converged(&["users"], CONVERGE).await;
    eventually("node 3 resumed", DDL_SEEN, async || {
        if paused(cluster, 2) { Err(()) } else { Ok(()) }
    })
    .await;
    eprintln!("node 3 converged {:?} after its DDL", started.elapsed());
    assert_eq!(cluster.db(2).count("users"), 110);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_table_created_everywhere_replicates_without_restart() {
    let cluster = Cluster::start(3, "CREATE TABLE t(id INTEGER PRIMARY KEY);", |_| {}).await;
    let old = cluster.node(0).status.schema_hash();
    sqlite3(
        &cluster.db(0).path,
        "CREATE TABLE tags(id INTEGER PRIMARY KEY, label TEXT NOT NULL)",
    );
    let new = wait_new_hash(&cluster, 0, &old).await;
    cluster
        .db(0)
        .exec("INSERT INTO tags VALUES (1, 'one'), (2, 'two')");
    wait_paused(&cluster, 1).await;
    // The same table, declared differently: the same hash.
    sqlite3(
        &cluster.db(1).path,
        "create table \"tags\" ( id integer primary key , label varchar(40) not null )",
    );
    sqlite3(
        &cluster.db(2).path,
        "CREATE TABLE tags(label TEXT NOT NULL, id INT PRIMARY KEY)",
    );
    for i in [1, 2] {
        assert_eq!(wait_new_hash(&cluster, i, &old).await, new);
    }
    cluster.db(2).exec("INSERT INTO tags VALUES ('three', 3)");
    // Node 3's columns are in another order, so compare by name.
    let content =
        "SELECT group_concat(id || ':' || label, ',') FROM (SELECT * FROM tags ORDER BY id)";
    eventually("tags everywhere", CONVERGE, async || {
        let all: Vec<Option<String>> = (0..3)
            .map(|i| cluster.db(i).query_string(content))
            .collect();
        if all
            .iter()
            .all(|c| c.as_deref() == Some("1:one,2:two,3:three"))
        {
            Ok(())
        } else {
            Err(all)
        }
    })
    .await;
    cluster.wait_converged(&["t"], CONVERGE).await;
    assert!((0..3).all(|i| !paused(&cluster, i)));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_renamed_columns_replicate_once_every_node_changed() {
    let schema = "CREATE TABLE books(id INTEGER PRIMARY KEY, title TEXT, year INTEGER, isbn TEXT);";
    let mut cluster = Cluster::start(3, schema, |_| {}).await;
    cluster
        .db(1)
        .exec("INSERT INTO books VALUES (1, 'Dune', 1965, 'x1'), (2, 'Emma', 1815, 'x2')");
    cluster.wait_converged(&["books"], CONVERGE).await;
    let old = cluster.node(0).status.schema_hash();
    // One schema change, in one transaction, as the shell runs it.
    let ddl = "BEGIN; ALTER TABLE books DROP COLUMN isbn; \
               ALTER TABLE books RENAME COLUMN title TO name; COMMIT;";
    sqlite3(&cluster.db(0).path, ddl);
    let new = wait_new_hash(&cluster, 0, &old).await;
    cluster.db(0).exec(
        "INSERT INTO books(id, name, year) VALUES (3, 'Ulysses', 1922); \
             UPDATE books SET name = 'Dune!' WHERE id = 1",
    );
    wait_paused(&cluster, 1).await;
    wait_paused(&cluster, 2).await;
    sqlite3(&cluster.db(1).path, ddl);
    sqlite3(&cluster.db(2).path, ddl);
    cluster.wait_converged(&["books"], CONVERGE).await;
    assert_eq!(
        cluster
            .db(2)
            .query_string("SELECT name FROM books WHERE id = 1")
            .as_deref(),
        Some("Dune!")
    );
    assert_eq!(cluster.db(1).count("books"), 3);
    eventually("nobody paused", DDL_SEEN, async || {
        if (0..3).any(|i| paused(&cluster, i)) {
            Err(())
        } else {
            Ok(())
        }
    })
    .await;

    // The previous hash survives a restart. Restart a node whose server does not hold the
    // (single-replica) stream: when that server restarts, the other nodes' pull consumers only
    // notice after two missed 15 s heartbeats, which is not what this test is about.
    let leader = stream_leader(&cluster.node(0).nats_url()).await;
    let i = (0..3)
        .find(|i| leader != format!("harmonylite-node-{}", i + 1))
        .unwrap();
    cluster.stop_node(i).await;
    cluster.start_node(i).await;
    let status = &cluster.node(i).status;
    assert_eq!(status.schema_hash(), new);
    assert_eq!(status.schema_previous_hash().as_deref(), Some(old.as_str()));
    cluster
        .db(i)
        .exec("INSERT INTO books VALUES (4, 'Walden', 1854)");
    cluster.wait_converged(&["books"], CONVERGE).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_entries_stay_fresh_and_status_commands_read_them() {
    let cluster = Cluster::start(3, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);", |c| {
        c.schema.registry_refresh_ms = 300;
    })
    .await;
    let url = cluster.node(0).nats_url();
    let hash = cluster.node(0).status.schema_hash();
    registry_entries_are_complete_and_refreshed(&url, &hash).await;
    // The status commands, as an operator runs them next to node 1.
    status_commands_read_the_registry(&cluster, &url, &hash);
    cluster.stop().await;
}

/// Every node has its entry with its state; they are rewritten every refresh period and never
/// expire.
async fn registry_entries_are_complete_and_refreshed(url: &str, hash: &str) {
    let first = wait_registry(url, "three registry entries", |e| e.len() == 3).await;
    for (i, (key, v)) in first.iter().enumerate() {
        assert_eq!(key, &format!("node-{}", i + 1));
        assert_eq!(v["node_id"], i as u64 + 1);
        assert_eq!(v["schema_hash"], hash);
        assert_eq!(v["previous_hash"], "");
        assert_eq!(v["paused"], false);
        assert_eq!(v["paused_shards"], serde_json::json!([]));
        assert_eq!(v["harmonylite_version"], harmonylite::VERSION);
        assert!(v["updated_at"].as_str().unwrap().ends_with('Z'));
    }
    // Longer than a few refresh periods later, every entry was rewritten.
    let stamps: Vec<String> = first
        .iter()
        .map(|(_, v)| v["updated_at"].as_str().unwrap().to_owned())
        .collect();
    wait_registry(url, "entries refreshed", |now| {
        now.iter()
            .zip(&stamps)
            .all(|((_, v), before)| v["updated_at"].as_str().unwrap() > before.as_str())
    })
    .await;
    let client = async_nats::connect(url).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value("harmonylite-schema-registry")
        .await
        .unwrap();
    let cfg = kv.status().await.unwrap();
    assert_eq!(
        cfg.max_age(),
        Duration::ZERO,
        "entries never expire silently"
    );
}

/// `-schema-status` and `-schema-status-cluster` run next to node 1: through its ports file,
/// with `nats.urls`, and with neither.
fn status_commands_read_the_registry(cluster: &Cluster, url: &str, hash: &str) {
    let dir = cluster.dir.path();
    let node1 = &cluster.node(0).cfg;
    let toml = format!(
        "db_path = {:?}\nnode_id = 1\ndata_dir = {:?}\n",
        node1.db_path,
        node1.data_dir()
    );
    std::fs::write(dir.join("status.toml"), &toml).unwrap();
    let run = |flag: &str, config: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_harmonylite"))
            .arg("-config")
            .arg(dir.join(config))
            .arg(flag)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, err) = run("-schema-status", "status.toml");
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains(&format!("schema_hash:   {hash}")), "{text}");
    assert!(text.contains("previous_hash: none"), "{text}");
    assert!(text.contains("paused:        no"), "{text}");
    // No nats.urls: the node's own bundled server is found through its ports file.
    let (code, text, err) = run("-schema-status-cluster", "status.toml");
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("(3 nodes)"), "{text}");
    assert!(
        text.contains(&format!("all 3 nodes share schema hash {hash}")),
        "{text}"
    );
    // With nats.urls.
    std::fs::write(
        dir.join("urls.toml"),
        format!("{toml}[nats]\nurls = [{url:?}]\n"),
    )
    .unwrap();
    let (code, text, err) = run("--schema-status-cluster", "urls.toml");
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("node-3"), "{text}");
    // Without a running server and without urls, the command says so.
    std::fs::write(
        dir.join("none.toml"),
        format!(
            "db_path = {:?}\nnode_id = 9\ndata_dir = {:?}\n",
            node1.db_path,
            dir.join("nowhere")
        ),
    )
    .unwrap();
    let (code, _, err) = run("-schema-status-cluster", "none.toml");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no bundled nats-server of this node is running"),
        "{err}"
    );
}

/// The guide's "Option B": `harmonylite -cleanup -db PATH` after the DDL, next to a running
/// node. Any DDL is noticed within a second anyway, so the cleanup is refused (it would remove
/// capture under the running node, issue 19) and says so; the node re-installs capture by
/// itself and replication goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_next_to_a_running_node_is_refused_and_ddl_is_noticed_anyway() {
    let cluster =
        Cluster::start(2, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);", |_| {}).await;
    cluster.db(0).exec("INSERT INTO t VALUES (1, 'a')");
    cluster.wait_converged(&["t"], CONVERGE).await;
    let old = cluster.node(1).status.schema_hash();
    sqlite3(&cluster.db(1).path, "ALTER TABLE t ADD COLUMN w TEXT");
    sqlite3(&cluster.db(0).path, "ALTER TABLE t ADD COLUMN w TEXT");
    let out = Command::new(env!("CARGO_BIN_EXE_harmonylite"))
        .arg("-cleanup")
        .arg("-db")
        .arg(&cluster.db(0).path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("notices schema changes by itself"), "{err}");
    let new = wait_new_hash(&cluster, 0, &old).await;
    assert_eq!(wait_new_hash(&cluster, 1, &old).await, new);
    cluster.db(0).exec("INSERT INTO t VALUES (2, 'b', 'w2')");
    cluster.db(1).exec("UPDATE t SET w = 'w1' WHERE id = 1");
    cluster.wait_converged(&["t"], CONVERGE).await;
    assert!((0..2).all(|i| !paused(&cluster, i)));
    cluster.stop().await;
}
