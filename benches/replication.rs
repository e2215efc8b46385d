//! Benchmark harness: a program that prints figures (run with `cargo bench --bench replication`).
//!
//! It starts a real 3-node cluster of `harmonylite` processes with their bundled NATS servers
//! clustered, writes with separate rusqlite connections as an application would, and prints, from
//! one run: capture overhead, sustained throughput (one and three writers), commit-to-visible
//! latency at 1,000 and 10,000 writes a second (with the rows each message carried, which is
//! how much time the stream's history holds), catch-up time of a node that missed many changes,
//! one large transaction until visible everywhere, and the idle RSS of a node process.
//!
//! `BENCH_SCALE` (default 1.0) scales the row counts for quick runs; `BENCH_ONLY=capture` runs
//! only the capture-overhead part, `BENCH_ONLY=throughput` only the one-writer run (to
//! profile), `BENCH_ONLY=latency` only the commit-to-visible runs and `BENCH_ONLY=idle` only the
//! idle RSS; `BENCH_SCAN_MAX_CHANGES` sets the cluster's `scan_max_changes`. Results and their
//! analysis: `docs/benchmarks.md`.

use std::path::Path;
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/common/metrics.rs"]
mod metrics;

use common::{
    Cluster, ClusterSpec, NodeProc, app_conn, children, count, http_get, insert_rows,
    latency_at_rate, rss_kib, wait_rows,
};

fn main() {
    let scale = common::bench_scale();
    let n = |base: usize| ((base as f64 * scale) as usize).max(1);
    println!("# HarmonyLite benchmark (scale {scale})");
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only == "idle" {
        idle_rss();
        return;
    }
    if only.is_empty() || only == "capture" {
        capture_overhead(n(20_000), n(200));
    }
    // `BENCH_ONLY=capture` stops here (comparing trigger variants needs no cluster).
    if only == "capture" {
        return;
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = start_cluster(dir.path());

    if only != "latency" {
        throughput_runs(&cluster, n(200_000), n(100_000));
        // `BENCH_ONLY=throughput`: the one-writer run alone, to profile (`docs/benchmarks.md`).
        if only == "throughput" {
            return;
        }
    }
    latency_runs(&cluster, scale);
    if only == "latency" {
        return;
    }

    let big = n(100_000);
    let secs = one_big_transaction(&cluster, big);
    println!("one {big}-row transaction: visible on all nodes {secs:.2} s after commit");

    let missed = n(1_000_000);
    catch_up(&mut cluster, missed);

    print_rss(&cluster, "after the run");
    // What the nodes hold once idle: a node lets its connections' schemas and caches go, and
    // the allocator's free pages with them, after 10 s without work (`db::writer::RELEASE_IDLE`).
    std::thread::sleep(Duration::from_secs(12));
    print_rss(&cluster, "12 s later");
    drop(cluster);
    idle_rss();
}

/// Each node's RSS and its bundled server's, in KiB.
fn print_rss(cluster: &Cluster, when: &str) {
    let rss = cluster
        .nodes
        .iter()
        .map(|n| rss_kib(n.child.id()))
        .collect::<Vec<_>>();
    let nats = cluster
        .nodes
        .iter()
        .map(|n| children(n.child.id()).into_iter().map(rss_kib).sum::<u64>())
        .collect::<Vec<_>>();
    println!("RSS {when} (KiB, per node): harmonylite {rss:?}, its bundled nats-server {nats:?}");
}

/// The one-writer run (`rows`), then, unless `BENCH_ONLY=throughput`, the three-writer run
/// (`per` rows each).
fn throughput_runs(cluster: &Cluster, rows: usize, per: usize) {
    let secs = throughput_one_writer(cluster, rows);
    println!(
        "throughput, 1 writer: {rows} rows in {secs:.2} s = {:.0} rows/s applied on every node",
        rows as f64 / secs
    );
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "throughput") {
        return;
    }
    let secs = throughput_three_writers(cluster, per);
    println!(
        "throughput, 3 writers: {} rows in {secs:.2} s = {:.0} rows/s applied on every node",
        per * 3,
        (per * 3) as f64 / secs
    );
}

