//! Snapshot authenticity end to end (`docs/decisions/011-snapshot-authenticity.md`), with real
//! nodes on one NATS server and a local-directory store: a node with `[snapshot] signing_key`
//! restores only snapshots signed with one of its keys, refuses the others before downloading
//! them and reports them (metric, Snapshots API, `/health`), and a key rotation carries on.

use std::path::Path;
use std::time::Duration;

use harmonylite::config::{Config, KeyList, Secret};
use harmonylite::hlc::now_ms;
use harmonylite::ids::NodeId;
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;
use harmonylite::snapshot::store::Store;
use harmonylite::snapshot::{Manifest, create, history};
use serde_json::Value;

use crate::harness::nats::NatsServer;
use crate::harness::{AppDb, Node, eventually, test_config};
use crate::snapshot::with_fs_store;
use crate::web::{admin_addr, health_addr, http};

const SCHEMA: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);";
const OLD: &str = "old-cluster-key-0123456789abcdef0123456789ab";
const NEW: &str = "new-cluster-key-0123456789abcdef0123456789ab";
const FORGER: &str = "forger-key-0123456789abcdef0123456789abcdef";
const STRANGER: &str = "stranger-key-0123456789abcdef0123456789abcd";
const TOKEN: &str = "signing-test-admin-token";
const DEADLINE: Duration = Duration::from_secs(30);
const ROWS: i64 = 50;

fn keyed(mut cfg: Config, keys: &[&str]) -> Config {
    let keys = keys.iter().map(|k| k.to_string()).collect();
    cfg.snapshot.signing_key = Secret::new(KeyList::new(keys));
    cfg
}

/// Node `id` on `nats`, snapshots every half second into `store`, signed with `keys`; health
/// and the dashboard on loopback.
fn node_config(dir: &Path, id: u64, nats: &NatsServer, store: &Path, keys: &[&str]) -> Config {
    let mut cfg = test_config(dir, id);
    cfg.nats.urls = vec![nats.url()];
    with_fs_store(&mut cfg, store);
    cfg.snapshot.interval = 500;
    cfg.health_check.enable = true;
    cfg.health_check.bind = "127.0.0.1:0".into();
    cfg.admin.enable = true;
    cfg.admin.bind = "127.0.0.1:0".into();
    cfg.admin.auth_token = Secret::new(TOKEN.to_owned());
    keyed(cfg, keys)
}

/// Waits until `node` restored a snapshot holding every row.
async fn restored(node: &Node) {
    eventually("a snapshot restored", DEADLINE, async || {
        match node.metrics.snapshot_restores.get() {
            0 => Err(format!("{:?}", node.status.recovery.facts())),
            _ => Ok(()),
        }
    })
    .await;
    assert_eq!(node.app_db().count("items"), ROWS);
}

/// Waits for a snapshot by node `by`, taken after `after_ms`, that `store` accepts.
async fn snapshot_by(store: &Store, by: u64, after_ms: u64) -> Manifest {
    eventually("a new snapshot", DEADLINE, async || {
        let list = history::list(store).await.map_err(|e| e.to_string())?;
        list.into_iter()
            .find(|m| m.node_id == by && m.created_ms > after_ms)
            .ok_or("none yet".to_owned())
    })
    .await
}

/// Publishes a snapshot of `cfg`'s database as node `node` claims, signed with `keys` (none:
/// unsigned): what someone holding the store's credentials could write.
async fn plant(cfg: &Config, keys: &[&str], node: u64, created_ms: u64) -> Manifest {
    let work = cfg.data_dir().join("planted");
    let taken = create::take(&cfg.db_path, &work, NodeId(node), &[], created_ms).unwrap();
    let store = Store::open(&keyed(cfg.clone(), keys), None).await.unwrap();
    history::publish(&store, &taken, &|_, _| {}).await.unwrap()
}

