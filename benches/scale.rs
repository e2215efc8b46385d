//! Scale benchmark: a program that prints figures (run with `cargo bench --bench scale`).
//!
//! Real `harmonylite` processes with their bundled servers on this one machine, as the
//! replication benchmark runs them. Parts, each selectable with `SCALE_ONLY` (comma-separated;
//! all by default):
//! - `ready`: start-to-ready (every node's `/health/ready` answers 200) of a 3- and a 9-node
//!   embedded cluster, `replicas` unset (3), timed from the last node's start, and of the 3-node
//!   cluster restarted;
//! - `nine`: throughput and commit-to-visible latency on 9 nodes;
//! - `edges`: a 3-node hub with leaf-node listeners and 3 edges joined with `-leaf-servers`,
//!   each writing; then one edge cut off while it and the hub keep writing, and the time from
//!   the heal until every node holds every row (with the edge's RSS while it was cut off);
//! - `tables`: 1,000 tables: ready time, idle RSS, one transaction touching every table;
//! - `rows`: one row of 1, 16 and 64 MiB: time until visible on every node, and every node's
//!   peak RSS while it replicated and its RSS `SCALE_AFTER_SECS` (default 60) later.
//!
//! The 2 GB database (snapshot take, upload, verified restore) is `cargo bench --bench snapshot`
//! with `BENCH_ROWS`. `BENCH_SCALE` (default 1.0) scales row counts. Results:
//! `docs/benchmarks.md`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/common/link.rs"]
mod link;

use common::ports::ClosedPort;
use common::{
    Cluster, ClusterSpec, NodeProc, app_conn, fixed_port, insert_rows, latency_at_rate,
    node_config, noise, peak_rss_until, wait_for, wait_rows, wait_rows_in,
};
use link::Link;

const TABLE_T: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, ts INTEGER);";
const READY_LIMIT: Duration = Duration::from_secs(300);
const EDGE_LIMIT: Duration = Duration::from_secs(900);

