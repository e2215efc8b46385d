//! Shared by the benchmark programs (`replication`, `scale`), each of which includes this
//! directory with `#[path = "common/mod.rs"] mod common;`: `harmonylite` processes with their
//! bundled servers (`NodeProc`), clusters of them (`Cluster`), the application's connection and
//! writes, waiting with a deadline, HTTP probes and process memory from `/proc`.

// Each program uses a different part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

#[path = "../../tests/common/memory.rs"]
mod memory;
#[path = "../../tests/common/ports.rs"]
pub mod ports;
// Each program uses a different part.
#[allow(unused_imports)]
pub use memory::{noise, peak_rss_until, rss_kib};
// Route, metrics and health ports are told to the nodes before they start: from below the
// ephemeral range, so no server's random port or outgoing connection takes one meanwhile.
#[allow(unused_imports)]
pub use ports::fixed_port;

/// `BENCH_SCALE` (default 1.0): the factor row counts are scaled by, for quick runs.
pub fn bench_scale() -> f64 {
    std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

/// A `harmonylite` process; its log is `node<id>.log` in the directory it was spawned in.
pub struct NodeProc {
    pub child: Child,
    pub log: PathBuf,
}

impl NodeProc {
    pub fn spawn(dir: &Path, id: u64, cfg: &str, args: &[String]) -> NodeProc {
        let cfg_path = dir.join(format!("node{id}.toml"));
        std::fs::write(&cfg_path, cfg).expect("config");
        let log = dir.join(format!("node{id}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let child = Command::new(binary())
            .arg("-config")
            .arg(&cfg_path)
            .args(args)
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn harmonylite");
        NodeProc { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for "node ready" in the log (the node started; `/health/ready` may still say no).
    pub fn wait_ready(&mut self) {
        wait_for("node ready", Duration::from_secs(120), || {
            self.check_running();
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            (log.matches("node ready").count() >= 1).then_some(())
        });
    }

    /// Panics with the log when the process exited.
    pub fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "node exited with {status}: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    pub fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a cluster's nodes are started with.
pub struct ClusterSpec {
    pub nodes: usize,
    /// The application's schema, created in every database before its node starts.
    pub schema: String,
    /// Top-level config keys for every node.
    pub top: String,
    /// Config sections for every node (after the generated ones).
    pub sections: String,
    /// Extra `[nats]` keys of node `i` (index 0-based); empty when shorter.
    pub nats: Vec<String>,
}

/// Nodes 1..=n of an embedded cluster (bundled servers routed to each other), each with
/// Prometheus and health endpoints on loopback. `replicas` is left unset: 3 from three nodes.
pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<NodeProc>,
    pub args: Vec<Vec<String>>,
    /// Each node's configuration, as spawned.
    pub configs: Vec<String>,
    pub metrics_ports: Vec<u16>,
    pub health_ports: Vec<u16>,
    /// When the last node was spawned.
    pub last_spawned: Instant,
}

impl Cluster {
    /// Spawns every node; returns without waiting for them.
    pub fn spawn(dir: &Path, spec: &ClusterSpec) -> Cluster {
        let n = spec.nodes;
        let route_ports = ports::fixed_ports(n);
        let metrics_ports = ports::fixed_ports(n);
        let health_ports = ports::fixed_ports(n);
        let mut nodes = Vec::new();
        let mut all_args = Vec::new();
        let mut configs = Vec::new();
        for i in 0..n {
            let id = i as u64 + 1;
            let db = dir.join(format!("node{id}.db"));
            if !spec.schema.is_empty() {
                app_conn(&db).execute_batch(&spec.schema).expect("schema");
            }
            let nats = spec.nats.get(i).map(String::as_str).unwrap_or_default();
            let ports = (metrics_ports[i], health_ports[i]);
            let cfg = node_config(dir, id, &spec.top, nats, ports) + &spec.sections;
            let peers: Vec<String> = (0..n)
                .filter(|j| *j != i)
                .map(|j| format!("nats://127.0.0.1:{}", route_ports[j]))
                .collect();
            let args = if n > 1 {
                vec![
                    "-cluster-addr".to_owned(),
                    format!("127.0.0.1:{}", route_ports[i]),
                    "-cluster-peers".to_owned(),
                    peers.join(","),
                ]
            } else {
                Vec::new()
            };
            nodes.push(NodeProc::spawn(dir, id, &cfg, &args));
            all_args.push(args);
            configs.push(cfg);
        }
        Cluster {
            dir: dir.to_path_buf(),
            nodes,
            args: all_args,
            configs,
            metrics_ports,
            health_ports,
            last_spawned: Instant::now(),
        }
    }

    /// Spawns every node and waits until each has logged "node ready".
    pub fn start(dir: &Path, spec: &ClusterSpec) -> Cluster {
        let mut cluster = Cluster::spawn(dir, spec);
        for node in &mut cluster.nodes {
            node.wait_ready();
        }
        cluster
    }

    /// Waits until every node's `/health/ready` answers 200; the time since the last spawn.
    pub fn wait_health_ready(&mut self, limit: Duration) -> Duration {
        let ports = self.health_ports.clone();
        let mut ready = vec![false; ports.len()];
        wait_for("every node ready on /health/ready", limit, || {
            for (i, port) in ports.iter().enumerate() {
                self.nodes[i].check_running();
                if !ready[i] {
                    ready[i] = http_status(*port, "/health/ready") == Some(200);
                }
            }
            ready.iter().all(|r| *r).then_some(())
        });
        self.last_spawned.elapsed()
    }

    /// Stops every node (SIGTERM, waited for), then spawns them again with the same
    /// configuration and flags; returns without waiting for them.
    pub fn restart(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        for (i, node) in self.nodes.iter_mut().enumerate() {
            *node = NodeProc::spawn(&self.dir, i as u64 + 1, &self.configs[i], &self.args[i]);
        }
        self.last_spawned = Instant::now();
    }

    pub fn db(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{}.db", i + 1))
    }

    /// RSS of each node's harmonylite process, KiB.
    pub fn rss_kib(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| rss_kib(n.pid())).collect()
    }

    /// RSS of each node's bundled nats-server, KiB.
    pub fn nats_rss_kib(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| children(n.pid()).into_iter().map(rss_kib).sum())
            .collect()
    }
}

/// A node's generated config: its files under `dir`, a bundled server on a free port (with
/// `nats` keys added), no snapshots, a history long enough for every benchmark, Prometheus and
/// health on loopback (`ports`).
pub fn node_config(dir: &Path, id: u64, top: &str, nats: &str, ports: (u16, u16)) -> String {
    let (metrics, health) = ports;
    format!(
        "db_path = {db:?}\nnode_id = {id}\nseq_map_path = {seq:?}\ndata_dir = {data:?}\n{top}\n\
         [replication_log]\nmax_entries = 10000000\n\
         [nats]\nbind_address = \"127.0.0.1:-1\"\n{nats}\n\
         [snapshot]\nenabled = false\n\
         [prometheus]\nenable = true\nbind = \"127.0.0.1:{metrics}\"\n\
         [health_check]\nenable = true\nbind = \"127.0.0.1:{health}\"\n",
        db = dir.join(format!("node{id}.db")),
        seq = dir.join(format!("seq{id}.cbor")),
        data = dir.join(format!("data{id}")),
    )
}

/// The application's connection: WAL, `synchronous=NORMAL`, a generous busy timeout.
pub fn app_conn(path: &Path) -> Connection {
    let c = Connection::open(path).expect("open");
    c.busy_timeout(Duration::from_secs(30))
        .expect("busy timeout");
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        .expect("pragmas");
    c
}

/// Inserts `rows` rows into `t(id, name, qty, ts)` with keys from `first_id` on, `per_txn` a
/// transaction; returns the last key.
pub fn insert_rows(db: &Path, first_id: i64, rows: usize, per_txn: usize) -> i64 {
    let mut c = app_conn(db);
    let mut id = first_id;
    let mut left = rows;
    while left > 0 {
        let n = left.min(per_txn);
        let tx = c.transaction().expect("tx");
        {
            let mut st = tx
                .prepare_cached("INSERT INTO t(id, name, qty, ts) VALUES (?1, ?2, ?3, 0)")
                .expect("prep");
            for _ in 0..n {
                st.execute(rusqlite::params![id, "a book title", id % 13])
                    .expect("insert");
                id += 1;
            }
        }
        tx.commit().expect("commit");
        left -= n;
    }
    id - 1
}

/// Rows in `t`.
pub fn count(db: &Path) -> i64 {
    let c = Connection::open(db).expect("open");
    c.busy_timeout(Duration::from_secs(30)).expect("busy");
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap_or(0)
}

/// Waits until nodes `nodes` hold `want` rows in `t`, the keys `last_ids` first (a cheap
/// lookup) and then `count(*)`.
pub fn wait_rows(cluster: &Cluster, nodes: &[usize], want: i64, last_ids: &[i64], limit: Duration) {
    let dbs: Vec<PathBuf> = nodes.iter().map(|i| cluster.db(*i)).collect();
    wait_rows_in(&dbs, want, last_ids, limit);
}

/// `wait_rows` for databases by path (nodes outside a `Cluster`: edges).
pub fn wait_rows_in(dbs: &[PathBuf], want: i64, last_ids: &[i64], limit: Duration) {
    let conns: Vec<Connection> = dbs.iter().map(|db| app_conn(db)).collect();
    let has = |c: &Connection, id: i64| -> bool {
        c.prepare_cached("SELECT 1 FROM t WHERE id = ?1")
            .and_then(|mut s| s.exists([id]))
            .unwrap_or(false)
    };
    let mut done = vec![false; conns.len()];
    wait_for("rows on every node", limit, || {
        for (c, d) in conns.iter().zip(done.iter_mut()) {
            if !*d && last_ids.iter().all(|id| has(c, *id)) {
                *d = c
                    .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                    .map(|n| n >= want)
                    .unwrap_or(false);
            }
        }
        done.iter().all(|d| *d).then_some(())
    });
}

/// Writes `rate` single-row transactions per second on node `writer` (keys from `start_id`)
/// with the commit time in `ts`; node `reader` polls for new rows and records how long after
/// commit each became visible. Prints the percentiles.
pub fn latency_at_rate(
    cluster: &Cluster,
    (writer, reader): (usize, usize),
    start_id: i64,
    rate: u64,
    duration: Duration,
) {
    let total = (rate * duration.as_secs()) as i64;
    let mut lat: Vec<f64> = Vec::with_capacity(total as usize);
    std::thread::scope(|s| {
        let writer_db = cluster.db(writer);
        s.spawn(move || {
            let c = app_conn(&writer_db);
            let t0 = Instant::now();
            for k in 0..total {
                let due = t0 + Duration::from_micros(k as u64 * 1_000_000 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                c.execute(
                    "INSERT INTO t(id, name, qty, ts) VALUES (?1, 'lat', 0, ?2)",
                    rusqlite::params![start_id + k, now_micros()],
                )
                .expect("insert");
            }
        });
        let reader = app_conn(&cluster.db(reader));
        let mut last = start_id - 1;
        let deadline = Instant::now() + duration + Duration::from_secs(30);
        while last < start_id + total - 1 && Instant::now() < deadline {
            let mut st = reader
                .prepare_cached("SELECT id, ts FROM t WHERE id > ?1 AND id < ?2 ORDER BY id")
                .expect("prep");
            let now = now_micros();
            let rows: Vec<(i64, i64)> = st
                .query_map(rusqlite::params![last, start_id + total], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            for (id, ts) in rows {
                lat.push((now - ts) as f64 / 1000.0);
                last = last.max(id);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    lat.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "commit-to-visible on another node at {rate} writes/s ({} samples): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        pct(0.50),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

/// Polls `f` every 2 ms until it returns `Some`; panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not reached within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The `harmonylite` binary the nodes run: this build's, or `BENCH_BINARY` (to compare two
/// builds in one session with one benchmark program).
fn binary() -> std::path::PathBuf {
    std::env::var_os("BENCH_BINARY")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_harmonylite").into())
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The status line and body of `GET path` on a loopback port (HTTP/1.0: the server closes after
/// the answer); `None` when nothing answers.
fn http(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// The body of `GET path`; panics when nothing answers.
pub fn http_get(port: u16, path: &str) -> String {
    http(port, path)
        .unwrap_or_else(|| panic!("nothing answers on port {port}"))
        .1
}

pub fn http_status(port: u16, path: &str) -> Option<u16> {
    http(port, path).map(|(status, _)| status)
}

/// Direct child processes of `pid` (the bundled nats-server).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
