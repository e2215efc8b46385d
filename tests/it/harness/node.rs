//! Nodes under test: `Node` runs `node::run` in this process with a oneshot stop; `NodeProcess`
//! runs the real `harmonylite` binary (for signals, `kill -9`, restarts and the CLI); `Cluster`
//! starts several embedded-NATS nodes that form one JetStream cluster.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use harmonylite::config::Config;
use harmonylite::metrics::Metrics;
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::{self, Outcome, Settings};
use harmonylite::status::NodeStatus;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::common::process::{NodeProcess, nats_server_pid};
use crate::common::{poll::poll, ports::fixed_ports};

use super::{AppDb, eventually};

/// A config for tests: fast polling, small limits, everything under `dir`.
pub fn test_config(dir: &Path, node_id: u64) -> Config {
    let mut cfg = Config {
        db_path: dir.join(format!("node{node_id}.db")),
        node_id: Some(node_id),
        seq_map_path: Some(dir.join(format!("seq-map-{node_id}.cbor"))),
        data_dir: Some(dir.join(format!("data-{node_id}"))),
        polling_interval: 50,
        cleanup_interval: 200,
        ..Config::default()
    };
    cfg.nats.bind_address = "127.0.0.1:-1".to_owned();
    cfg.snapshot.enabled = false;
    cfg.snapshot.leader_ttl = 2000;
    cfg.replication_log.max_entries = 1_000_000;
    // One replica unless a test asks for more: a 3-replica cluster takes seconds longer to form.
    cfg.replication_log.replicas = Some(1);
    cfg
}

/// The metrics a node with `cfg` would declare.
pub fn metrics_for(cfg: &Config) -> Arc<Metrics> {
    Arc::new(Metrics::new(&cfg.prometheus, cfg.node_id()).unwrap())
}

/// A node running in this process.
pub struct Node {
    pub cfg: Config,
    pub embedded: EmbeddedOptions,
    pub status: Arc<NodeStatus>,
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<Outcome>>>,
}

impl Node {
    /// Runs a node whose start must fail; returns the error with its causes.
    pub async fn start_error(cfg: Config) -> String {
        let status = NodeStatus::new(cfg.node_id());
        let metrics = metrics_for(&cfg);
        let settings = Settings::new(cfg, EmbeddedOptions::default());
        match node::run(settings, status, metrics, std::future::pending()).await {
            Ok(outcome) => panic!("the node started and ended with {outcome:?}"),
            Err(err) => format!("{err:#}"),
        }
    }

    /// Starts a node and waits until it is ready.
    pub async fn start(cfg: Config, embedded: EmbeddedOptions) -> Node {
        if let Ok(filter) = std::env::var("HARMONYLITE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .try_init();
        }
        let status = NodeStatus::new(cfg.node_id());
        let metrics = metrics_for(&cfg);
        let (tx, rx) = oneshot::channel();
        let settings = Settings::new(cfg.clone(), embedded.clone());
        let handle = tokio::spawn(node::run(
            settings,
            status.clone(),
            metrics.clone(),
            async {
                let _ = rx.await;
            },
        ));
        let mut node = Node {
            cfg,
            embedded,
            status,
            metrics,
            stop: Some(tx),
            handle: Some(handle),
        };
        node.wait_ready().await;
        node
    }