async fn snapshots_api(node: &Node) -> Value {
    let bearer = format!("Bearer {TOKEN}");
    let r = http::get_with(
        admin_addr(node),
        "/api/snapshots",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn refused_count(node: &Node, reason: &str) -> u64 {
    node.metrics
        .snapshot_refused
        .with_label_values(&[reason])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_snapshots_are_restored_and_keys_rotate() {
    let _one_at_a_time = crate::harness::CLUSTERS.acquire().await.unwrap();
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path();

    // Node 1 signs with the old key.
    let cfg1 = node_config(dir.path(), 1, &server, store, &[OLD]);
    AppDb::open(&cfg1.db_path).exec(SCHEMA);
    let node1 = Node::start(cfg1.clone(), EmbeddedOptions::default()).await;
    node1.app_db().exec(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) \
         INSERT INTO items SELECT i, 'item ' || i FROM n"
    ));
    let written = now_ms();
    let old_store = Store::open(&keyed(cfg1.clone(), &[OLD]), None)
        .await
        .unwrap();
    let signed = snapshot_by(&old_store, 1, written).await;
    assert!(signed.signature.is_some());
    assert!(matches!(node1.stop().await, Outcome::Stopped));

    // Newer snapshots of the same data: one signed with a key no node holds, one unsigned.
    let forged = plant(&cfg1, &[FORGER], 1, now_ms() + 1000).await;
    let unsigned = plant(&cfg1, &[], 1, now_ms() + 2000).await;
    assert!(unsigned.signature.is_none());

    // Node 2, new database, rotating: [new, old]. It refuses both, restores node 1's, then
    // signs its own snapshots with the new key.
    let cfg2 = node_config(dir.path(), 2, &server, store, &[NEW, OLD]);
    let node2 = Node::start(cfg2, EmbeddedOptions::default()).await;
    restored(&node2).await;
    assert!(refused_count(&node2, "unknown_key") >= 1);
    assert!(refused_count(&node2, "unsigned") >= 1);
    shows_refused(&node2, &forged, &unsigned, &signed).await;
    let new_store = Store::open(&keyed(cfg1.clone(), &[NEW]), None)
        .await
        .unwrap();
    let by_new = snapshot_by(&new_store, 2, written).await;
    let new_id = harmonylite::snapshot::signing::key_id(NEW.as_bytes());
    assert!(by_new.signature.as_deref().unwrap().contains(&new_id));
    assert!(matches!(node2.stop().await, Outcome::Stopped));

    // Node 3 holds only the new key: node 2's snapshot restores; node 1's is refused now.
    let cfg3 = node_config(dir.path(), 3, &server, store, &[NEW]);
    let node3 = Node::start(cfg3, EmbeddedOptions::default()).await;
    restored(&node3).await;
    let view = snapshots_api(&node3).await;
    let old_row = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == signed.id.as_str())
        .unwrap()
        .clone();
    assert!(old_row["refused"].as_str().is_some(), "{view}");
    assert!(matches!(node3.stop().await, Outcome::Stopped));

    // Node 4 holds a key nothing is signed with: it restores nothing and says why.
    let cfg4 = node_config(dir.path(), 4, &server, store, &[STRANGER]);
    restores_nothing_and_says_why(cfg4).await;
}

/// The Snapshots API of `node` (keys [new, old]) lists the forged and the unsigned snapshot as
/// refused, with why, the one signed with the old key as accepted, and no key.
async fn shows_refused(node: &Node, forged: &Manifest, unsigned: &Manifest, signed: &Manifest) {
    let view = snapshots_api(node).await;
    assert_eq!(view["refused"], 2, "{view}");
    let rows = view["history"].as_array().unwrap();
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    assert!(
        row(&forged.id)["refused"]
            .as_str()
            .is_some_and(|r| r.contains("not one of this node's")),
        "{view}"
    );
    assert!(
        row(&unsigned.id)["refused"]
            .as_str()
            .is_some_and(|r| r.contains("not signed")),
        "{view}"
    );
    assert!(row(&signed.id)["refused"].is_null(), "{view}");
    assert!(!view.to_string().contains(OLD) && !view.to_string().contains(NEW));
}

/// A new node whose key signed none of the store's snapshots: blocked, with why on `/health`,
/// and the refusals counted.
async fn restores_nothing_and_says_why(cfg: Config) {
    let node4 = Node::start(cfg, EmbeddedOptions::default()).await;
    let health = eventually("the refusal on /health", DEADLINE, async || {
        let h = http::get(health_addr(&node4), "/health").await.json();
        match h["recovery"]["blocked"].as_str() {
            Some(why) if why.contains("not authentic") => Ok(h),
            _ => Err(h),
        }
    })
    .await;
    assert!(
        !health["recovery"]["waiting_for_snapshot"].is_null(),
        "{health}"
    );
    assert_eq!(node4.metrics.snapshot_restores.get(), 0);
    assert!(refused_count(&node4, "unknown_key") >= 3);
    let text = node4.render_metrics();
    assert!(
        text.lines()
            .any(|l| l.starts_with("harmonylite_snapshot_refused_total")
                && l.contains("reason=\"unsigned\"")),
        "{text}"
    );
    assert!(matches!(node4.stop().await, Outcome::Stopped));
}

/// At start: a key file others may read stops the node, naming the key and not the key; a node
/// without keys whose snapshots go to WebDAV runs with a security warning on `/health`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_checks_the_key_file_and_warns_about_unsigned_remote_stores() {
    use std::os::unix::fs::PermissionsExt;
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();

    let keys = dir.path().join("snapshot-keys");
    std::fs::write(&keys, format!("{NEW}\n")).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = node_config(dir.path(), 1, &server, store.path(), &[]);
    cfg.snapshot.signing_key_file = keys.display().to_string();
    let text = Node::start_error(cfg).await;
    assert!(
        text.contains("snapshot.signing_key_file") && text.contains("mode 0644"),
        "{text}"
    );
    assert!(!text.contains(NEW), "{text}");

    let mut cfg = node_config(dir.path(), 2, &server, store.path(), &[]);
    cfg.snapshot.store = harmonylite::config::SnapshotStore::Webdav;
    // Nothing listens there: the store is never reached, the warning is about the setting.
    cfg.snapshot.webdav.url = Secret::new("http://127.0.0.1:9/snapshots".to_owned());
    AppDb::open(&cfg.db_path).exec(SCHEMA);
    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    let health = http::get(health_addr(&node), "/health").await.json();
    let warnings = health["security_warnings"].to_string();
    assert!(
        warnings.contains("WebDAV") && warnings.contains("snapshot.signing_key"),
        "{health}"
    );
    assert!(matches!(node.stop().await, Outcome::Stopped));
}