fn main() {
    let scale = common::bench_scale();
    let n = |base: usize| ((base as f64 * scale) as usize).max(1);
    let only = std::env::var("SCALE_ONLY").unwrap_or_default();
    let want = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    println!("# HarmonyLite scale benchmark (scale {scale})");
    println!(
        "machine: {} cores, load {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load()
    );
    if want("ready") {
        for nodes in [3, 9] {
            start_to_ready(nodes);
        }
    }
    if want("nine") {
        nine_nodes(n(100_000));
    }
    if want("edges") {
        edges(n(10_000));
    }
    if want("tables") {
        many_tables(1_000);
    }
    if want("rows") {
        let after = std::env::var("SCALE_AFTER_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        big_rows(&[1, 16, 64], Duration::from_secs(after));
    }
    println!("load at the end: {}", load());
}

/// A temporary directory for one part; kept (and named) with `SCALE_KEEP=1`, to read the logs.
fn work_dir() -> tempfile::TempDir {
    let keep = std::env::var_os("SCALE_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .disable_cleanup(keep)
        .tempdir()
        .expect("temp dir");
    if keep {
        println!("(kept: {})", dir.path().display());
    }
    dir
}

/// The 1-, 5- and 15-minute load averages.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn spec(nodes: usize, schema: &str) -> ClusterSpec {
    ClusterSpec {
        nodes,
        schema: schema.to_owned(),
        top: String::new(),
        sections: String::new(),
        nats: Vec::new(),
    }
}

fn start_to_ready(nodes: usize) {
    let dir = work_dir();
    let mut cluster = Cluster::spawn(dir.path(), &spec(nodes, TABLE_T));
    let ready = cluster.wait_health_ready(READY_LIMIT);
    println!(
        "start-to-ready, {nodes} nodes (replicas 3): every /health/ready 200 {:.2} s after the last node started",
        ready.as_secs_f64()
    );
    if nodes == 3 {
        // A whole-cluster restart waits for JetStream's elections (its own timings); the same
        // figure with 1,000 tables (`tables`) shows what the tables add.
        cluster.restart();
        let ready = cluster.wait_health_ready(READY_LIMIT);
        println!(
            "start-to-ready, 3 nodes, restarted: every /health/ready 200 {:.2} s after the last node started",
            ready.as_secs_f64()
        );
    }
}

fn nine_nodes(rows: usize) {
    let dir = work_dir();
    let mut cluster = Cluster::spawn(dir.path(), &spec(9, TABLE_T));
    cluster.wait_health_ready(READY_LIMIT);
    let all: Vec<usize> = (0..9).collect();
    let start = Instant::now();
    let last = insert_rows(&cluster.db(0), 1, rows, 1000);
    wait_rows(
        &cluster,
        &all,
        rows as i64,
        &[last],
        Duration::from_secs(900),
    );
    let secs = start.elapsed().as_secs_f64();
    println!(
        "9 nodes, 1 writer: {rows} rows in {secs:.2} s = {:.0} rows/s applied on every node",
        rows as f64 / secs
    );
    latency_at_rate(&cluster, (0, 8), 10_000_000, 1_000, Duration::from_secs(5));
    println!(
        "9 nodes, RSS after (KiB): harmonylite {:?}",
        cluster.rss_kib()
    );
}

// ---------------------------------------------------------------------------------------------
// Edges.

/// The JetStream domain of the hub, which the edges name (decision 016).
const DOMAIN: &str = "hub";

/// An operator config file opening a loopback leaf-node listener on `port` that advertises
/// `sink` (refusing connections), so an edge cannot reconnect around its cut link.
fn leaf_listener(dir: &Path, i: usize, port: u16, sink: u16) -> String {
    let path = dir.join(format!("hub{i}-leaf.conf"));
    let conf =
        format!("leafnodes {{ listen: \"127.0.0.1:{port}\", advertise: \"127.0.0.1:{sink}\" }}\n");
    std::fs::write(&path, conf).expect("leaf conf");
    format!("server_config = {path:?}\njetstream_domain = \"{DOMAIN}\"\n")
}

fn edges(rows: usize) {
    let dir = work_dir();
    let leaf_ports = common::ports::fixed_ports(3);
    let sinks: Vec<ClosedPort> = (0..3).map(|_| ClosedPort::bind()).collect();
    let mut hub_spec = spec(3, TABLE_T);
    hub_spec.nats = (0..3)
        .map(|i| leaf_listener(dir.path(), i, leaf_ports[i], sinks[i].port))
        .collect();
    let mut hub = Cluster::spawn(dir.path(), &hub_spec);
    hub.wait_health_ready(READY_LIMIT);
    // Edge e (ids 4..=6) dials hub node e-4 through a link that can be cut.
    let links: Vec<Link> = leaf_ports.iter().map(|p| Link::start(*p)).collect();
    let mut edges: Vec<NodeProc> = (0..3)
        .map(|e| spawn_edge(dir.path(), e, &links[e]))
        .collect();
    for edge in &mut edges {
        edge.wait_ready();
    }
    let db = |id: usize| dir.path().join(format!("node{id}.db"));
    let every = || (1..=6).map(db).collect::<Vec<_>>();

    let start = Instant::now();
    let last: Vec<i64> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..3)
            .map(|e| {
                let path = db(4 + e);
                s.spawn(move || insert_rows(&path, 1_000_000 * (e as i64 + 1), rows, 100))
            })
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().expect("edge writer"))
            .collect()
    });
    wait_rows_in(&every(), 3 * rows as i64, &last, EDGE_LIMIT);
    println!(
        "edges: 3 edges wrote {rows} rows each; on all 6 nodes {:.2} s after the writes began",
        start.elapsed().as_secs_f64()
    );

    links[0].cut();
    let healed = AtomicBool::new(false);
    let pid = edges[0].pid();
    let (edge_last, peak) = std::thread::scope(|s| {
        let sampler = s.spawn(|| peak_rss_until(&[pid], &healed)[0]);
        let hub_last = insert_rows(&db(1), 5_000_000, rows, 100);
        let edge_last = insert_rows(&db(4), 6_000_000, 2 * rows, 100);
        // The edge stays cut off a while after its writes, as a site with a dead uplink would.
        std::thread::sleep(Duration::from_secs(10));
        let seen = app_conn(&db(2))
            .query_row("SELECT count(*) FROM t WHERE id >= 6000000", [], |r| {
                r.get::<_, i64>(0)
            })
            .expect("count");
        assert_eq!(
            seen, 0,
            "the cut did not hold: the hub has the cut-off edge's rows"
        );
        healed.store(true, Ordering::Relaxed);
        ((hub_last, edge_last), sampler.join().expect("sampler"))
    });
    let heal = Instant::now();
    links[0].heal();
    println!("(healed at {})", common::now_micros());
    wait_rows_in(
        &every(),
        6 * rows as i64,
        &[edge_last.0, edge_last.1],
        EDGE_LIMIT,
    );
    println!(
        "edges: edge 4 cut off while it wrote {} rows and the hub {rows}: every node has every row {:.2} s after the heal; the edge's peak RSS while cut off {} KiB",
        2 * rows,
        heal.elapsed().as_secs_f64(),
        peak
    );
    drop(edges);
    drop(hub);
}

