//! The operations surface on running nodes: health JSON and status codes (also while NATS is
//! frozen), the Prometheus text and its counters, and every dashboard page in real headless
//! Chromium with screenshots in `target/screenshots/`. The dashboard's access rules are in
//! `web/access.rs`, the Snapshots API over HTTP in `web/snapshots.rs`.

mod access;
mod browser;
pub mod http;
mod listeners;
mod snapshots;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harmonylite::config::{Config, Secret};
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;
use serde_json::json;

use crate::harness::nats::NatsServer;
use crate::harness::node::process_toml;
use crate::harness::{AppDb, Cluster, Node, NodeProcess, eventually, test_config};
use browser::Browser;

const BOOKS: &str =
    "CREATE TABLE books(id INTEGER PRIMARY KEY, title TEXT NOT NULL, year INTEGER);";
const DEADLINE: Duration = Duration::from_secs(30);
const TOKEN: &str = "adm-tok-5e1f9c-2b7d40";

/// Health, metrics and (tokenless) admin servers on free loopback ports.
fn serve_all(cfg: &mut Config) {
    cfg.health_check.enable = true;
    cfg.health_check.bind = "127.0.0.1:0".into();
    cfg.prometheus.enable = true;
    cfg.prometheus.bind = "127.0.0.1:0".into();
    cfg.admin.enable = true;
    cfg.admin.bind = "127.0.0.1:0".into();
}

pub fn health_addr(node: &Node) -> SocketAddr {
    node.status.web_addrs().health.expect("health server")
}
pub fn metrics_addr(node: &Node) -> SocketAddr {
    node.status.web_addrs().metrics.expect("metrics server")
}
pub fn admin_addr(node: &Node) -> SocketAddr {
    node.status.web_addrs().admin.expect("admin server")
}

/// `/health/ready`'s status and its reasons.
pub async fn readiness(node: &Node) -> (u16, Vec<String>) {
    let r = http::get(health_addr(node), "/health/ready").await;
    let reasons = r.json()["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (r.status, reasons)
}

/// Parses the Prometheus text format strictly enough to catch a malformed line; returns
/// `series → value`.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line}"
        );
        if series.contains('{') {
            assert!(series.ends_with('}'), "{line}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        out.push((series.to_owned(), value));
    }
    out
}

