//! The bundled nats-server: render its config, start it, supervise it, stop it.
//!
//! One owner (the supervisor task) holds the child process. The child is killed if we die
//! (`PR_SET_PDEATHSIG`, also on `kill -9` of our process), restarted with capped backoff if it
//! crashes, and its log lines are re-emitted through `tracing` under the `nats_server` target.
//! Random ports (`-1`) are resolved through the server's ports file, never through its log, and
//! the resolved ports are kept for restarts so clients reconnect to the same address.
//! Before every start and restart the binary is checked against the bundled SHA-256
//! (`bundle::extract`), and the config files are created mode 0600 (they may hold passwords).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::NatsError;
use super::bundle;
use super::spec::{ServerSpec, render_config};
use crate::error::Chain;
use crate::retry::Backoff;

/// Cluster name shared by every bundled server (HarmonyLite's `e-harmonylite`).
pub const CLUSTER_NAME: &str = "e-harmonylite";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Waits before restarting a server that exited on its own.
const RESTART: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));

/// Flags that shape the bundled server's cluster (`-cluster-addr`, `-cluster-peers`,
/// `-leaf-servers`).
#[derive(Debug, Clone, Default)]
pub struct EmbeddedOptions {
    pub cluster_addr: Option<String>,
    pub cluster_peers: Vec<String>,
    pub leaf_servers: Vec<String>,
}

/// Ports the running server listens on, read from its ports file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
struct PortsFile {
    #[serde(default)]
    nats: Vec<String>,
    #[serde(default)]
    cluster: Vec<String>,
}

/// Shared view of the bundled server, for the node, the dashboard and tests.
#[derive(Debug)]
pub struct ServerState {
    client_port: AtomicU32,
    cluster_port: AtomicU32,
    pid: AtomicU32,
    /// The node's `nats_server_restarts_total` counter (a shared handle).
    restarts: IntCounter,
}

/// Handle to the supervised server. Dropping it does not stop the server; call `stop`.
#[derive(Debug)]
pub struct EmbeddedServer {
    state: Arc<ServerState>,
    host: String,
    stop: CancellationToken,
    supervisor: JoinHandle<()>,
}

impl EmbeddedServer {
    /// Extracts the bundled binary into `dir`, writes the config, starts the server and waits
    /// until it reports its ports.
    /// Starts the server in `dir`; every restart after an exit counts on `restarts`.
    pub async fn start(
        mut spec: ServerSpec,
        dir: &Path,
        restarts: IntCounter,
    ) -> Result<Self, NatsError> {
        let io = |what: &'static str| {
            move |source| NatsError::Io {
                what,
                path: dir.to_path_buf(),
                source,
            }
        };
        std::fs::create_dir_all(&spec.store_dir).map_err(io("creating the JetStream store"))?;
        if let Some(operator) = &spec.operator_config {
            // Read and written anew, not `fs::copy`: a copy keeps the source's mode, and the
            // operator's file may hold credentials.
            let text = std::fs::read(operator).map_err(io("reading nats.server_config"))?;
            write_private(&dir.join("operator.conf"), &text)
                .map_err(io("copying nats.server_config"))?;
        }
        let state = Arc::new(ServerState {
            client_port: AtomicU32::new(0),
            cluster_port: AtomicU32::new(0),
            pid: AtomicU32::new(0),
            restarts,
        });
        let mut child = spawn_child(&spec, dir, &state).await?;
        let ports = match wait_for_ports(dir, &mut child).await {
            Ok(ports) => ports,
            Err(e) => {
                let _ = child.kill().await;
                return Err(e);
            }
        };
        // Keep the resolved ports so a restarted server listens where clients reconnect.
        spec.port = port_of(ports.nats.first())
            .map(i32::from)
            .unwrap_or(spec.port);
        if let (Some(listen), Some(port)) = (&spec.cluster_listen, port_of(ports.cluster.first())) {
            let host = listen.rsplit_once(':').map(|(h, _)| h).unwrap_or(listen);
            spec.cluster_listen = Some(format!("{host}:{port}"));
        }
        record_ports(&state, &ports);
        info!(
            client_port = state.client_port.load(Ordering::Relaxed),
            cluster_port = state.cluster_port.load(Ordering::Relaxed),
            name = %spec.name,
            "bundled nats-server started"
        );
        let stop = CancellationToken::new();
        let host = connect_host(&spec.host);
        let supervisor = tokio::spawn(supervise(
            child,
            spec,
            dir.to_path_buf(),
            state.clone(),
            stop.clone(),
        ));
        Ok(Self {
            state,
            host,
            stop,
            supervisor,
        })
    }

    /// URL clients of this node use to reach the server.
    pub fn client_url(&self) -> String {
        format!(
            "nats://{}:{}",
            self.host,
            self.state.client_port.load(Ordering::Relaxed)
        )
    }

    /// Route URL peers use to join this server's cluster, when clustered.
    pub fn cluster_url(&self) -> Option<String> {
        let port = self.state.cluster_port.load(Ordering::Relaxed);
        (port != 0).then(|| format!("nats://{}:{port}", self.host))
    }

    /// Process id of the running server (0 while restarting).
    pub fn pid(&self) -> u32 {
        self.state.pid.load(Ordering::Relaxed)
    }

    /// How many times the server was restarted after exiting on its own.
    pub fn restarts(&self) -> u64 {
        self.state.restarts.get()
    }

    /// Shared state, for status readers.
    pub fn state(&self) -> Arc<ServerState> {
        self.state.clone()
    }

    /// SIGTERM, wait, SIGKILL; returns when the process is gone.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.supervisor.await;
    }
}