/// Commit-to-visible at 1,000 and 10,000 writes a second, with how many rows each message
/// carried and the mean publish round and apply transaction (from the nodes' metrics).
fn latency_runs(cluster: &Cluster, scale: f64) {
    let latency_secs = Duration::from_secs((5.0 * scale.max(0.4)) as u64);
    for (run, rate) in [1_000, 10_000].into_iter().enumerate() {
        let before = [counters(cluster, 0), counters(cluster, 1)];
        latency_at_rate(
            cluster,
            (0, 1),
            50_000_000 + run as i64 * 1_000_000,
            rate,
            latency_secs,
        );
        let after = [counters(cluster, 0), counters(cluster, 1)];
        let (rows, messages) = (
            after[0].rows - before[0].rows,
            after[0].messages - before[0].messages,
        );
        println!(
            "  history use at {rate} writes/s: {messages} messages for {rows} rows ({:.1} rows a message, {:.0} messages/s)",
            rows / messages.max(1.0),
            messages / latency_secs.as_secs_f64()
        );
        println!(
            "  the writer's publish rounds {:.2} ms, the reader's apply transactions {:.2} ms (means)",
            mean_ms(before[0].publish, after[0].publish),
            mean_ms(before[1].apply, after[1].apply)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Capture overhead: the same inserts into a plain database and into one with capture installed.

fn capture_overhead(single_rows: usize, big_txns: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let plain = dir.path().join("plain.db");
    let captured = dir.path().join("captured.db");
    for path in [&plain, &captured] {
        let c = app_conn(path);
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
            .expect("create");
    }
    // Running for the whole measurement: the overhead is measured with the replicator folding
    // and publishing beside the application, as in production.
    let _node = start_capturing_node(&captured);
    // Each call continues where the previous one on the same file stopped, so keys never
    // collide; the plain and the captured file see the same sequence of keys.
    const FIRST: i64 = 1_000_000;
    let mut next_id = [FIRST; 2];
    let mut updated = [0i64; 2];
    // `update` false: inserts of new keys; true: one-column updates of existing keys.
    let mut run = |which: usize, txns: usize, per_txn: usize, update: bool| -> f64 {
        let path = if which == 0 { &plain } else { &captured };
        let mut c = app_conn(path);
        let start = Instant::now();
        for _ in 0..txns {
            let tx = c.transaction().expect("tx");
            {
                let sql = if update {
                    "UPDATE t SET qty = qty + ?2 WHERE id = ?1"
                } else {
                    "INSERT INTO t(id, name, qty) VALUES (?1, 'some name', ?2)"
                };
                let mut st = tx.prepare_cached(sql).expect("prep");
                for _ in 0..per_txn {
                    let id = if update {
                        updated[which] += 1;
                        FIRST + 1 + updated[which] % (next_id[which] - FIRST)
                    } else {
                        next_id[which] += 1;
                        next_id[which]
                    };
                    let n = st.execute(rusqlite::params![id, id % 97]).expect("write");
                    assert_eq!(n, 1);
                }
            }
            tx.commit().expect("commit");
        }
        (txns * per_txn) as f64 / start.elapsed().as_secs_f64()
    };
    // The machine is shared and noisy: plain and captured alternate in ROUNDS short runs and
    // each side keeps its best run, so a burst of outside load does not land on one side only.
    const ROUNDS: usize = 5;
    let best = |run: &mut dyn FnMut(usize, usize, usize, bool) -> f64,
                txns: usize,
                per: usize,
                update: bool| {
        let (mut p, mut c) = (0f64, 0f64);
        for _ in 0..ROUNDS {
            p = p.max(run(0, txns.div_ceil(ROUNDS), per, update));
            c = c.max(run(1, txns.div_ceil(ROUNDS), per, update));
        }
        (p, c)
    };
    let (p1, c1) = best(&mut run, single_rows, 1, false);
    let (pk, ck) = best(&mut run, big_txns, 1000, false);
    let (pu, cu) = best(&mut run, big_txns, 1000, true);
    println!(
        "capture overhead, 1-row transactions: plain {p1:.0} rows/s, captured {c1:.0} rows/s, ratio {:.2}x",
        p1 / c1
    );
    println!(
        "capture overhead, 1000-row transactions: plain {pk:.0} rows/s, captured {ck:.0} rows/s, ratio {:.2}x",
        pk / ck
    );
    println!(
        "capture overhead, 1000-row update transactions (one column): plain {pu:.0} rows/s, captured {cu:.0} rows/s, ratio {:.2}x",
        pu / cu
    );
}

/// Starts the real binary on the file: it installs capture, then folds the capture log and
/// publishes the changes (to its own bundled server: a standalone node, `replicate` off).
fn start_capturing_node(db: &Path) -> NodeProc {
    let dir = db.parent().expect("parent").join("install");
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = format!(
        "db_path = {db:?}\nnode_id = 99\nseq_map_path = {:?}\ndata_dir = {:?}\nreplicate = false\n[replication_log]\nmax_entries = 10000000\n[nats]\nbind_address = \"127.0.0.1:-1\"\n[snapshot]\nenabled = false\n",
        dir.join("seq.cbor"),
        dir.join("data")
    );
    let mut node = NodeProc::spawn(&dir, 99, &cfg, &[]);
    node.wait_ready();
    node
}

// ---------------------------------------------------------------------------------------------
// The cluster: three nodes, one table `t`.

fn start_cluster(dir: &Path) -> Cluster {
    // `BENCH_SCAN_MAX_CHANGES` overrides `scan_max_changes` (default 512) to show how
    // throughput depends on the rows per publisher round.
    let scan_max = std::env::var("BENCH_SCAN_MAX_CHANGES")
        .map(|v| format!("scan_max_changes = {v}\n"))
        .unwrap_or_default();
    let spec = ClusterSpec {
        nodes: 3,
        schema: "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, ts INTEGER);"
            .to_owned(),
        top: scan_max,
        sections: String::new(),
        nats: Vec::new(),
    };
    Cluster::start(dir, &spec)
}

/// Counters of node `i` from its Prometheus endpoint: rows and messages published, and the
/// publish rounds' and apply transactions' summed seconds and counts.
#[derive(Clone, Copy)]
struct Counters {
    rows: f64,
    messages: f64,
    publish: (f64, f64),
    apply: (f64, f64),
}

fn counters(cluster: &Cluster, i: usize) -> Counters {
    let text = http_get(cluster.metrics_ports[i], "/metrics");
    let value = |name: &str| {
        metrics::sum_of(&text, name)
            .unwrap_or_else(|| panic!("{name} not in the metrics of node {}", i + 1))
    };
    let pair = |name: &str| {
        (
            value(&format!("{name}_sum")),
            value(&format!("{name}_count")),
        )
    };
    Counters {
        rows: value("harmonylite_published_changes_total"),
        messages: value("harmonylite_published_batches_total"),
        publish: pair("harmonylite_publish_latency_seconds"),
        apply: pair("harmonylite_apply_latency_seconds"),
    }
}

/// Mean milliseconds of the `(sum, count)` observed between two readings.
fn mean_ms(before: (f64, f64), after: (f64, f64)) -> f64 {
    (after.0 - before.0) * 1000.0 / (after.1 - before.1).max(1.0)
}

/// Waits until every node holds `want` rows. `last_ids` (the last key of each writer) are
/// looked up by key first, which is cheap; `count(*)` over a million rows costs a noticeable
/// share of the 2 cores, so it runs only once they are all present.
fn wait_all(cluster: &Cluster, want: i64, last_ids: &[i64]) {
    let nodes: Vec<usize> = (0..cluster.nodes.len()).collect();
    wait_rows(cluster, &nodes, want, last_ids, Duration::from_secs(600));
}

fn throughput_one_writer(cluster: &Cluster, rows: usize) -> f64 {
    let base = count(&cluster.db(0));
    let start = Instant::now();
    let last = insert_rows(&cluster.db(0), 10_000_000, rows, 1000);
    wait_all(cluster, base + rows as i64, &[last]);
    start.elapsed().as_secs_f64()
}

fn throughput_three_writers(cluster: &Cluster, per: usize) -> f64 {
    let base = count(&cluster.db(0));
    let start = Instant::now();
    let last: Vec<i64> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..3)
            .map(|i| {
                let db = cluster.db(i);
                s.spawn(move || insert_rows(&db, 20_000_000 + i as i64 * 1_000_000, per, 1000))
            })
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().expect("writer"))
            .collect()
    });
    wait_all(cluster, base + 3 * per as i64, &last);
    start.elapsed().as_secs_f64()
}