fn metric(series: &[(String, f64)], name: &str) -> f64 {
    series
        .iter()
        .filter(|(s, _)| s.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_follow_the_node_and_nats() {
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for id in 1..=2 {
        let mut cfg = test_config(dir.path(), id);
        cfg.nats.urls = vec![server.url()];
        serve_all(&mut cfg);
        cfg.health_check.detailed = id == 1;
        AppDb::open(&cfg.db_path).exec(BOOKS);
        nodes.push(Node::start(cfg, EmbeddedOptions::default()).await);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    health_answers(a, b).await;
    metrics_count_published_and_applied_changes(a, b).await;
    // A frozen NATS server keeps the TCP connection open; health must still notice.
    health_notices_frozen_nats(&server, a, b).await;
    for node in nodes {
        assert!(matches!(node.stop().await, Outcome::Stopped));
    }
}

/// Node 1 (`detailed`) answers the full health JSON and readiness; node 2 the status code
/// alone; an unknown path is a 404.
async fn health_answers(a: &Node, b: &Node) {
    let res = http::get(health_addr(a), "/health").await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.header("content-type"), Some("application/json"));
    let h = res.json();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["node_id"], 1);
    assert_eq!(h["db_connected"], true);
    assert_eq!(h["nats_connected"], true);
    assert_eq!(h["cdc_installed"], true);
    assert_eq!(h["tables_tracked"], 1);
    assert_eq!(h["version"], harmonylite::VERSION);
    assert!(h["uptime_seconds"].is_u64());
    assert!(h["schema"]["hash"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(h["schema"]["paused"], false);
    assert!(h["schema"].get("previous_hash").is_some());
    assert_eq!(h["last_replicated_event_timestamp"], json!(null));
    assert_eq!(http::get(health_addr(a), "/health/ready").await.status, 200);
    // detailed = false: the status code alone.
    let quiet = http::get(health_addr(b), "/health").await;
    assert_eq!((quiet.status, quiet.body.as_str()), (200, ""));
    assert_eq!(http::get(health_addr(a), "/nope").await.status, 404);
}

/// Two rows written on node 1 move node 2's apply counters and node 1's publish counters from
/// zero; node 2's lag drops to nothing.
async fn metrics_count_published_and_applied_changes(a: &Node, b: &Node) {
    let before = parse_metrics(&http::get(metrics_addr(b), "/metrics").await.body);
    assert_eq!(metric(&before, "harmonylite_applied_changes_total"), 0.0);
    a.app_db()
        .exec("INSERT INTO books VALUES (1, 'Dune', 1965), (2, 'Emma', 1815)");
    eventually("rows applied on node 2", DEADLINE, async || {
        if b.applied() >= 2 {
            Ok(())
        } else {
            Err(b.applied())
        }
    })
    .await;
    let res = http::get(metrics_addr(b), "/metrics").await;
    assert_eq!(res.status, 200);
    assert!(
        res.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let after = parse_metrics(&res.body);
    assert_eq!(metric(&after, "harmonylite_applied_changes_total"), 2.0);
    assert!(metric(&after, "harmonylite_applied_batches_total") >= 1.0);
    assert!(metric(&after, "harmonylite_apply_latency_seconds_count") >= 1.0);
    assert_eq!(metric(&after, "harmonylite_nats_connected"), 1.0);
    assert_eq!(metric(&after, "harmonylite_schema_mismatch_paused"), 0.0);
    assert!(
        after
            .iter()
            .any(|(s, _)| s.contains("node_id=\"2\"") && s.starts_with("harmonylite_ready")),
        "node_id label"
    );
    let published = parse_metrics(&http::get(metrics_addr(a), "/metrics").await.body);
    assert_eq!(
        metric(&published, "harmonylite_published_changes_total"),
        2.0
    );
    assert!(metric(&published, "harmonylite_publish_latency_seconds_count") >= 1.0);
    let h = http::get(health_addr(a), "/health").await.json();
    assert!(
        h["last_published_event_timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    eventually("lag sampled", DEADLINE, async || {
        let lag = b.status.shard_lag();
        if lag.len() == 1 && lag[0].messages == 0 {
            Ok(())
        } else {
            Err(lag)
        }
    })
    .await;
}

/// While `server` is paused both nodes turn unhealthy and not ready, saying why; node 1 is
/// healthy again after the resume.
async fn health_notices_frozen_nats(server: &NatsServer, a: &Node, b: &Node) {
    server.pause();
    for node in [a, b] {
        wait_status(health_addr(node), "/health", 503).await;
    }
    let h = http::get(health_addr(a), "/health").await;
    assert_eq!(h.json()["nats_connected"], false);
    assert_eq!(h.json()["status"], "unhealthy");
    let ready = http::get(health_addr(a), "/health/ready").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.contains("NATS is not connected"),
        "{}",
        ready.body
    );
    // Liveness never depends on NATS: a restart would not bring it back (issue 19).
    let live = http::get(health_addr(a), "/health/live").await;
    assert_eq!(
        (live.status, live.json()["alive"].clone()),
        (200, true.into())
    );
    server.resume();
    wait_status(health_addr(a), "/health", 200).await;
}

/// Polls `path` until it answers `want`.
async fn wait_status(addr: SocketAddr, path: &str, want: u16) {
    eventually(
        &format!("{path} on {addr} answers {want}"),
        DEADLINE,
        async || match http::get(addr, path).await.status {
            got if got == want => Ok(()),
            got => Err(got),
        },
    )
    .await;
}

#[tokio::test]
async fn bad_web_settings_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    // Beyond loopback without a token: the real binary refuses its config.
    let toml = process_toml(
        dir.path(),
        1,
        "",
        "",
        "[admin]\nenable = true\nbind = \"0.0.0.0:0\"\n",
    );
    AppDb::open(&dir.path().join("node1.db")).exec(BOOKS);
    let mut process = NodeProcess::spawn(dir.path(), 1, &toml, &[]);
    assert_eq!(process.exit_code(Duration::from_secs(30)).await, Some(2));
    assert!(
        process
            .log()
            .contains("binding beyond loopback requires admin.auth_token"),
        "{}",
        process.log()
    );

    // A port already taken: a clear start-up error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = test_config(dir.path(), 2);
    cfg.health_check.enable = true;
    cfg.health_check.bind = taken.local_addr().unwrap().to_string();
    let text = Node::start_error(cfg).await;
    assert!(
        text.contains("cannot listen on health_check.bind"),
        "{text}"
    );
}

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")
}

/// Every dashboard page in headless Chromium on a 3-node cluster: live values, the login form,
/// the refused and the accepted snapshot action, the conflict journal, and screenshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_in_chromium() {
    let browser = Browser::start().await;
    let store = tempfile::tempdir().unwrap();
    let mut cluster = dashboard_cluster(store.path()).await;
    let journaled = write_books_and_a_conflict(&mut cluster).await;
    let shots = screenshot_dir();
    let base = format!("http://{}", admin_addr(cluster.node(0)));

    // Node 1 wants the token: the login form first.
    login_and_live_overview(&browser, &cluster, &base, &shots).await;
    cluster_and_tables_pages(&browser, &base, &shots).await;
    // Take a snapshot from the page: started at once, then the outcome and the history refresh
    // in place; the JSON twin lists the same snapshot.
    snapshot_from_the_page(&browser, &cluster, &base, store.path(), &shots).await;

    // The conflict journal, on the node that wrote it (nodes 2 and 3 need no token).
    let conflicts_base = format!("http://{}", admin_addr(cluster.node(journaled)));
    browser.goto(&format!("{conflicts_base}/conflicts")).await;
    let journal = browser
        .wait_text("[data-list='entries']", "journal", |t| t.contains("users"))
        .await;
    assert!(journal.contains("a@x"), "both versions shown: {journal}");
    browser.screenshot(&shots.join("conflicts.png")).await;

    snapshot_action_disabled_or_refused(&browser, &cluster).await;
    // Last on node 1: it ends the session and locks this client out for a minute.
    session_rules_in_the_browser(&browser, &base, &shots).await;
    browser.quit().await;
    cluster.stop().await;
}