impl ServerState {
    pub fn client_port(&self) -> u32 {
        self.client_port.load(Ordering::Relaxed)
    }
    pub fn cluster_port(&self) -> u32 {
        self.cluster_port.load(Ordering::Relaxed)
    }
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }
    pub fn restarts(&self) -> u64 {
        self.restarts.get()
    }
}

/// `0.0.0.0` and `::` listen everywhere; clients on this machine reach them on loopback.
fn connect_host(host: &str) -> String {
    match host {
        "" | "0.0.0.0" => "127.0.0.1".to_owned(),
        "::" | "[::]" => "[::1]".to_owned(),
        other => other.to_owned(),
    }
}

fn port_of(url: Option<&String>) -> Option<u16> {
    url?.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

fn record_ports(state: &ServerState, ports: &PortsFile) {
    if let Some(port) = port_of(ports.nats.first()) {
        state.client_port.store(u32::from(port), Ordering::Relaxed);
    }
    if let Some(port) = port_of(ports.cluster.first()) {
        state.cluster_port.store(u32::from(port), Ordering::Relaxed);
    }
}

/// Writes `contents` to `path` through a temp file created mode 0600 (so the text is never
/// readable by others, not even for a moment) and renamed over `path` (so a file left from an
/// earlier version with a wider mode is replaced, not reused).
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Verifies (or restores) the binary, writes the config and starts the server.
async fn spawn_child(
    spec: &ServerSpec,
    dir: &Path,
    state: &ServerState,
) -> Result<Child, NatsError> {
    let binary = bundle::extract(dir).map_err(|source| NatsError::Io {
        what: "extracting nats-server",
        path: dir.to_path_buf(),
        source,
    })?;
    let conf = dir.join("nats-server.conf");
    write_private(&conf, render_config(spec).as_bytes()).map_err(|source| NatsError::Io {
        what: "writing the server config",
        path: conf.clone(),
        source,
    })?;
    remove_ports_files(dir);
    let mut cmd = Command::new(&binary);
    cmd.arg("-c")
        .arg(&conf)
        .arg("--ports_file_dir")
        .arg(dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Own process group: a terminal's Ctrl-C reaches only us, and we stop the server last.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the child when the
    // thread that spawned it dies, so the server never outlives a `kill -9` of harmonylite.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = spawn_retrying_busy(&mut cmd)
        .await
        .map_err(|source| NatsError::Io {
            what: "starting nats-server",
            path: binary,
            source,
        })?;
    state.pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_log(BufReader::new(out)));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_log(BufReader::new(err)));
    }
    Ok(child)
}

/// Spawns, retrying on `ETXTBSY`: another thread of this process may have forked while a
/// freshly extracted binary was still open for writing, and its child holds that descriptor until
/// it execs. The window is short, so a few retries always get through.
async fn spawn_retrying_busy(cmd: &mut Command) -> std::io::Result<Child> {
    let mut attempts = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// Re-emits the server's log lines (`[pid] date time [INF] text`) at a matching level. The task
/// ends at end-of-file, when the child exits.
async fn forward_log<R: tokio::io::AsyncRead + Unpin>(reader: BufReader<R>) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (level, text) = server_log_level(&line);
        match level {
            "FTL" | "ERR" => error!(target: "nats_server", "{text}"),
            "WRN" => warn!(target: "nats_server", "{text}"),
            "INF" => info!(target: "nats_server", "{text}"),
            _ => debug!(target: "nats_server", "{text}"),
        }
    }
}