fn spawn_edge(dir: &Path, e: usize, link: &Link) -> NodeProc {
    let id = 4 + e as u64;
    app_conn(&dir.join(format!("node{id}.db")))
        .execute_batch(TABLE_T)
        .expect("schema");
    let nats = format!("jetstream_domain = \"{DOMAIN}\"\n");
    // The hub's servers hold the replicas: the edge names the hub's count.
    let cfg = node_config(dir, id, "", &nats, (fixed_port(), fixed_port()))
        .replace("[replication_log]\n", "[replication_log]\nreplicas = 3\n");
    let args = vec![
        "-leaf-servers".to_owned(),
        format!("nats://127.0.0.1:{}", link.port()),
    ];
    NodeProc::spawn(dir, id, &cfg, &args)
}

// ---------------------------------------------------------------------------------------------
// Many tables, big rows.

fn many_tables(tables: usize) {
    let dir = work_dir();
    let schema: String = (0..tables)
        .map(|i| format!("CREATE TABLE tab{i}(id INTEGER PRIMARY KEY, v TEXT, n INTEGER);\n"))
        .collect();
    let mut cluster = Cluster::spawn(dir.path(), &spec(3, &schema));
    let ready = cluster.wait_health_ready(READY_LIMIT);
    println!(
        "{tables} tables: every /health/ready 200 {:.2} s after the last node started",
        ready.as_secs_f64()
    );
    for after in [10, 30] {
        std::thread::sleep(Duration::from_secs(if after == 10 { 10 } else { 20 }));
        println!(
            "{tables} tables: idle RSS {after} s after ready (KiB): harmonylite {:?}, bundled nats-server {:?}",
            cluster.rss_kib(),
            cluster.nats_rss_kib()
        );
    }
    let mut c = app_conn(&cluster.db(0));
    let start = Instant::now();
    let tx = c.transaction().expect("tx");
    for i in 0..tables {
        tx.execute(
            &format!("INSERT INTO tab{i} VALUES (1, 'one row', {i})"),
            [],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
    let last = format!("SELECT 1 FROM tab{} WHERE id = 1", tables - 1);
    let conns: Vec<_> = (0..3).map(|i| app_conn(&cluster.db(i))).collect();
    wait_for(
        "the transaction on every node",
        Duration::from_secs(300),
        || {
            conns
                .iter()
                .all(|c| c.query_row(&last, [], |_| Ok(())).is_ok())
                .then_some(())
        },
    );
    println!(
        "{tables} tables: one transaction writing a row in each, visible on every node {:.2} s after commit",
        start.elapsed().as_secs_f64()
    );
    // The first start installs capture on every table; a restart finds it installed.
    cluster.restart();
    let ready = cluster.wait_health_ready(READY_LIMIT);
    println!(
        "{tables} tables: restarted, every /health/ready 200 {:.2} s after the last node started",
        ready.as_secs_f64()
    );
}

fn big_rows(sizes_mib: &[usize], after: Duration) {
    let dir = work_dir();
    let mut cluster = Cluster::spawn(
        dir.path(),
        &spec(3, "CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB);"),
    );
    cluster.wait_health_ready(READY_LIMIT);
    std::thread::sleep(Duration::from_secs(3));
    let pids: Vec<u32> = cluster.nodes.iter().map(NodeProc::pid).collect();
    println!("big rows: idle RSS (KiB) {:?}", cluster.rss_kib());
    for (k, mib) in sizes_mib.iter().enumerate() {
        let id = k as i64 + 1;
        let blob = noise(mib << 20, id as u64);
        let arrived = AtomicBool::new(false);
        let (secs, peak) = std::thread::scope(|s| {
            let sampler = s.spawn(|| peak_rss_until(&pids, &arrived));
            let start = Instant::now();
            app_conn(&cluster.db(0))
                .execute(
                    "INSERT INTO blobs VALUES (?1, ?2)",
                    rusqlite::params![id, blob],
                )
                .expect("insert");
            let conns: Vec<_> = (0..3).map(|i| app_conn(&cluster.db(i))).collect();
            wait_for("the row on every node", Duration::from_secs(600), || {
                conns
                    .iter()
                    .all(|c| {
                        c.query_row("SELECT length(b) FROM blobs WHERE id = ?1", [id], |r| {
                            r.get::<_, i64>(0)
                        })
                        .is_ok_and(|len| len == (mib << 20) as i64)
                    })
                    .then_some(())
            });
            let secs = start.elapsed().as_secs_f64();
            arrived.store(true, Ordering::Relaxed);
            (secs, sampler.join().expect("sampler"))
        });
        std::thread::sleep(after);
        println!(
            "big rows: one {mib} MiB row on every node in {secs:.2} s; peak RSS (KiB) {peak:?}, {} s later {:?}",
            after.as_secs(),
            cluster.rss_kib()
        );
    }
}
