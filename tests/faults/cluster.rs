//! The nodes: three real `harmonylite` processes (the binary Cargo built for this package), each
//! with its bundled nats-server clustered with the others through the proxy, each on its own
//! database file in one temp dir. Owns every process it starts: `Drop` kills them all,
//! nats-servers included, also when the program panics.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tempfile::TempDir;

use crate::proxy::Proxy;
use crate::schema::DDL;

pub struct NodeProc {
    /// 0-based index; the node id is `idx + 1`.
    pub idx: usize,
    pub db_path: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    config_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// How many times the process was started: the log's "node ready" count to wait for.
    starts: usize,
}

pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub proxy: Proxy,
    pub dir: TempDir,
    /// Keep `dir` after the processes are gone (a failed seed, for a post-mortem).
    pub keep: bool,
}

impl Cluster {
    /// Creates the databases with the schema, starts every node and waits until all are ready.
    pub fn start(n: usize, shards: u32) -> Result<Cluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("harmonylite-faults-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        // Route listeners need fixed ports: every peer's proxy must know them before any starts.
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let proxy = Proxy::start(&cluster_ports);
        let mut nodes = Vec::new();
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
            let toml = format!(
                "db_path = {db:?}\nnode_id = {id}\nseq_map_path = {seq:?}\ndata_dir = {data:?}\n\
                 polling_interval = 50\ncleanup_interval = 200\n\
                 [replication_log]\nshards = {shards}\nreplicas = {n}\nmax_entries = 10000000\n\
                 [nats]\nbind_address = \"127.0.0.1:-1\"\nserver_config = {routes:?}\n\
                 [snapshot]\nenabled = false\n[logging]\nverbose = {verbose}\n",
                db = db_path,
                seq = p(format!("seq-map-{id}.cbor")),
                data = data_dir,
                routes = routes_conf,
                verbose = std::env::var("FAULTS_VERBOSE").is_ok_and(|v| v == "1"),
            );
            std::fs::write(&config_path, toml).map_err(|e| e.to_string())?;
            let args = vec![
                "-cluster-addr".to_owned(),
                format!("127.0.0.1:{route_port}"),
                "-cluster-peers".to_owned(),
                peers.join(","),
            ];
            nodes.push(NodeProc {
                idx,
                db_path,
                data_dir,
                log_path: p(format!("node{id}.log")),
                config_path,
                args,
                child: None,
                starts: 0,
            });
        }
        let mut cluster = Cluster {
            nodes,
            proxy,
            dir,
            keep: false,
        };
        for node in &mut cluster.nodes {
            node.start()?;
        }
        for node in &mut cluster.nodes {
            node.wait_ready(Duration::from_secs(120))?;
        }
        Ok(cluster)
    }

    pub fn db_paths(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.db_path.clone()).collect()
    }

    /// The last lines of every node's log, for a failure report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            let all: Vec<&str> = log.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!(
                "--- node {} log tail ({}) ---\n{}\n",
                node.idx + 1,
                node.log_path.display(),
                tail.join("\n")
            ));
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
    pub fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_harmonylite"));
        cmd.arg("-config")
            .arg(&self.config_path)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        // SAFETY: prctl is async-signal-safe. If this program dies without running `Drop`
        // (SIGTERM, SIGKILL, Ctrl-C during a long run), the kernel kills the node, and the
        // node's own PR_SET_PDEATHSIG takes its nats-server along: nothing is left running.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting node {}: {e}", self.idx + 1))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Waits until this start's "node ready" appears in the log.
    pub fn wait_ready(&mut self, deadline: Duration) -> Result<(), String> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!("node {} exited with {status}", self.idx + 1));
            }
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            if log.matches("node ready").count() >= self.starts {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(format!(
                    "node {} not ready within {deadline:?}",
                    self.idx + 1
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `Some(status)` if the process has ended (and was reaped).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut()?.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            signal(pid, sig);
        }
    }

    /// `kill -9`, then waits until the process and its nats-server are gone (the server dies
    /// with it through PR_SET_PDEATHSIG; its route port must be free before a restart).
    pub fn kill9(&mut self) {
        let nats = self.nats_pid();
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = nats {
            wait_gone(pid, Duration::from_secs(10));
        }
    }

    /// SIGTERM and a clean exit; `Err` if it took longer than `deadline` (then it is killed).
    pub fn terminate(&mut self, deadline: Duration) -> Result<String, String> {
        self.signal(libc::SIGTERM);
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() > end {
                self.kill9();
                return Err(format!(
                    "node {} ignored SIGTERM for {deadline:?}",
                    self.idx + 1
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Pid of the running bundled nats-server: the ports file whose pid is a live nats-server
    /// (a `kill -9` leaves stale ports files behind).
    pub fn nats_pid(&self) -> Option<u32> {
        let dir = self.data_dir.join("nats");
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: u32 = name
                .strip_prefix("nats-server_")?
                .strip_suffix(".ports")?
                .parse()
                .ok()?;
            alive_nats(pid).then_some(pid)
        })
    }

    fn kill_all(&mut self) {
        if let Some(pid) = self.nats_pid() {
            signal(pid, libc::SIGKILL);
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a pid this program started (directly or through harmonylite).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A live (not zombie) process named nats-server.
fn alive_nats(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "<pid> (<comm>) <state> …"
    stat.contains("(nats-server)")
        && !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

pub fn wait_gone(pid: u32, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    while alive_nats(pid) {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A port that was free a moment ago (route ports only; see `Cluster::start`).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}
