//! Edge sites (decision 016): a 3-node hub whose bundled servers run leaf-node listeners, and
//! edge nodes joined with `-leaf-servers` through links that can be cut. An edge's bundled server
//! runs no JetStream: it reads and writes the hub's streams through the leaf connection. Cut off,
//! an edge keeps capturing its application's writes; healed, every node converges.

use std::path::Path;
use std::time::Duration;

use harmonylite::config::Secret;
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;

use crate::common::link::Link;
use crate::common::poll::poll;
use crate::common::ports::fixed_ports;
use crate::harness::nats::NatsServer;
use crate::harness::{AppDb, ClosedPort, Cluster, Node, converged, test_config};

const DOMAIN: &str = "hub";
const CONVERGE: Duration = Duration::from_secs(60);
const ITEMS: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, site TEXT NOT NULL, qty INTEGER);";
const LEAF_USER: &str = "edge";
const LEAF_PASSWORD: &str = "l3af-pa55word";
const HUB_USER: &str = "harmonylite";
const HUB_PASSWORD: &str = "hub-r0ute-pa55word";

/// Writes `n` rows from key `first` on, in one transaction.
fn write_rows(db: &mut AppDb, site: &str, first: i64, n: i64) {
    db.tx(|tx| {
        let mut st = tx.prepare("INSERT INTO items VALUES (?1, ?2, ?3)").unwrap();
        for id in first..first + n {
            st.execute(rusqlite::params![id, site, id % 7]).unwrap();
        }
    });
}

async fn wait_converged(dbs: &[AppDb], what: &str) {
    let refs: Vec<&AppDb> = dbs.iter().collect();
    if let Err(last) = poll(CONVERGE, async || converged(&refs, &["items"])).await {
        panic!("{what}: not converged within {CONVERGE:?}: {last}");
    }
}

/// A leaf-node listener on loopback for hub node `id`, in an operator config file, with the
/// credentials edges present (as in the guide's worked example). It advertises `sink` (a port
/// that refuses connections): edges learn the hub's other leaf listeners from what they
/// advertise, and would otherwise reconnect around a cut link.
fn leaf_listener(dir: &Path, id: u64, port: u16, sink: u16) -> String {
    let path = dir.join(format!("hub-{id}-leaf.conf"));
    let conf = format!(
        "leafnodes {{\n  listen: \"127.0.0.1:{port}\"\n  advertise: \"127.0.0.1:{sink}\"\n  \
         authorization {{ user: \"{LEAF_USER}\", password: \"{LEAF_PASSWORD}\" }}\n}}\n"
    );
    std::fs::write(&path, conf).unwrap();
    path.to_string_lossy().into_owned()
}

/// A server that dials hub listener `port` as a leaf node with `userinfo` (`user:pass@`).
async fn leaf_peer(port: u16, userinfo: &str) -> NatsServer {
    NatsServer::start_plain(&format!(
        "leafnodes {{ remotes: [ {{ url: \"nats://{userinfo}127.0.0.1:{port}\" }} ] }}\n"
    ))
    .await
}

fn leaf_count(server: &NatsServer) -> u64 {
    server.monitor("/leafz")["leafnodes"].as_u64().unwrap()
}

