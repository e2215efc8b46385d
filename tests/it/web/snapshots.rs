//! The Snapshots page's API over plain HTTP: taking snapshots with the bearer token and the
//! no-script form, the history they leave, and an unreachable store shown without its secret.
//! The browser path is in `dashboard_pages_in_chromium`; one-at-a-time (409) is a unit test of
//! the page's state machine (`src/web/snapshots.rs`).

use std::net::SocketAddr;
use std::path::Path;

use harmonylite::config::{Config, Secret, SnapshotStore};
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;
use serde_json::Value;

use super::{BOOKS, DEADLINE, TOKEN, admin_addr, http, serve_all};
use crate::harness::nats::NatsServer;
use crate::harness::{AppDb, ClosedPort, Node, eventually, test_config};

/// Snapshots on, into a local directory.
pub fn fs_snapshots(cfg: &mut Config, dir: &Path) {
    cfg.snapshot.enabled = true;
    cfg.snapshot.store = SnapshotStore::Fs;
    cfg.snapshot.fs.path = dir.to_string_lossy().into_owned();
}

/// Polls `/api/snapshots` until a requested snapshot other than `after` finished; returns the
/// view. `auth` is the `Authorization` value, if any.
pub async fn wait_snapshot_done(
    addr: SocketAddr,
    auth: Option<&str>,
    after: Option<&str>,
) -> Value {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    eventually("a snapshot finished", DEADLINE, async || {
        let v = http::get_with(addr, "/api/snapshots", &headers)
            .await
            .json();
        let id = v["last"]["id"].as_str();
        let finished = v["running"].is_null() && !v["last"].is_null();
        if finished && (id.is_none() || id != after) {
            Ok(v)
        } else {
            Err(v)
        }
    })
    .await
}

/// What the page shows for a manifest's `sequences` (a lone node applied none: empty).
pub fn sequences_text(sequences: &Value) -> String {
    let map = sequences.as_object().expect("sequences is a map");
    map.iter()
        .map(|(stream, seq)| format!("{stream}: {}", seq.as_u64().expect("a sequence")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_taken_and_listed_over_http() {
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), 1);
    cfg.nats.urls = vec![server.url()];
    serve_all(&mut cfg);
    cfg.admin.auth_token = Secret::new(TOKEN.to_owned());
    fs_snapshots(&mut cfg, store.path());
    AppDb::open(&cfg.db_path).exec(BOOKS);
    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    node.app_db()
        .exec("INSERT INTO books VALUES (1, 'Dune', 1965), (2, 'Emma', 1815)");
    let addr = admin_addr(&node);
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];

    let empty = http::get_with(addr, "/api/snapshots", &auth).await.json();
    assert_eq!(empty["enabled"], true, "{empty}");
    assert_eq!(empty["available"], true);
    assert_eq!(
        empty["store"],
        format!("fs {}", store.path().display()),
        "{empty}"
    );
    assert!(empty["leader"].is_boolean());
    assert_eq!(empty["history"], serde_json::json!([]));
    assert!(empty["store_error"].is_null(), "{empty}");
    assert!(empty["running"].is_null() && empty["last"].is_null());

    // Refused without the token, as every action.
    let anonymous = http::request(addr, "POST", "/api/snapshots", &[], "").await;
    assert_eq!(anonymous.status, 401);
    let wrong = [("Authorization", "Bearer nope")];
    let wrong = http::request(addr, "POST", "/api/snapshots", &wrong, "").await;
    assert_eq!(wrong.status, 401);

    // The JSON action answers at once; the view then shows the outcome and the history.
    let started = http::request(addr, "POST", "/api/snapshots", &auth, "").await;
    assert_eq!(started.status, 202, "{}", started.body);
    assert_eq!(started.json()["message"], "Snapshot started.");
    let v = wait_snapshot_done(addr, Some(&bearer), None).await;
    assert_eq!(v["last"]["ok"], true, "{v}");
    let first = v["last"]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["last"]["message"], format!("Snapshot {first} uploaded"));
    let h = &v["history"][0];
    assert_eq!(h["id"], first.as_str(), "{v}");
    assert_eq!(h["node_id"], 1);
    assert_eq!(h["this_node"], true);
    assert!(h["created"].as_str().unwrap().ends_with('Z'));
    assert!(h["size"].as_u64().unwrap() > 0);
    assert!(h["size_human"].as_str().unwrap().ends_with('B'));
    assert_eq!(h["schema_hash_short"].as_str().unwrap().len(), 12);
    assert_eq!(h["sequences_text"], sequences_text(&h["sequences"]), "{h}");

    // The no-script form (bearer: no CSRF field needed) re-renders the page with the outcome.
    let form = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let page = http::request(addr, "POST", "/snapshots", &form, "csrf=").await;
    assert_eq!(page.status, 202, "{}", page.body);
    assert!(page.body.contains("Snapshot started."), "{}", page.body);
    assert!(page.body.contains(&first), "the page lists the history");
    let v = wait_snapshot_done(addr, Some(&bearer), Some(&first)).await;
    assert_eq!(v["last"]["ok"], true, "{v}");
    let second = v["last"]["id"].as_str().unwrap();
    let ids: Vec<&str> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second, first.as_str()], "newest first");
    let page = http::get_with(addr, "/snapshots", &auth).await;
    assert!(page.body.contains(&format!("Snapshot {second} uploaded")));

    newest_snapshot_is_exported_by_every_node(&server, store.path(), &node, second).await;
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

