//! The replication engine on real 3-node clusters: every write made by an application connection
//! reaches every node, concurrent writers converge, and nothing is lost across stops, NATS outages
//! and bad messages.

use std::time::Duration;

use async_nats::jetstream;
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;

use crate::harness::nats::NatsServer;
use crate::harness::{AppDb, Cluster, Node, eventually, test_config};

// Generous: CI shares two cores between the build, three nodes and their servers.
const CONVERGE: Duration = Duration::from_secs(60);

const BOOKS: &str = "CREATE TABLE books(id INTEGER PRIMARY KEY, title TEXT NOT NULL, year INTEGER);
                     CREATE TABLE authors(name TEXT PRIMARY KEY, born INTEGER);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_deletes_and_bulk_reach_every_node() {
    let cluster = Cluster::start(3, BOOKS, |_| {}).await;
    let mut a = cluster.db(0);
    a.exec("INSERT INTO books VALUES (1, 'Dune', 1965), (2, 'Emma', 1815)");
    a.exec("INSERT INTO authors VALUES ('Herbert', 1920)");
    cluster
        .wait_converged(&["books", "authors"], CONVERGE)
        .await;
    assert_eq!(cluster.db(2).count("books"), 2);

    cluster
        .db(1)
        .exec("UPDATE books SET year = 1966 WHERE id = 1; DELETE FROM books WHERE id = 2");
    cluster
        .wait_converged(&["books", "authors"], CONVERGE)
        .await;
    assert_eq!(
        cluster
            .db(0)
            .query_i64("SELECT year FROM books WHERE id = 1"),
        Some(1966)
    );
    assert_eq!(cluster.db(2).count("books"), 1);

    a.tx(|tx| {
        let mut st = tx.prepare("INSERT INTO books VALUES (?1, ?2, ?3)").unwrap();
        for i in 100..5100 {
            st.execute(rusqlite::params![i, format!("title {i}"), i])
                .unwrap();
        }
    });
    cluster
        .wait_converged(&["books", "authors"], CONVERGE)
        .await;
    assert_eq!(cluster.db(1).count("books"), 5001);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_update_wins_everywhere() {
    let cluster = Cluster::start(3, BOOKS, |_| {}).await;
    cluster
        .db(0)
        .exec("INSERT INTO books VALUES (1, 'first', 1)");
    cluster.wait_converged(&["books"], CONVERGE).await;
    // Two nodes update the same row 100 ms apart; both changes cross in flight. The sleep lets
    // time pass on purpose (the second update must be the later one); it waits for nothing.
    cluster
        .db(1)
        .exec("UPDATE books SET title = 'earlier' WHERE id = 1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster
        .db(2)
        .exec("UPDATE books SET title = 'later' WHERE id = 1");
    cluster.wait_converged(&["books"], CONVERGE).await;
    for i in 0..3 {
        assert_eq!(
            cluster
                .db(i)
                .query_string("SELECT title FROM books WHERE id = 1")
                .as_deref(),
            Some("later")
        );
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_key_change_moves_the_row_everywhere() {
    let cluster = Cluster::start(3, BOOKS, |_| {}).await;
    cluster
        .db(0)
        .exec("INSERT INTO authors VALUES ('Austen', 1775)");
    cluster.wait_converged(&["authors"], CONVERGE).await;
    cluster
        .db(1)
        .exec("UPDATE authors SET name = 'Jane Austen' WHERE name = 'Austen'");
    cluster.wait_converged(&["authors"], CONVERGE).await;
    for i in 0..3 {
        assert_eq!(
            cluster.db(i).dump("authors"),
            vec!["t[74, 97, 110, 101, 32, 65, 117, 115, 116, 101, 110]|i1775".to_owned()]
        );
    }
    cluster.stop().await;
}

const KINDS: &str = "
    CREATE TABLE \"order\"(\"group\" TEXT, \"my col\" INTEGER, v, PRIMARY KEY(\"group\", \"my col\"));
    CREATE TABLE plain(v);
    CREATE TABLE wr(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
    CREATE TABLE \"my table\"(id INTEGER PRIMARY KEY, v);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_names_composite_rowid_and_without_rowid_tables_with_every_value_type() {
    let cluster = Cluster::start(3, KINDS, |_| {}).await;
    let a = cluster.db(0);
    a.exec(
        "INSERT INTO \"order\" VALUES ('g', 1, NULL), ('g', 2, 9223372036854775807), ('h', -1, -9223372036854775808);
         INSERT INTO plain VALUES (1.5), ('text ☃ 🎉 \u{1}\t'), (x'00ff10'), (NULL), (CAST(x'ff' AS TEXT));
         INSERT INTO wr VALUES ('k1', 0.1), ('k2', 'two');
         INSERT INTO \"my table\" VALUES (1, 'x');",
    );
    a.execute(
        "INSERT INTO plain VALUES (?1)",
        [String::from("nul\0inside")],
    );
    let tables = ["order", "plain", "wr", "my table"];
    cluster.wait_converged(&tables, CONVERGE).await;
    a.exec("DELETE FROM plain WHERE v IS NULL; UPDATE wr SET k = 'k3' WHERE k = 'k1'");
    cluster.wait_converged(&tables, CONVERGE).await;
    assert_eq!(cluster.db(2).count("plain"), 5);
    cluster.stop().await;
}

/// Random inserts, updates, deletes and key changes from all three nodes at once, on two tables;
/// the content must end identical everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_random_writers_on_all_nodes_converge() {
    let schema = "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT, n INTEGER);
                  CREATE TABLE pairs(a TEXT, b INTEGER, v, PRIMARY KEY(a, b));";
    let cluster = Cluster::start(3, schema, |_| {}).await;
    for seed in [1u64, 2, 3] {
        let writers: Vec<_> = (0..3)
            .map(|i| {
                let path = cluster.db(i).path.clone();
                std::thread::spawn(move || random_workload(&path, seed * 10 + i as u64, 300))
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        cluster.wait_converged(&["kv", "pairs"], CONVERGE).await;
    }
    cluster.stop().await;
}

/// A small deterministic PRNG (xorshift) so seeds reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn random_workload(path: &std::path::Path, seed: u64, ops: usize) {
    let mut db = AppDb::open(path);
    let mut rng = Rng::new(seed);
    for op in 0..ops {
        let k = rng.below(40) as i64; // few keys: plenty of contention between nodes
        let txn = rng.below(4) == 0;
        let stmts = if txn { 1 + rng.below(5) } else { 1 };
        db.tx(|tx| {
            for _ in 0..stmts {
                match rng.below(6) {
                    0 | 1 => {
                        tx.execute(
                            "INSERT INTO kv(k, v, n) VALUES (?1, ?2, ?3) ON CONFLICT(k) DO UPDATE SET v = excluded.v, n = n + 1",
                            rusqlite::params![k, format!("s{seed}-o{op}"), op as i64],
                        )
                        .unwrap();
                    }
                    2 => {
                        tx.execute("DELETE FROM kv WHERE k = ?1", [k]).unwrap();
                    }
                    3 => {
                        let to = rng.below(40) as i64 + 1000;
                        let _ = tx.execute("UPDATE kv SET k = ?2 WHERE k = ?1", [k, to]);
                    }
                    4 => {
                        tx.execute(
                            "INSERT OR IGNORE INTO pairs(a, b, v) VALUES (?1, ?2, ?3)",
                            rusqlite::params![format!("a{}", k % 5), k % 7, seed as i64],
                        )
                        .unwrap();
                    }
                    _ => {
                        tx.execute(
                            "UPDATE pairs SET v = ?3 WHERE a = ?1 AND b = ?2",
                            rusqlite::params![format!("a{}", k % 5), k % 7, op as i64],
                        )
                        .unwrap();
                    }
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_while_a_node_is_stopped_flow_both_ways_when_it_starts() {
    // Three replicas, as in production: the stream stays available while one server is down (a
    // single-replica stream may live on exactly the server that is stopped).
    let mut cluster = Cluster::start(3, BOOKS, |cfg| cfg.replication_log.replicas = Some(3)).await;
    cluster.stop_node(2).await;
    // Written while node 3's harmonylite is down: the triggers still capture on node 3.
    cluster
        .db(2)
        .exec("INSERT INTO books VALUES (30, 'written offline', 3)");
    cluster
        .db(0)
        .exec("INSERT INTO books VALUES (10, 'written meanwhile', 1)");
    cluster
        .wait_converged_among(&[0, 1], &["books"], CONVERGE)
        .await;
    cluster.start_node(2).await;
    cluster.wait_converged(&["books"], CONVERGE).await;
    assert_eq!(cluster.db(1).count("books"), 2);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_present_before_capture_replicate_once() {
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);";
    // Node 1's file has rows before harmonylite ever ran on it.
    let cluster = Cluster::start(3, schema, |cfg| {
        if cfg.node_id == Some(1) {
            AppDb::open(&cfg.db_path).exec("INSERT INTO t VALUES (1, 'old'), (2, 'older')");
        }
    })
    .await;
    cluster.wait_converged(&["t"], CONVERGE).await;
    assert_eq!(cluster.db(2).count("t"), 2);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_skipped_and_counted_without_stalling() {
    let cluster = Cluster::start(2, BOOKS, |_| {}).await;
    let client = async_nats::connect(cluster.node(0).nats_url())
        .await
        .unwrap();
    let js = jetstream::new(client);
    let subject = "harmonylite-change-log-0";
    for payload in [
        b"garbage bytes".to_vec(),
        vec![],
        b"HL\x01\x00\xa1\x61x\x01".to_vec(), // our header, foreign CBOR
        b"HL\x63\x00".to_vec(),              // unknown format version
        b"\x1f\x8b\x08\x00compressed?".to_vec(),
    ] {
        js.publish(subject, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    cluster
        .db(0)
        .exec("INSERT INTO books VALUES (1, 'after the garbage', 1)");
    cluster.wait_converged(&["books"], CONVERGE).await;
    eventually("malformed counted", CONVERGE, async || {
        let n = cluster.node(1).metrics.malformed_messages.get();
        if n >= 5 { Ok(()) } else { Err(n) }
    })
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_conflict_is_journaled_and_all_nodes_agree() {
    let schema = "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);";
    let mut cluster = Cluster::start(3, schema, |cfg| cfg.replication_log.replicas = Some(3)).await;
    cluster.stop_node(1).await;
    cluster
        .db(0)
        .exec("INSERT INTO users VALUES (1, 'a@x', 'from node 1')");
    cluster
        .db(1)
        .exec("INSERT INTO users VALUES (2, 'a@x', 'from node 2')");
    cluster.start_node(1).await;
    cluster.wait_converged(&["users"], CONVERGE).await;
    assert_eq!(
        cluster.db(0).count("users"),
        1,
        "one of the two rows wins everywhere"
    );
    let journaled: i64 = (0..3)
        .map(|i| {
            cluster
                .db(i)
                .query_i64("SELECT count(*) FROM __harmonylite__conflicts WHERE kind = 'unique'")
                .unwrap_or(0)
        })
        .sum();
    assert!(journaled >= 1, "the losing row is in the conflict journal");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoincrement_collisions_are_detected() {
    let schema = "CREATE TABLE notes(id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT);";
    let mut cluster = Cluster::start(2, schema, |_| {}).await;
    cluster.stop_node(1).await;
    cluster
        .db(0)
        .exec("INSERT INTO notes(body) VALUES ('node 1 note')");
    cluster
        .db(1)
        .exec("INSERT INTO notes(body) VALUES ('node 2 note')");
    cluster.start_node(1).await;
    cluster.wait_converged(&["notes"], CONVERGE).await;
    eventually("collision journaled", CONVERGE, async || {
        let n: i64 = (0..2)
            .map(|i| cluster.db(i).query_i64("SELECT count(*) FROM __harmonylite__conflicts WHERE kind = 'key_collision'").unwrap_or(0))
            .sum();
        if n >= 1 { Ok(()) } else { Err(n) }
    })
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_false_keeps_changes_local_and_replicate_false_applies_nothing() {
    let cluster = Cluster::start(3, BOOKS, |cfg| match cfg.node_id {
        Some(2) => cfg.publish = false,
        Some(3) => cfg.replicate = false,
        _ => {}
    })
    .await;
    cluster
        .db(1)
        .exec("INSERT INTO books VALUES (2, 'replica-local', 2)");
    cluster
        .db(0)
        .exec("INSERT INTO books VALUES (1, 'from node 1', 1)");
    cluster
        .db(2)
        .exec("INSERT INTO books VALUES (3, 'from node 3', 3)");
    eventually("node 2 got rows 1 and 3", CONVERGE, async || {
        let n = cluster.db(1).count("books");
        if n == 3 { Ok(()) } else { Err(n) }
    })
    .await;
    eventually("node 1 got row 3", CONVERGE, async || {
        let n = cluster.db(0).count("books");
        if n == 2 { Ok(()) } else { Err(n) }
    })
    .await;
    assert_eq!(
        cluster
            .db(0)
            .query_i64("SELECT count(*) FROM books WHERE id = 2"),
        Some(0)
    );
    assert_eq!(
        cluster.db(2).count("books"),
        1,
        "replicate = false applies nothing"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_keeps_local_writes_and_everything_flows_after() {
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let nodes = two_nodes_on(&server, dir.path()).await;
    let a = nodes[0].app_db();
    let b = nodes[1].app_db();
    a.exec("INSERT INTO books VALUES (1, 'before', 1)");
    wait_count(&b, "books", 1, CONVERGE).await;

    server.pause();
    for i in 2..50 {
        a.execute("INSERT INTO books VALUES (?1, 'during outage', ?1)", [i]);
    }
    assert_eq!(
        a.count("books"),
        49,
        "local writes keep working while NATS is unreachable"
    );
    server.resume();
    wait_count(&b, "books", 49, Duration::from_secs(60)).await;
    for node in nodes {
        assert!(matches!(node.stop().await, Outcome::Stopped));
    }
}

/// Two nodes with the books schema on one external NATS server.
async fn two_nodes_on(server: &NatsServer, dir: &std::path::Path) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in 1..=2 {
        let mut cfg = test_config(dir, id);
        cfg.nats.urls = vec![server.url()];
        AppDb::open(&cfg.db_path).exec(BOOKS);
        nodes.push(Node::start(cfg, EmbeddedOptions::default()).await);
    }
    nodes
}

/// Waits until `db`'s `table` holds `rows` rows.
async fn wait_count(db: &AppDb, table: &str, rows: i64, deadline: Duration) {
    eventually(
        &format!("{rows} rows in {table}"),
        deadline,
        async || match db.count(table) {
            n if n == rows => Ok(()),
            n => Err(n),
        },
    )
    .await;
}

/// A running node records its publish watermarks at most every second (a restart before then
/// only publishes those rows again); a stop records them, so a restart scans from where the
/// node stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_records_the_publish_watermarks() {
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = two_nodes_on(&server, dir.path()).await;
    let a = nodes[0].app_db();
    let b = nodes[1].app_db();
    for i in 1..=20 {
        a.execute("INSERT INTO books VALUES (?1, 'recorded', ?1)", [i]);
    }
    wait_count(&b, "books", 20, CONVERGE).await;
    let node_b = nodes.pop().unwrap();
    assert!(matches!(
        nodes.pop().unwrap().stop().await,
        Outcome::Stopped
    ));
    let newest = a
        .query_i64("SELECT max(ver) FROM __harmonylite__books_clock")
        .unwrap();
    let recorded = a.query_i64("SELECT ver FROM __harmonylite__published WHERE tbl = 'books'");
    assert_eq!(
        recorded,
        Some(newest),
        "the stopped node's recorded watermark is below its newest published row"
    );
    assert!(matches!(node_b.stop().await, Outcome::Stopped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_larger_than_one_message_still_replicates() {
    let schema = "CREATE TABLE files(name TEXT PRIMARY KEY, body BLOB);";
    let cluster = Cluster::start(2, schema, |_| {}).await;
    // Incompressible, three times the 1 MiB payload limit.
    let mut rng = Rng::new(7);
    let body: Vec<u8> = (0..3 * 1024 * 1024).map(|_| rng.next() as u8).collect();
    cluster.db(0).execute(
        "INSERT INTO files VALUES ('big', ?1), ('small', x'01')",
        [&body],
    );
    cluster.wait_converged(&["files"], CONVERGE).await;
    let got: Vec<u8> = rusqlite::Connection::open(&cluster.db(1).path)
        .unwrap()
        .query_row("SELECT body FROM files WHERE name = 'big'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(got, body);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_for_a_table_missing_here_is_skipped_and_journaled() {
    use crate::harness::messages::foreign_row;
    use harmonylite::change::Value;
    use harmonylite::replication::wire;
    let cluster = Cluster::start(2, BOOKS, |_| {}).await;
    let batch = foreign_row(cluster.node(1), "ghost", "v", Value::Null);
    let client = async_nats::connect(cluster.node(0).nats_url())
        .await
        .unwrap();
    let js = jetstream::new(client);
    let payload = wire::encode(&batch, true).unwrap();
    js.publish("harmonylite-change-log-0", payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    cluster
        .db(0)
        .exec("INSERT INTO books VALUES (1, 'after the ghost', 1)");
    cluster.wait_converged(&["books"], CONVERGE).await;
    let db = cluster.db(1);
    eventually("missing table journaled", CONVERGE, async || {
        match db.query_i64("SELECT count(*) FROM __harmonylite__conflicts WHERE kind = 'missing_table' AND tbl = 'ghost'") {
            Some(n) if n >= 1 => Ok(()),
            other => Err(other),
        }
    })
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_both_carry_changes_and_nodes_converge() {
    let cluster = Cluster::start(2, BOOKS, |cfg| cfg.replication_log.shards = 2).await;
    let mut db = cluster.db(0);
    db.tx(|tx| {
        for i in 0..200 {
            tx.execute("INSERT INTO books VALUES (?1, 'x', ?1)", [i])
                .unwrap();
        }
    });
    cluster.wait_converged(&["books"], CONVERGE).await;
    let client = async_nats::connect(cluster.node(0).nats_url())
        .await
        .unwrap();
    let js = jetstream::new(client);
    for shard in 0..2 {
        let mut stream = js
            .get_stream(format!("harmonylite-changes-{shard}"))
            .await
            .unwrap();
        let info = stream.info().await.unwrap();
        assert!(info.state.messages > 0, "shard {shard} carried nothing");
        assert_eq!(
            info.config.subjects,
            vec![format!("harmonylite-change-log-{shard}")]
        );
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_existing_updates_a_mismatched_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), 1);
    cfg.replication_log.max_entries = 1000;
    let node = Node::start(cfg.clone(), EmbeddedOptions::default()).await;
    assert!(matches!(node.stop().await, Outcome::Stopped));
    cfg.replication_log.max_entries = 500;
    // Without update_existing the stream keeps its settings (a warning is logged).
    let node = Node::start(cfg.clone(), EmbeddedOptions::default()).await;
    let max = stream_max_messages(&node).await;
    assert_eq!(max, 1000);
    assert!(matches!(node.stop().await, Outcome::Stopped));
    cfg.replication_log.update_existing = true;
    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    assert_eq!(stream_max_messages(&node).await, 500);
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

async fn stream_max_messages(node: &Node) -> i64 {
    let client = async_nats::connect(node.nats_url()).await.unwrap();
    let js = jetstream::new(client);
    let mut stream = js.get_stream("harmonylite-changes-0").await.unwrap();
    stream.info().await.unwrap().config.max_messages
}

/// Shard 0's change stream, through `node`'s server.
async fn changes_stream(node: &Node) -> jetstream::stream::Stream {
    let client = async_nats::connect(node.nats_url()).await.unwrap();
    jetstream::new(client)
        .get_stream("harmonylite-changes-0")
        .await
        .unwrap()
}

/// A consumer that receives heartbeats and no messages while its stream holds more (here paused
/// through the JetStream API for an hour; seen in the fault program after a server restart) is
/// deleted and set up again at the database's floor, and the node catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_delivering_is_set_up_again() {
    let cluster = Cluster::start(2, BOOKS, |_| {}).await;
    cluster
        .db(0)
        .exec("INSERT INTO books VALUES (1, 'Dune', 1965)");
    cluster.wait_converged(&["books"], CONVERGE).await;

    let stream = changes_stream(cluster.node(1)).await;
    use async_nats::datetime;
    let hour = datetime::add_std_duration(datetime::now(), Duration::from_secs(3600)).unwrap();
    let paused = stream
        .pause_consumer("harmonylite-node-2", hour)
        .await
        .unwrap();
    assert!(paused.paused, "the consumer is paused");

    cluster
        .db(0)
        .exec("INSERT INTO books VALUES (2, 'Emma', 1815)");
    cluster.wait_converged(&["books"], CONVERGE).await;
    assert!(cluster.node(1).metric("harmonylite_consumer_stalls_total") >= Some(1.0));
    // The node whose consumer delivered is never taken for stalled.
    assert_eq!(
        cluster.node(0).metric("harmonylite_consumer_stalls_total"),
        Some(0.0)
    );
    let info = stream.consumer_info("harmonylite-node-2").await.unwrap();
    assert!(!info.paused, "the consumer set up again is not paused");
    cluster.stop().await;
}

/// A durable consumer has one replica (its state never decides a position), so it lives on one
/// server, which need not be its node's. While that server is away (its node stopped), the node
/// still receives what the others write: its consumer, which no longer answers, is created again
/// on a server that does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_server_is_away_is_created_again_elsewhere() {
    let mut cluster = Cluster::start(3, BOOKS, |cfg| cfg.replication_log.replicas = Some(3)).await;
    cluster
        .db(0)
        .exec("INSERT INTO books VALUES (1, 'Dune', 1965)");
    cluster.wait_converged(&["books"], CONVERGE).await;

    let stream = changes_stream(cluster.node(0)).await;
    // A node whose consumer sits on another node's server (`c`, `s`); the consumers are set up
    // again until one is (where JetStream places a one-replica consumer is its choice).
    let mut away = None;
    for _ in 0..20 {
        for c in 0..3 {
            let info = stream
                .consumer_info(format!("harmonylite-node-{}", c + 1))
                .await
                .unwrap();
            assert_eq!(
                info.config.num_replicas, 1,
                "one replica: {:?}",
                info.config
            );
            let leader = info.cluster.and_then(|cl| cl.leader).expect("placed");
            let s = (0..3)
                .find(|s| leader == format!("harmonylite-node-{}", s + 1))
                .expect("a node's server");
            if s != c {
                away = Some((c, s));
            }
        }
        if away.is_some() {
            break;
        }
        // Every consumer on its own node's server: one is deleted, and its node creates it
        // again (wherever JetStream puts it this time) once it finds it gone.
        stream.delete_consumer("harmonylite-node-2").await.unwrap();
        eventually("node 2's consumer set up again", CONVERGE, async || {
            stream
                .consumer_info("harmonylite-node-2")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
    }
    let (c, s) = away.expect("a consumer placed on another node's server within 20 setups");
    let w = (0..3).find(|w| *w != c && *w != s).unwrap();

    cluster.stop_node(s).await;
    cluster
        .db(w)
        .exec("INSERT INTO books VALUES (2, 'Emma', 1815)");
    cluster
        .wait_converged_among(&[w, c], &["books"], CONVERGE)
        .await;
    assert_eq!(cluster.db(c).count("books"), 2);

    cluster.start_node(s).await;
    cluster.wait_converged(&["books"], CONVERGE).await;
    cluster.stop().await;
}