/// The session cookie is out of the page's reach (HttpOnly); "Log out" ends the session; wrong
/// tokens typed into the form turn into "Too many wrong tokens" within five, after which even
/// the right token is refused.
async fn session_rules_in_the_browser(browser: &Browser, base: &str, shots: &Path) {
    browser.goto(&format!("{base}/")).await;
    browser
        .wait_text("h1", "overview, logged in", |t| t.starts_with("Overview"))
        .await;
    let cookies = browser.exec("return document.cookie;", json!([])).await;
    assert!(
        !cookies
            .as_str()
            .unwrap_or("")
            .contains("harmonylite_session"),
        "the session cookie is HttpOnly: {cookies}"
    );
    browser.click("form[action='/logout'] button").await;
    browser
        .wait_text("form[action='/login'] label", "login page", |t| {
            t.contains("Admin token")
        })
        .await;
    browser.goto(&format!("{base}/")).await;
    assert!(browser.url().await.ends_with("/login"), "logged out");
    let mut notes = Vec::new();
    for _ in 0..5 {
        let note = submit_login(browser, "wrong-token-guess").await;
        let limited = note.contains("Too many wrong tokens");
        notes.push(note);
        if limited {
            break;
        }
    }
    assert!(
        notes.last().unwrap().contains("Too many wrong tokens"),
        "five wrong tokens a minute at most: {notes:?}"
    );
    browser.screenshot(&shots.join("login-limited.png")).await;
    let note = submit_login(browser, TOKEN).await;
    assert!(note.contains("Too many wrong tokens"), "{note}");
}

/// Types `token` into the login form, submits it, and returns the note of the page that
/// answers (the old page is marked, so its note is never read).
async fn submit_login(browser: &Browser, token: &str) -> String {
    browser
        .exec("document.body.dataset.stale = '1';", json!([]))
        .await;
    browser.type_into("#token", token).await;
    browser.click("form button[type=submit]").await;
    browser
        .wait_text("body:not([data-stale]) .note", "login answer", |t| {
            !t.is_empty()
        })
        .await
}