/// Every node exports the newest snapshot's time (the alert rules compare it with the
/// interval): `node`, which took `second`, at once; another node from the store's history
/// when it starts.
async fn newest_snapshot_is_exported_by_every_node(
    server: &NatsServer,
    store: &Path,
    node: &Node,
    second: &str,
) {
    let taken_s = second.split('-').next().unwrap().parse::<f64>().unwrap() / 1000.0;
    let newest = "harmonylite_snapshot_newest_timestamp_seconds";
    assert_eq!(node.metric(newest), Some(taken_s));
    assert_eq!(
        node.metric("harmonylite_snapshot_interval_seconds"),
        Some(0.0),
        "no periodic snapshots configured"
    );
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = test_config(other_dir.path(), 2);
    other.nats.urls = vec![server.url()];
    fs_snapshots(&mut other, store);
    other.snapshot.interval = 3_600_000;
    AppDb::open(&other.db_path).exec(BOOKS);
    let other = Node::start(other, EmbeddedOptions::default()).await;
    eventually(
        "node 2 reads the newest snapshot's time",
        DEADLINE,
        async || match other.metric(newest) {
            Some(t) if t == taken_s => Ok(()),
            got => Err(format!("{got:?}")),
        },
    )
    .await;
    assert_eq!(
        other.metric("harmonylite_snapshot_interval_seconds"),
        Some(3600.0)
    );
    assert!(matches!(other.stop().await, Outcome::Stopped));
}

#[tokio::test]
async fn unreachable_store_is_shown_without_its_secret() {
    const SECRET: &str = "s3-secret-9f2a7c";
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port: the store refuses connections for the whole test.
    let closed = ClosedPort::bind();
    let mut cfg = test_config(dir.path(), 1);
    cfg.nats.urls = vec![server.url()];
    serve_all(&mut cfg);
    cfg.admin.auth_token = Secret::new(TOKEN.to_owned());
    cfg.snapshot.enabled = true;
    cfg.snapshot.store = SnapshotStore::S3;
    cfg.snapshot.s3.endpoint = format!("http://127.0.0.1:{}", closed.port);
    cfg.snapshot.s3.bucket = "snaps".to_owned();
    cfg.snapshot.s3.force_path_style = true;
    cfg.snapshot.s3.access_key = "AKIAWEBTEST".to_owned();
    cfg.snapshot.s3.secret = Secret::new(SECRET.to_owned());
    AppDb::open(&cfg.db_path).exec(BOOKS);
    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    let addr = admin_addr(&node);
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];

    let res = http::get_with(addr, "/api/snapshots", &auth).await;
    assert_eq!(res.status, 200);
    let v = res.json();
    let error = v["store_error"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(error.contains("snapshot store s3 bucket snaps"), "{error}");
    assert_eq!(v["history"], serde_json::json!([]));
    assert!(!res.body.contains(SECRET), "{}", res.body);
    let page = http::get_with(addr, "/snapshots", &auth).await;
    assert!(page.body.contains("cannot set up"), "{}", page.body);
    assert!(!page.body.contains(SECRET));

    // The action fails, and says why, without the secret either.
    let started = http::request(addr, "POST", "/api/snapshots", &auth, "").await;
    assert_eq!(started.status, 202, "{}", started.body);
    let v = wait_snapshot_done(addr, Some(&bearer), None).await;
    assert_eq!(v["last"]["ok"], false, "{v}");
    let message = v["last"]["message"].as_str().unwrap();
    assert!(message.starts_with("Snapshot failed: "), "{message}");
    assert!(message.contains("snaps"), "{message}");
    assert!(!v.to_string().contains(SECRET));
    assert!(matches!(node.stop().await, Outcome::Stopped));
}