fn one_big_transaction(cluster: &Cluster, rows: usize) -> f64 {
    let base = count(&cluster.db(0));
    let last = insert_rows(&cluster.db(0), 40_000_000, rows, rows);
    let start = Instant::now();
    wait_all(cluster, base + rows as i64, &[last]);
    start.elapsed().as_secs_f64()
}

/// Stops one node, writes `rows` changes on another, waits until the third has them, restarts
/// the stopped node and times how long it takes to catch up.
///
/// With `replicas = 1` the stream lives on one of the three bundled servers, and stopping that
/// node would stop replication for everyone ("no stream found for given subject"), so the node
/// stopped is one whose server does not hold the stream. With three replicas (the default on a
/// 3-node embedded cluster) every server holds it and node 3 is stopped.
fn catch_up(cluster: &mut Cluster, rows: usize) {
    let hosts: Vec<bool> = (0..3)
        .map(|i| has_dir_named(&cluster.dir.join(format!("data{}", i + 1)), STREAM_DIR, 8))
        .collect();
    let victim = (0..3).rev().find(|i| !hosts[*i]).unwrap_or(2);
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let (writer, watcher) = (others[0], others[1]);
    cluster.nodes[victim].stop();
    let base = count(&cluster.db(writer));
    let last = insert_rows(&cluster.db(writer), 60_000_000, rows, 10_000);
    let want = base + rows as i64;
    wait_rows(cluster, &[watcher], want, &[last], Duration::from_secs(900));
    let start = Instant::now();
    let dir = cluster.dir.clone();
    let id = victim as u64 + 1;
    let cfg = std::fs::read_to_string(dir.join(format!("node{id}.toml"))).expect("config");
    cluster.nodes[victim] = NodeProc::spawn(&dir, id, &cfg, &cluster.args[victim]);
    wait_rows(cluster, &[victim], want, &[last], Duration::from_secs(900));
    println!(
        "catch-up: node {id} (stream held by node(s) {:?}) missed {rows} changes, current {:.2} s after restart",
        (0..3)
            .filter(|i| hosts[*i])
            .map(|i| i + 1)
            .collect::<Vec<_>>(),
        start.elapsed().as_secs_f64()
    );
}