/// The hub's leaf listener takes no one without the leaf credentials: the edges got in with
/// them, a server with another password is refused.
async fn assert_wrong_leaf_password_refused(port: u16) {
    let rogue = leaf_peer(port, &format!("{LEAF_USER}:wrong@")).await;
    rogue.wait_refused().await;
    assert_eq!(leaf_count(&rogue), 0, "{}", rogue.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_capture_while_cut_off_and_converge_through_the_hub() {
    let confs = tempfile::tempdir().unwrap();
    let leaf_ports = fixed_ports(3);
    let sinks: Vec<ClosedPort> = (0..3).map(|_| ClosedPort::bind()).collect();
    let hub = Cluster::start(3, ITEMS, |cfg| {
        let id = cfg.node_id.unwrap();
        let i = id as usize - 1;
        cfg.nats.server_config = leaf_listener(confs.path(), id, leaf_ports[i], sinks[i].port);
        cfg.nats.jetstream_domain = DOMAIN.to_owned();
        // The hub's clients and routes authenticate, as in the guide's worked example.
        cfg.nats.user_name = HUB_USER.to_owned();
        cfg.nats.user_password = Secret::new(HUB_PASSWORD.to_owned());
    })
    .await;
    let mut links = Vec::new();
    let mut edges = Vec::new();
    for (id, hub_node) in [(4u64, 0usize), (5, 1)] {
        let db = hub.dir.path().join(format!("node{id}.db"));
        AppDb::open(&db).exec(ITEMS);
        let link = Link::start(leaf_ports[hub_node]);
        let flags = EmbeddedOptions {
            leaf_servers: vec![format!(
                "nats://{LEAF_USER}:{LEAF_PASSWORD}@127.0.0.1:{}",
                link.port()
            )],
            ..EmbeddedOptions::default()
        };
        let mut cfg = test_config(hub.dir.path(), id);
        cfg.nats.jetstream_domain = DOMAIN.to_owned();
        edges.push(Node::start(cfg, flags).await);
        links.push(link);
    }
    let db = |id: u64| AppDb::open(&hub.dir.path().join(format!("node{id}.db")));
    let all = || (1..=5).map(db).collect::<Vec<_>>();

    // Every site writes; every node gets every row.
    write_rows(&mut db(1), "hub", 1, 50);
    write_rows(&mut db(4), "edge-4", 1_000, 50);
    write_rows(&mut db(5), "edge-5", 2_000, 50);
    wait_converged(&all(), "before the cut").await;
    assert_eq!(db(2).count("items"), 150);

    // An edge's server holds no stream: the hub's streams are the only ones.
    let edge_store = hub.dir.path().join("data-4").join("nats").join("jetstream");
    let streams_on_edge = walk_dir_names(&edge_store)
        .into_iter()
        .filter(|name| name.starts_with("harmonylite-changes"))
        .count();
    assert_eq!(
        streams_on_edge, 0,
        "an edge's server keeps no stream of its own"
    );

    // Edge 4 is cut off: its application keeps writing, and so do the hub and edge 5.
    links[0].cut();
    write_rows(&mut db(4), "edge-4 cut off", 3_000, 500);
    db(4).exec("UPDATE items SET qty = 100 WHERE id = 1");
    write_rows(&mut db(1), "hub", 4_000, 100);
    write_rows(&mut db(5), "edge-5", 5_000, 100);
    let others: Vec<AppDb> = [1, 2, 3, 5].into_iter().map(db).collect();
    wait_converged(&others, "the connected nodes during the cut").await;
    assert_eq!(
        db(2).query_i64("SELECT count(*) FROM items WHERE id BETWEEN 3000 AND 3499"),
        Some(0),
        "the cut must hold: the hub saw the cut-off edge's writes"
    );

    // Healed, the edge publishes what it captured and applies what it missed.
    links[0].heal();
    wait_converged(&all(), "after the heal").await;
    assert_eq!(db(3).count("items"), 150 + 500 + 200);
    assert_eq!(
        db(2).query_i64("SELECT qty FROM items WHERE id = 1"),
        Some(100),
        "the edge's update made while cut off"
    );

    assert_wrong_leaf_password_refused(leaf_ports[0]).await;

    for edge in edges {
        assert!(matches!(edge.stop().await, Outcome::Stopped));
    }
    hub.stop().await;
}

/// Names of every directory under `dir`, at any depth.
fn walk_dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .flat_map(|e| {
            let mut names = walk_dir_names(&e.path());
            names.push(e.file_name().to_string_lossy().into_owned());
            names
        })
        .collect()
}