/// Three nodes serving everything. Node 1 wants the token; nodes 2 and 3 are open on loopback.
/// Nodes 1 and 3 take snapshots into `store`; node 2 has them disabled.
async fn dashboard_cluster(store: &Path) -> Cluster {
    let schema = "CREATE TABLE books(id INTEGER PRIMARY KEY, title TEXT NOT NULL, year INTEGER);
                  CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);";
    Cluster::start(3, schema, |cfg| {
        serve_all(cfg);
        cfg.replication_log.replicas = Some(3);
        if cfg.node_id == Some(1) {
            cfg.admin.auth_token = Secret::new(TOKEN.to_owned());
        }
        if cfg.node_id != Some(2) {
            snapshots::fs_snapshots(cfg, store);
        }
    })
    .await
}

/// Two books, and a UNIQUE conflict for the journal: two nodes take one email while node 2 is
/// away. Returns the node that journaled the conflict.
async fn write_books_and_a_conflict(cluster: &mut Cluster) -> usize {
    cluster.stop_node(1).await;
    cluster
        .db(0)
        .exec("INSERT INTO users VALUES (1, 'a@x', 'from node 1')");
    cluster
        .db(1)
        .exec("INSERT INTO users VALUES (2, 'a@x', 'from node 2')");
    cluster.start_node(1).await;
    cluster
        .db(0)
        .exec("INSERT INTO books VALUES (1, 'Dune', 1965), (2, 'Emma', 1815)");
    cluster.wait_converged(&["books", "users"], DEADLINE).await;
    eventually("a conflict journaled", DEADLINE, async || {
        (0..3)
            .find(|i| {
                cluster
                    .db(*i)
                    .query_i64("SELECT count(*) FROM __harmonylite__conflicts")
                    .unwrap_or(0)
                    > 0
            })
            .ok_or("none yet")
    })
    .await
}

/// Node 1's overview behind the login form: a wrong token, then the right one; the node's
/// values, every peer, and a counter and chart that refresh without reloading the page.
async fn login_and_live_overview(browser: &Browser, cluster: &Cluster, base: &str, shots: &Path) {
    browser.goto(&format!("{base}/")).await;
    assert!(browser.url().await.ends_with("/login"));
    browser.type_into("#token", "wrong").await;
    browser.click("form button[type=submit]").await;
    browser
        .wait_text(".note", "wrong token", |t| t.contains("Wrong token"))
        .await;
    browser.type_into("#token", TOKEN).await;
    browser.click("form button[type=submit]").await;
    browser
        .wait_text("h1", "overview after login", |t| t.starts_with("Overview"))
        .await;
    let status = browser
        .wait_text("[data-f='health.status']", "health", |t| t == "healthy")
        .await;
    assert_eq!(status, "healthy");
    assert_eq!(browser.text("[data-f='node.node_id']").await, "1");
    assert_eq!(browser.text("[data-f='nats.mode']").await, "embedded");
    assert!(
        browser
            .text("table")
            .await
            .contains("harmonylite-changes-0")
    );
    // Three servers hold the stream: every one is listed.
    browser
        .wait_text("[data-list='peers']", "peers", |t| {
            t.matches("harmonylite-node-").count() == 3
        })
        .await;
    // Values refresh in place: mark the document, write, and watch the counter move.
    browser
        .exec("window.__same_document = true;", json!([]))
        .await;
    let before: u64 = browser
        .text("[data-f='counters.published_changes']")
        .await
        .parse()
        .unwrap();
    cluster
        .db(0)
        .exec("INSERT INTO books VALUES (3, 'Ulysses', 1922)");
    browser
        .wait_text(
            "[data-f='counters.published_changes']",
            "live counter",
            |t| t.parse::<u64>().is_ok_and(|n| n > before),
        )
        .await;
    browser
        .wait_text("#chart", "chart", |t| {
            t.contains("published") && t.contains("now")
        })
        .await;
    let same = browser
        .exec("return window.__same_document === true;", json!([]))
        .await;
    assert_eq!(same, json!(true), "updated without reloading");
    browser.screenshot(&shots.join("overview.png")).await;
}