/// The JetStream store directory of the one stream (shards = 1).
const STREAM_DIR: &str = "harmonylite-changes-0";

fn has_dir_named(dir: &Path, name: &str, depth: usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_type().is_ok_and(|t| t.is_dir())
            && (e.file_name() == name || (depth > 0 && has_dir_named(&e.path(), name, depth - 1)))
    })
}

/// RSS of an idle standalone node (bundled server not counted: it is a separate process).
fn idle_rss() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("idle.db");
    app_conn(&db)
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .expect("schema");
    let cfg = format!(
        "db_path = {db:?}\nnode_id = 7\nseq_map_path = {:?}\ndata_dir = {:?}\n[nats]\nbind_address = \"127.0.0.1:-1\"\n[snapshot]\nenabled = false\n",
        dir.path().join("seq.cbor"),
        dir.path().join("data")
    );
    let mut node = NodeProc::spawn(dir.path(), 7, &cfg, &[]);
    node.wait_ready();
    std::thread::sleep(Duration::from_secs(3));
    let nats: u64 = children(node.child.id()).into_iter().map(rss_kib).sum();
    println!(
        "idle RSS: harmonylite {} KiB (bundled nats-server, a separate process: {nats} KiB)",
        rss_kib(node.child.id())
    );
    node.stop();
}