/// The level and text of a nats-server log line, `[pid] date time [LVL] text`; lines without a
/// level are informational.
fn server_log_level(line: &str) -> (&str, &str) {
    const LEVELS: [&str; 6] = ["FTL", "ERR", "WRN", "INF", "DBG", "TRC"];
    for (i, _) in line.match_indices('[') {
        let Some(level) = line.get(i + 1..i + 4) else {
            break;
        };
        if LEVELS.contains(&level) && line.get(i + 4..i + 5) == Some("]") {
            return (level, line[i + 5..].trim());
        }
    }
    ("INF", line)
}

fn remove_ports_files(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".ports") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

async fn wait_for_ports(dir: &Path, child: &mut Child) -> Result<PortsFile, NatsError> {
    let pid = child.id().unwrap_or(0);
    let file = dir.join(format!("nats-server_{pid}.ports"));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(ports) = serde_json::from_str::<PortsFile>(&text)
            && !ports.nats.is_empty()
        {
            return Ok(ports);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NatsError::ServerExited {
                status: status.to_string(),
            });
        }
        if Instant::now() > deadline {
            return Err(NatsError::ServerNotReady {
                waited: READY_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Owns the child: restarts it when it exits on its own, stops it when asked.
async fn supervise(
    mut child: Child,
    spec: ServerSpec,
    dir: PathBuf,
    state: Arc<ServerState>,
    stop: CancellationToken,
) {
    let mut backoff = RESTART;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                terminate(&mut child).await;
                state.pid.store(0, Ordering::Relaxed);
                return;
            }
            status = child.wait() => {
                state.pid.store(0, Ordering::Relaxed);
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                let delay = backoff.next_delay();
                warn!(%status, delay_ms = delay.as_millis() as u64, "bundled nats-server exited, restarting");
                if !crate::retry::sleep(delay, &stop).await {
                    return;
                }
                match restart(&spec, &dir, &state).await {
                    Ok(new_child) => {
                        backoff.reset();
                        child = new_child;
                    }
                    Err(Some(dead)) => child = dead,
                    Err(None) => {
                        if !backoff.wait(&stop).await {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Starts the server again. `Err(Some(child))`: it started but did not come up (killed; its
/// exit is what the supervisor waits for next); `Err(None)`: it could not be started.
async fn restart(
    spec: &ServerSpec,
    dir: &Path,
    state: &Arc<ServerState>,
) -> Result<Child, Option<Child>> {
    match spawn_child(spec, dir, state).await {
        Ok(mut child) => match wait_for_ports(dir, &mut child).await {
            Ok(ports) => {
                record_ports(state, &ports);
                state.restarts.inc();
                info!("bundled nats-server restarted");
                Ok(child)
            }
            Err(error) => {
                warn!(error = %Chain(&error), "restarted nats-server did not come up");
                let _ = child.kill().await;
                Err(Some(child))
            }
        },
        Err(error) => {
            error!(error = %Chain(&error), "cannot restart nats-server");
            Err(None)
        }
    }
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to our own child process id.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            info!("bundled nats-server stopped");
            return;
        }
        warn!("bundled nats-server did not stop in time, killing it");
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::{server_log_level, write_private};

    #[test]
    fn private_files_are_replaced_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nats-server.conf");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let old_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        write_private(&path, b"password: x").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // A new file, never the old world-readable one rewritten in place.
        assert_ne!(std::os::unix::fs::MetadataExt::ino(&meta), old_inode);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "password: x");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
    }

    #[test]
    fn log_levels_are_read_after_the_date() {
        assert_eq!(
            server_log_level("[4242] 2026/12/05 18:00:00.123456 [ERR] route closed"),
            ("ERR", "route closed")
        );
        assert_eq!(
            server_log_level("[1] 2026/12/05 18:00:00.000001 [WRN] slow consumer [x]"),
            ("WRN", "slow consumer [x]")
        );
        assert_eq!(server_log_level("no level here"), ("INF", "no level here"));
    }
}
