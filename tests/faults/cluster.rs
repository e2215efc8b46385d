//! The nodes: three real `harmonylite` processes (the binary Cargo built for this package), each
//! with its bundled nats-server clustered with the others through the proxy, each on its own
//! database file in one temp dir. Owns every process it starts: `Drop` kills them all,
//! nats-servers included, also when the program panics; and the processes die with the program
//! whatever ends it (tests/common/process.rs).

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::Connection;
use tempfile::TempDir;

use crate::common::ports::fixed_ports;
use crate::common::process::NodeProcess;
pub use crate::common::process::signal;
use crate::proxy::Proxy;
use crate::schema::DDL;

/// One node: the shared `NodeProcess` (tests/common/process.rs) with what the fault program
/// needs around it; its errors are `String`s for the report.
pub struct NodeProc {
    /// 0-based index; the node id is `idx + 1`.
    pub idx: usize,
    pub db_path: PathBuf,
    node: NodeProcess,
}

/// The snapshot store every node shares (an `fs` store), under the cluster's directory.
pub const STORE_DIR: &str = "store";

/// Digest rounds of every node (`-verify-cluster` at the verdict). Repairs are off: the
/// program proves replication, which repairs would cover up.
pub const DIGEST_INTERVAL_MS: u64 = 1000;

/// The admin dashboard's token on every node (the operator's actions go through its API).
pub const ADMIN_TOKEN: &str = "faults-admin-token-0123456789";

pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub proxy: Proxy,
    pub dir: TempDir,
    /// Keep `dir` after the processes are gone (a failed seed, for a post-mortem).
    pub keep: bool,
}

impl Cluster {
    /// Creates the databases with the schema, starts every node and waits until all are ready.
    pub fn start(n: usize, shards: u32, max_entries: u64) -> Result<Cluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("harmonylite-faults-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        // Route listeners need fixed ports: every peer's proxy must know them before any starts.
        let cluster_ports = fixed_ports(n);
        let proxy = Proxy::start(&cluster_ports);
        let mut configs = Vec::new();
        for (idx, route_port) in cluster_ports.iter().enumerate() {
            let id = idx + 1;
            let p = |name: String| dir.path().join(name);
            let db_path = p(format!("node{id}.db"));
            Connection::open(&db_path)
                .and_then(|c| c.execute_batch(DDL))
                .map_err(|e| format!("creating {}: {e}", db_path.display()))?;
            let peers: Vec<String> = (0..n)
                .filter(|j| *j != idx)
                .map(|j| format!("nats://127.0.0.1:{}", proxy.port(idx, j)))
                .collect();
            // The operator config is included after harmonylite's own, so this cluster block
            // replaces the rendered one: same name, listener and routes, plus the sink advertise.
            let routes_conf = p(format!("routes-{id}.conf"));
            let quoted: Vec<String> = peers.iter().map(|u| format!("\"{u}\"")).collect();
            std::fs::write(
                &routes_conf,
                format!(
                    "cluster {{\n  name: \"{}\"\n  listen: \"127.0.0.1:{}\"\n  \
                     advertise: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                    harmonylite::nats::server::CLUSTER_NAME,
                    route_port,
                    proxy.sink_port(idx),
                    quoted.join(", ")
                ),
            )
            .map_err(|e| e.to_string())?;
            let data_dir = p(format!("data-{id}"));
            let config_path = p(format!("node{id}.toml"));
            let toml = node_toml(
                id,
                dir.path(),
                &db_path,
                &data_dir,
                &routes_conf,
                (shards, n, max_entries),
            );
            std::fs::write(&config_path, toml).map_err(|e| e.to_string())?;
            let args = vec![
                "-cluster-addr".to_owned(),
                format!("127.0.0.1:{route_port}"),
                "-cluster-peers".to_owned(),
                peers.join(","),
            ];
            configs.push((idx, db_path, data_dir, config_path, args));
        }
        let mut nodes = Vec::new();
        for (idx, db_path, data_dir, config_path, args) in configs {
            let log_path = dir.path().join(format!("node{}.log", idx + 1));
            let node =
                NodeProcess::start(idx as u64 + 1, &config_path, &data_dir, &log_path, &args)
                    .map_err(|e| e.to_string())?;
            nodes.push(NodeProc { idx, db_path, node });
        }
        let mut cluster = Cluster {
            nodes,
            proxy,
            dir,
            keep: false,
        };
        for node in &mut cluster.nodes {
            node.wait_ready(Duration::from_secs(120))?;
        }
        Ok(cluster)
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join(STORE_DIR)
    }

