//! A way in from Go HarmonyLite (issue 19): Go-format messages, built as the Go code builds them
//! (`harness::go_peer`), are never dropped: without `replication_log.go_compat` they pause their
//! shard and say why; with it they are applied, our own writes go out in the Go format on the
//! shard the Go peer's hash picks, and a cluster of Go nodes can be replaced one node at a time.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use harmonylite::config::Config;
use harmonylite::nats::server::EmbeddedOptions;

use crate::common::poll::poll;
use crate::harness::go_peer::{
    self, Col, GoPeer, TIME_BASE, go_message, go_shard, go_subject, int, stream_messages, text,
    time, time_text,
};
use crate::harness::nats::NatsServer;
use crate::harness::{AppDb, Node, assert_converged, converged, eventually, test_config};
use crate::web::readiness;

const SCHEMA: &str = "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, created_at DATETIME);";
const WAIT: Duration = Duration::from_secs(60);

/// Health check and dashboard on free loopback ports (no token needed on loopback).
fn with_health(cfg: &mut Config) {
    cfg.health_check.enable = true;
    cfg.health_check.bind = "127.0.0.1:0".into();
    cfg.admin.enable = true;
    cfg.admin.bind = "127.0.0.1:0".into();
}

/// A node on its own bundled server with `shards` shards and the users table.
async fn single_node(dir: &Path, shards: u32, go_compat: bool) -> Node {
    let mut cfg = test_config(dir, 5);
    cfg.replication_log.shards = shards;
    cfg.replication_log.go_compat = go_compat;
    with_health(&mut cfg);
    AppDb::open(&cfg.db_path).exec(SCHEMA);
    Node::start(cfg, EmbeddedOptions::default()).await
}

async fn js_of(node: &Node) -> jetstream::Context {
    jetstream::new(async_nats::connect(node.nats_url()).await.unwrap())
}

fn user(id: i64, name: &str, second: i64) -> Vec<Col> {
    vec![
        ("id", int(id)),
        ("name", text(name)),
        ("created_at", time(TIME_BASE + second)),
    ]
}

/// Seen 4: a Go node next to ours with the same names publishes on a subject one of our streams
/// holds (its shards count from 1). Its message used to be terminated as malformed, the change
/// lost for good; now the shard pauses there and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_switch_a_go_message_pauses_its_shard_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path(), 2, false).await;
    let js = js_of(&node).await;
    // Our shard 1's subject is the Go peer's shard 1's.
    let payload = go_message(77, 1, "insert", "users", &user(1, "from go", 0), true);
    js.publish(go_subject(1), payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let reasons = eventually("a reason on /health/ready", WAIT, async || {
        let (status, reasons) = readiness(&node).await;
        let found = reasons
            .iter()
            .any(|r| r.contains("Go HarmonyLite change from node 77"));
        if status == 503 && found {
            Ok(reasons)
        } else {
            Err(format!("{status} {reasons:?}"))
        }
    })
    .await;
    let reason = reasons.iter().find(|r| r.contains("node 77")).unwrap();
    assert!(reason.contains("stream harmonylite-changes-1"), "{reason}");
    assert!(
        reason.contains("replication_log.go_compat = true"),
        "{reason}"
    );
    assert_eq!(node.metrics.malformed_messages.get(), 0, "never dropped");
    assert_eq!(node.metrics.go_format_pauses.get(), 1);
    assert_eq!(
        node.app_db().count("users"),
        0,
        "not applied without the switch"
    );
    let text = node.render_metrics();
    assert!(
        text.lines()
            .any(|l| l.starts_with("harmonylite_go_format_pauses_total") && l.ends_with(" 1")),
        "{text}"
    );
    node.stop().await;
}

/// With the switch, Go messages are applied (time values as Go's driver stores them), and a
/// local write goes out in the Go format on the shard the Go peer's hash picks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_switch_go_changes_apply_and_ours_go_out_in_the_go_format() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path(), 2, true).await;
    let js = js_of(&node).await;
    let send = async |ty: &str, row: &[Col]| {
        let shard = go_shard("users", &row[..1], 2);
        let payload = go_message(77, 1, ty, "users", row, true);
        js.publish(go_subject(shard), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    };
    send("insert", &user(1, "one", 1)).await;
    send("insert", &user(2, "two", 2)).await;
    send("update", &user(1, "uno", 3)).await;
    send("delete", &user(2, "two", 2)).await;
    let db = node.app_db();
    eventually("Go changes applied", WAIT, async || {
        let names = db.query_string("SELECT group_concat(name) FROM users");
        (names.as_deref() == Some("uno"))
            .then_some(())
            .ok_or(format!("{names:?}"))
    })
    .await;
    assert_eq!(
        db.query_string("SELECT created_at FROM users WHERE id = 1"),
        Some(time_text(3))
    );
    assert_eq!(readiness(&node).await.0, 200);

    // Our write of user 1000: the Go hash sends it to Go shard 2 (and none to shard 1).
    let key = [("id", int(1000))];
    let shard = go_shard("users", &key, 2);
    db.exec("INSERT INTO users VALUES (1000, 'from rust', '2025-01-01')");
    let found = eventually("our write in the Go format", WAIT, async || {
        let msgs = stream_messages(&js, &go_peer::go_stream(shard)).await;
        msgs.into_iter()
            .find(|(ev, _)| ev.row.iter().any(|(k, v)| k == "id" && *v == int(1000)))
            .ok_or("not yet")
    })
    .await;
    let (event, copy) = found;
    assert_eq!(event.from, 5);
    assert_eq!(event.table, "users");
    assert!(["insert", "update"].contains(&event.ty.as_str()));
    assert!(event.row.contains(&("name".to_owned(), text("from rust"))));
    assert_eq!(copy.as_deref(), Some("5"), "marked as a copy for our nodes");
    let other = go_peer::go_stream(3 - shard);
    let elsewhere = stream_messages(&js, &other).await;
    assert!(
        elsewhere.iter().all(|(ev, _)| ev.from != 5),
        "only on the Go hash's shard"
    );
    // Ours moved out of the Go peer's way.
    js.get_stream("harmonylite-changes-rs-0").await.unwrap();
    assert!(node.metrics.go_format_published.get() >= 1);
    node.stop().await;
}