/// The cluster page shows the registry (or that there is none yet); the tables page both
/// tables with their row counts.
async fn cluster_and_tables_pages(browser: &Browser, base: &str, shots: &Path) {
    browser.goto(&format!("{base}/cluster")).await;
    let registry = browser.text("[data-list='registry']").await;
    assert!(
        registry.contains("no registry yet") || registry.contains("node-1"),
        "{registry}"
    );
    browser.screenshot(&shots.join("cluster.png")).await;

    browser.goto(&format!("{base}/tables")).await;
    let tables = browser
        .wait_text("[data-list='tables']", "tables", |t| {
            t.contains("books") && t.contains("users")
        })
        .await;
    assert!(
        tables.contains("books\t3") || tables.contains("books 3"),
        "{tables}"
    );
    browser.screenshot(&shots.join("tables.png")).await;

    browser.goto(&format!("{base}/consistency")).await;
    let consistency = browser.text("table").await;
    assert!(
        consistency.contains("no comparison yet") || consistency.contains("books"),
        "{consistency}"
    );
    browser.screenshot(&shots.join("consistency.png")).await;
}

/// On node 1's snapshots page (store `store`): the snapshot button starts one, its outcome and
/// the history refresh in place, and `/api/snapshots` lists the same snapshot.
async fn snapshot_from_the_page(
    browser: &Browser,
    cluster: &Cluster,
    base: &str,
    store: &Path,
    shots: &Path,
) {
    browser.goto(&format!("{base}/snapshots")).await;
    assert_eq!(
        browser.text("#snap-message").await,
        "Snapshots are enabled."
    );
    assert_eq!(
        browser.text("[data-f='store']").await,
        format!("fs {}", store.display())
    );
    assert!(
        browser
            .text("[data-list='history']")
            .await
            .contains("no snapshots")
    );
    browser.click("#snapshot-now").await;
    browser
        .wait_text("#outcome", "snapshot answer", |t| t == "Snapshot started.")
        .await;
    let last = browser
        .wait_text("#snap-last", "snapshot result", |t| {
            t.ends_with(" uploaded")
        })
        .await;
    let id = last
        .strip_prefix("Snapshot ")
        .and_then(|t| t.strip_suffix(" uploaded"))
        .unwrap()
        .to_owned();
    let history = browser
        .wait_text("[data-list='history']", "history", |t| t.contains(&id))
        .await;
    let row = history.lines().find(|l| l.contains(&id)).unwrap();
    assert!(row.contains("\t1\t"), "node 1's snapshot: {row:?}");
    assert_eq!(
        browser
            .exec(
                "return document.querySelector(\"[data-list='history'] tr\").className;",
                json!([])
            )
            .await,
        json!("this"),
        "this node's snapshots are marked"
    );
    let bearer = format!("Bearer {TOKEN}");
    let listed = http::get_with(
        admin_addr(cluster.node(0)),
        "/api/snapshots",
        &[("Authorization", &bearer)],
    )
    .await
    .json();
    assert_eq!(listed["history"][0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed["history"][0]["node_id"], 1);
    let sequences = snapshots::sequences_text(&listed["history"][0]["sequences"]);
    assert!(
        row.ends_with(&format!("{sequences}\tunsigned")),
        "{row:?} shows {sequences:?}, then that no signing key is configured"
    );
    browser.screenshot(&shots.join("snapshots.png")).await;
}

/// Node 2 (snapshots disabled) says so and offers no action; node 3 (no token) refuses the
/// action whatever its page offers.
async fn snapshot_action_disabled_or_refused(browser: &Browser, cluster: &Cluster) {
    let off_base = format!("http://{}", admin_addr(cluster.node(1)));
    browser.goto(&format!("{off_base}/snapshots")).await;
    assert!(
        browser
            .text("#snap-message")
            .await
            .contains("Snapshots are disabled on this node"),
    );
    let disabled = browser
        .exec(
            "return document.getElementById('snapshot-now').disabled;",
            json!([]),
        )
        .await;
    assert_eq!(disabled, json!(true));

    // Without the token the action is refused, whatever the page offers.
    let open_base = format!("http://{}", admin_addr(cluster.node(2)));
    browser.goto(&format!("{open_base}/snapshots")).await;
    browser.click("#snapshot-now").await;
    browser
        .wait_text("#outcome", "refused action", |t| {
            t.contains("admin.auth_token")
        })
        .await;
}