    /// Every node's server's client URL; empty if a node has none (it is not running).
    pub fn nats_client_urls(&self) -> Vec<String> {
        let urls: Option<Vec<String>> = self.nodes.iter().map(|n| n.nats_client_url()).collect();
        urls.unwrap_or_default()
    }

    pub fn db_paths(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.db_path.clone()).collect()
    }

    /// The last lines of every node's log, for a failure report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&node.node.log_tail(lines));
            out.push('\n');
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill_all();
        }
        if self.keep {
            let kept = std::mem::replace(&mut self.dir, TempDir::new().unwrap()).keep();
            eprintln!("kept {}", kept.display());
        }
    }
}

impl NodeProc {
    /// The node's configuration file.
    pub fn config_path(&self) -> &std::path::Path {
        &self.node.config_path
    }

    /// Starts the node again with the same config and flags.
    pub fn start(&mut self) -> Result<(), String> {
        self.node.restart().map_err(|e| e.to_string())
    }

    /// Waits until this start's "node ready" appears in the log.
    pub fn wait_ready(&mut self, deadline: Duration) -> Result<(), String> {
        self.node.try_wait_ready_blocking(deadline)
    }

    /// `Some(status)` if the process has ended (and was reaped).
    pub fn exited(&mut self) -> Option<String> {
        self.node.exited().map(|s| s.to_string())
    }

    pub fn signal(&self, sig: i32) {
        self.node.signal(sig);
    }

    /// `kill -9` of harmonylite; `Err` if its nats-server outlives it (the server's death signal
    /// failed, and its route port would stay taken).
    pub fn kill9(&mut self) -> Result<(), String> {
        self.node.kill9()
    }

    /// SIGTERM and a clean exit; `Err` if it took longer than `deadline` (then it is killed).
    pub fn terminate(&mut self, deadline: Duration) -> Result<String, String> {
        match self.node.terminate_blocking(deadline) {
            Ok(status) => Ok(status.to_string()),
            Err(_) => {
                let _ = self.node.kill9();
                Err(format!(
                    "node {} ignored SIGTERM for {deadline:?}",
                    self.idx + 1
                ))
            }
        }
    }

    /// Pid of the running bundled nats-server.
    pub fn nats_pid(&self) -> Option<u32> {
        self.node.nats_pid()
    }

    /// The bundled nats-server's client URL.
    pub fn nats_client_url(&self) -> Option<String> {
        self.node.nats_client_url()
    }

    fn kill_all(&mut self) {
        self.node.kill_all();
    }

    /// How many lines of this node's log (all its starts) contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.node.log().matches(needle).count()
    }

    /// The address a listener of this node's current start logged (`what`: "health check",
    /// "admin dashboard"), read from its log: the processes pick their own ports.
    pub fn listener(&self, what: &str) -> Option<String> {
        let log = self.node.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("listening") && l.contains(&format!("server=\"{what}\"")))?;
        let addr = line.split("addr=Some(").nth(1)?.split(')').next()?;
        Some(addr.to_owned())
    }
}

/// A node's configuration file: `(shards, replicas, max_entries)` for its streams.
fn node_toml(
    id: usize,
    dir: &std::path::Path,
    db_path: &std::path::Path,
    data_dir: &std::path::Path,
    routes_conf: &std::path::Path,
    (shards, n, max_entries): (u32, usize, u64),
) -> String {
    format!(
        "db_path = {db:?}\nnode_id = {id}\nseq_map_path = {seq:?}\ndata_dir = {data:?}\n\
         polling_interval = 50\ncleanup_interval = 200\n\
         [replication_log]\nshards = {shards}\nreplicas = {n}\n\
         max_entries = {max_entries}\n\
         [nats]\nbind_address = \"127.0.0.1:-1\"\nserver_config = {routes:?}\n\
         [snapshot]\nenabled = true\nstore = \"fs\"\ninterval = 20000\n\
         leader_ttl = 3000\n[snapshot.fs]\npath = {store:?}\n\
         [health_check]\nenable = true\nbind = \"127.0.0.1:0\"\n\
         [admin]\nenable = true\nbind = \"127.0.0.1:0\"\nauth_token = {token:?}\n\
         [consistency]\ndigest_interval_ms = {DIGEST_INTERVAL_MS}\nrepair = false\n\
         [logging]\nverbose = {verbose}\n",
        db = db_path,
        seq = dir.join(format!("seq-map-{id}.cbor")),
        data = data_dir,
        routes = routes_conf,
        store = dir.join(STORE_DIR),
        token = ADMIN_TOKEN,
        verbose = std::env::var("FAULTS_VERBOSE").is_ok_and(|v| v == "1"),
    )
}