/// A cluster of three Go nodes is replaced one node at a time by Rust nodes with the switch, on
/// the Go nodes' own databases, while every node keeps writing; all databases converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_cluster_is_taken_over_one_node_at_a_time() {
    let _permit = crate::harness::CLUSTERS.acquire().await.unwrap();
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let db_of = |i: u64| dir.path().join(format!("node{i}.db"));
    for i in 1..=3 {
        AppDb::open(&db_of(i)).exec(SCHEMA);
    }
    let mut go: Vec<Option<GoPeer>> = Vec::new();
    for i in 1..=3 {
        go.push(Some(GoPeer::start(&server.url(), i, &db_of(i), 2).await));
    }
    let mut rust: Vec<Node> = Vec::new();
    let all = || (1..=3).map(|i| AppDb::open(&db_of(i))).collect::<Vec<_>>();
    let wait_converged = async |what: &str| {
        let check = async || {
            let dbs = all();
            let refs: Vec<&AppDb> = dbs.iter().collect();
            converged(&refs, &["users"])
        };
        if poll(WAIT, check).await.is_err() {
            let dbs = all();
            eprintln!("not converged: {what}");
            assert_converged(&dbs.iter().collect::<Vec<_>>(), &["users"]);
        }
    };
    let mut next_id = 1;
    for round in 0..4 {
        // Every running node writes keys of its own, and one shared key changes hands.
        for (i, peer) in go.iter().enumerate() {
            if let Some(peer) = peer {
                let id = next_id + i as i64;
                peer.upsert("users", &[("id", int(id))], &user(id, "go", round))
                    .await;
            }
        }
        for node in &rust {
            let id = next_id + node.cfg.node_id.unwrap() as i64 - 1;
            node.app_db().execute(
                "INSERT INTO users VALUES (?1, 'rust', ?2)",
                rusqlite::params![id, time_text(round)],
            );
        }
        next_id += 3;
        wait_converged("round writes").await;
        let shared = format!("round {round}");
        write_shared(&go, &rust, round, &shared).await;
        wait_converged("shared key").await;
        assert_eq!(
            AppDb::open(&db_of(1)).query_string("SELECT name FROM users WHERE id = 0"),
            Some(shared)
        );
        if round == 3 {
            break;
        }
        // Replace Go node `round + 1` by a Rust node on its database.
        let n = round as u64 + 1;
        go[round as usize].take().unwrap().stop();
        let mut cfg = test_config(dir.path(), n);
        cfg.nats.urls = vec![server.url()];
        cfg.replication_log.shards = 2;
        cfg.replication_log.go_compat = true;
        rust.push(Node::start(cfg, EmbeddedOptions::default()).await);
    }
    // A delete made by the last Rust node reaches the others.
    rust[2].app_db().exec("DELETE FROM users WHERE id = 1");
    wait_converged("delete").await;
    assert_eq!(AppDb::open(&db_of(1)).count("users"), 12);
    for node in rust {
        node.stop().await;
    }
}

/// The shared key 0 changes hands: a Go node writes it in even rounds (while one runs), a Rust
/// node in odd ones.
async fn write_shared(go: &[Option<GoPeer>], rust: &[Node], round: i64, name: &str) {
    match (go.iter().flatten().next(), rust.first()) {
        (Some(peer), _) if round % 2 == 0 || rust.is_empty() => {
            peer.upsert("users", &[("id", int(0))], &user(0, name, 0))
                .await
        }
        (_, Some(node)) => {
            node.app_db()
                .execute("UPDATE users SET name = ?1 WHERE id = 0", [name]);
        }
        (_, None) => unreachable!("a Go node runs while no Rust node does"),
    }
}

/// Seen 4, the other half: next to a Go cluster that compresses (its streams are
/// `harmonylite-changes-c-<n>`), our shard 1 cannot get its subject. The start fails naming the
/// stream that holds it and the way out, instead of retrying for a minute with JetStream's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_taken_by_a_go_stream_fails_the_start_with_the_way_out() {
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let go_db = dir.path().join("go.db");
    AppDb::open(&go_db).exec(SCHEMA);
    let peer = GoPeer::start(&server.url(), 77, &go_db, 2).await;
    let mut cfg = test_config(dir.path(), 5);
    cfg.nats.urls = vec![server.url()];
    cfg.replication_log.shards = 2;
    let settings = harmonylite::node::Settings::new(cfg.clone(), EmbeddedOptions::default());
    let status = harmonylite::status::NodeStatus::new(cfg.node_id());
    let metrics = crate::harness::node::metrics_for(&cfg);
    let run = harmonylite::node::run(settings, status, metrics, std::future::pending());
    let ended = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the start fails at once");
    let error = format!("{:#}", ended.unwrap_err());
    assert!(error.contains("harmonylite-changes-c-1"), "{error}");
    assert!(
        error.contains("replication_log.go_compat = true"),
        "{error}"
    );
    peer.stop();
}