    async fn wait_ready(&mut self) {
        let (status, handle) = (&self.status, &mut self.handle);
        eventually("node ready", Duration::from_secs(90), async || {
            if handle.as_ref().is_some_and(|h| h.is_finished()) {
                let result = handle.take().unwrap().await.unwrap();
                panic!("node {} ended during start: {result:?}", status.node_id);
            }
            if status.ready.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err(format!(
                    "not ready; NATS connected: {}, recovery: {:?}",
                    status.nats_connected(),
                    status.recovery.facts()
                ))
            }
        })
        .await;
    }

    /// Stops the node the way a signal would, and returns how it ended.
    pub async fn stop(mut self) -> Outcome {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().expect("node already stopped");
        tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .expect("node did not stop within 60 s")
            .unwrap()
            .unwrap()
    }

    /// Stops the node and starts it again with the same config and flags.
    pub async fn restart(self) -> Node {
        let (cfg, embedded) = (self.cfg.clone(), self.embedded.clone());
        assert!(matches!(self.stop().await, Outcome::Stopped));
        Node::start(cfg, embedded).await
    }

    pub fn app_db(&self) -> AppDb {
        AppDb::open(&self.cfg.db_path)
    }

    /// Client URL of this node's bundled server.
    pub fn nats_url(&self) -> String {
        self.status.nats_urls()[0].clone()
    }

    pub fn applied(&self) -> u64 {
        self.metrics.applied_changes.get()
    }

    pub fn published(&self) -> u64 {
        self.metrics.published_changes.get()
    }

    /// The node's Prometheus text, as its exporter serves it.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.status.gauges()).unwrap()
    }

    /// The value of the metric `name` (its series summed over their labels), or `None` when
    /// the node exports no such series.
    pub fn metric(&self, name: &str) -> Option<f64> {
        crate::common::metrics::sum_of(&self.render_metrics(), name)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// Several in-process nodes whose bundled servers form one JetStream cluster.
pub struct Cluster {
    pub dir: TempDir,
    nodes: Vec<Option<Node>>,
    stopped: Vec<Option<(Config, EmbeddedOptions)>>,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

impl Cluster {
    /// Starts `n` nodes with ids 1..=n, each database created first with `schema` (the
    /// application's DDL); `tune` adjusts each node's config.
    pub async fn start(n: usize, schema: &str, tune: impl Fn(&mut Config)) -> Cluster {
        let permit = super::CLUSTERS.acquire().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        for i in 0..n {
            if !schema.is_empty() {
                AppDb::open(&dir.path().join(format!("node{}.db", i + 1))).exec(schema);
            }
        }
        // Route ports: every peer must know them before any server starts.
        let ports = fixed_ports(n);
        let starts = (0..n).map(|i| {
            let mut cfg = test_config(dir.path(), i as u64 + 1);
            tune(&mut cfg);
            let embedded = cluster_flags(&ports, i);
            Node::start(cfg, embedded)
        });
        let nodes = futures::future::join_all(starts)
            .await
            .into_iter()
            .map(Some)
            .collect();
        Cluster {
            dir,
            nodes,
            stopped: (0..n).map(|_| None).collect(),
            _permit: permit,
        }
    }

    /// The running node `i` (0-based).
    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is stopped")
    }

    /// An application connection to node `i`'s database (works while the node is stopped).
    pub fn db(&self, i: usize) -> AppDb {
        AppDb::open(&self.dir.path().join(format!("node{}.db", i + 1)))
    }

    pub fn dbs(&self) -> Vec<AppDb> {
        (0..self.nodes.len()).map(|i| self.db(i)).collect()
    }

    /// Stops node `i`; `start_node(i)` brings it back with the same config.
    pub async fn stop_node(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("node already stopped");
        let saved = (node.cfg.clone(), node.embedded.clone());
        assert!(matches!(node.stop().await, Outcome::Stopped));
        self.stopped[i] = Some(saved);
    }

    pub async fn start_node(&mut self, i: usize) {
        self.start_nodes(&[i]).await;
    }

    /// Starts the stopped nodes `which` at once (their servers need each other for a quorum).
    pub async fn start_nodes(&mut self, which: &[usize]) {
        let starts = which.iter().map(|&i| {
            let (cfg, embedded) = self.stopped[i].take().expect("node is running");
            Node::start(cfg, embedded)
        });
        let started = futures::future::join_all(starts).await;
        for (&i, node) in which.iter().zip(started) {
            self.nodes[i] = Some(node);
        }
    }

    /// Deletes stopped node `i`'s database (with its WAL) and sequence map: it starts again as a
    /// fresh node with no database file.
    pub fn wipe_db(&self, i: usize) {
        let (cfg, _) = self.stopped[i].as_ref().expect("stop the node first");
        for suffix in ["", "-wal", "-shm"] {
            let mut path = cfg.db_path.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
        let _ = std::fs::remove_file(cfg.seq_map_path());
    }

    /// Ends node `i` without any shutdown step (its task is aborted, nothing is released), as
    /// close to `kill -9` as an in-process node gets. It cannot be started again.
    pub fn kill_node(&mut self, i: usize) {
        drop(self.nodes[i].take().expect("node already stopped"));
    }

    /// Waits until every database holds the same content in `tables`.
    pub async fn wait_converged(&self, tables: &[&str], deadline: Duration) {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_converged_among(&all, tables, deadline).await
    }

    /// Waits until the databases of `which` nodes hold the same content in `tables`.
    pub async fn wait_converged_among(&self, which: &[usize], tables: &[&str], deadline: Duration) {
        let dbs: Vec<AppDb> = which.iter().map(|i| self.db(*i)).collect();
        let refs: Vec<&AppDb> = dbs.iter().collect();
        if poll(deadline, async || super::converged(&refs, tables))
            .await
            .is_err()
        {
            // Panics with the rows that differ.
            super::assert_converged(&refs, tables);
        }
    }

    /// Running nodes with their index.
    pub fn running(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
    }

    pub async fn stop(self) {
        for node in self.nodes.into_iter().flatten() {
            let outcome = node.stop().await;
            assert!(
                matches!(outcome, Outcome::Stopped),
                "a node did not stop cleanly: {outcome:?}"
            );
        }
    }
}

/// `-cluster-addr` / `-cluster-peers` for node `i` of a cluster on `ports`.
pub fn cluster_flags(ports: &[u16], i: usize) -> EmbeddedOptions {
    EmbeddedOptions {
        cluster_addr: Some(format!("127.0.0.1:{}", ports[i])),
        cluster_peers: ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
            .collect(),
        leaf_servers: vec![],
    }
}

/// The real `harmonylite` binary for tests, on top of the shared `NodeProcess`
/// (tests/common/process.rs): its config and log live in the test's directory.
impl NodeProcess {
    /// Writes `toml` to `<dir>/node<id>.toml` and starts the binary with `-config` and `args`,
    /// logging to `<dir>/node<id>.log`. Its data directory is the config's `data_dir`.
    pub fn spawn(dir: &Path, node_id: u64, toml: &str, args: &[&str]) -> NodeProcess {
        NodeProcess::spawn_with_env(dir, node_id, toml, args, &[])
    }

    /// `spawn` with these environment variables added.
    pub fn spawn_with_env(
        dir: &Path,
        node_id: u64,
        toml: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> NodeProcess {
        let config_path = dir.join(format!("node{node_id}.toml"));
        std::fs::write(&config_path, toml).unwrap();
        let table: toml::Table = toml.parse().unwrap();
        let data_dir = table["data_dir"].as_str().expect("data_dir in the config");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        NodeProcess::start_with_env(
            node_id,
            &config_path,
            Path::new(data_dir),
            &dir.join(format!("node{node_id}.log")),
            &args,
            env,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until the current start of the node is ready (its log says so).
    pub async fn wait_ready(&mut self) {
        if let Err(e) = self.try_wait_ready(Duration::from_secs(90)).await {
            panic!("{e}");
        }
    }

    /// Waits for the process to exit and returns its exit code (None if killed by a signal).
    pub async fn exit_code(&mut self, deadline: Duration) -> Option<i32> {
        match self.wait_exit(deadline).await {
            Ok(status) => status.code(),
            Err(e) => panic!("{e}"),
        }
    }
}

/// A minimal TOML config for a process node under `dir`: `top` adds top-level keys,
/// `nats` adds keys to `[nats]`, `sections` adds whole sections.
pub fn process_toml(dir: &Path, node_id: u64, top: &str, nats: &str, sections: &str) -> String {
    format!(
        "db_path = {:?}\nnode_id = {node_id}\nseq_map_path = {:?}\ndata_dir = {:?}\n\
         polling_interval = 50\ncleanup_interval = 200\n{top}\n\
         [nats]\nbind_address = \"127.0.0.1:-1\"\n{nats}\n[snapshot]\nenabled = false\n{sections}\n",
        dir.join(format!("node{node_id}.db")),
        dir.join(format!("seq-map-{node_id}.cbor")),
        dir.join(format!("data-{node_id}")),
    )
}
