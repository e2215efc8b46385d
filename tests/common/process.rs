//! Real processes for tests: `Process` (any program: spawned so it cannot outlive the test
//! process, stdout and stderr captured in a log file, readiness read from that log, signals,
//! kill, restart, the log's tail printed when a test panics) and `NodeProcess` (the real
//! `harmonylite` binary Cargo built for this package, with its bundled nats-server).
//!
//! Every process is started by one long-lived spawner thread with `PR_SET_PDEATHSIG = SIGKILL`:
//! the kernel kills it when that thread ends, which is when the test process ends, however it
//! ends (a panic, SIGKILL, Ctrl-C), so nothing is left running. (The signal follows the thread
//! that forked, not the process: a child forked from a pool thread would die when the pool
//! retires that thread.) Each process leads its own process group, so `Drop` also takes the
//! workers it started (sshd's, the python shim's child). harmonylite puts its nats-server in a
//! group of its own, tied to harmonylite by the same death signal; `NodeProcess` kills it too.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use super::poll::{poll, poll_blocking};

/// What to run; kept so that the process can be started again exactly the same way.
#[derive(Clone, Debug)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
}

impl Spec {
    pub fn new(program: impl Into<PathBuf>) -> Spec {
        Spec {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Spec {
        self.args.push(arg.into());
        self
    }

    pub fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Spec {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Spec {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Spec {
        self.cwd = Some(dir.into());
        self
    }
}

/// A running (or ended) process whose stdout and stderr go to a log file.
pub struct Process {
    /// For messages: "moto_server", "node 2".
    pub name: String,
    spec: Spec,
    log_path: PathBuf,
    child: Option<Child>,
    /// How many times it was started.
    starts: usize,
    /// The current child was reaped: its pid may belong to another process now.
    reaped: bool,
}

impl Process {
    /// Starts `spec`, appending its stdout and stderr to `log_path`. An error names the program
    /// (a missing tool shows as "No such file or directory").
    pub fn start(name: impl Into<String>, spec: Spec, log_path: &Path) -> io::Result<Process> {
        let mut p = Process {
            name: name.into(),
            spec,
            log_path: log_path.to_owned(),
            child: None,
            starts: 0,
            reaped: false,
        };
        p.restart()?;
        Ok(p)
    }

    /// Starts the process again the same way, appending to the same log. `Err` if it is still
    /// running.
    pub fn restart(&mut self) -> io::Result<()> {
        if self.child.is_some() && self.exited().is_none() {
            return Err(io::Error::other(format!("{} is still running", self.name)));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(dir) = &self.spec.cwd {
            cmd.current_dir(dir);
        }
        let child = spawn(cmd).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "starting {} ({}): {e}",
                    self.name,
                    self.spec.program.display()
                ),
            )
        })?;
        self.child = Some(child);
        self.reaped = false;
        self.starts += 1;
        Ok(())
    }

    pub fn starts(&self) -> usize {
        self.starts
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `sig` to the process (not to its group); nothing once it was reaped.
    pub fn signal(&self, sig: i32) {
        if let (Some(pid), false) = (self.pid(), self.reaped) {
            signal(pid, sig);
        }
    }

    /// `Some(status)` once the process has ended (it is reaped then).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten();
        self.reaped |= status.is_some();
        status
    }

    /// Waits until the process ends; `Err` at the deadline (it keeps running).
    pub async fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus, String> {
        let name = self.name.clone();
        poll(deadline, async || self.exited().ok_or(()))
            .await
            .map_err(|()| format!("{name} still running after {deadline:?}"))
    }

    /// Blocking twin of `wait_exit`.
    pub fn wait_exit_blocking(&mut self, deadline: Duration) -> Result<ExitStatus, String> {
        let name = self.name.clone();
        poll_blocking(deadline, || self.exited().ok_or(()))
            .map_err(|()| format!("{name} still running after {deadline:?}"))
    }

    /// SIGTERM, then waits for the exit; `Err` at the deadline (it keeps running).
    pub fn terminate_blocking(&mut self, deadline: Duration) -> Result<ExitStatus, String> {
        self.signal(libc::SIGTERM);
        self.wait_exit_blocking(deadline)
    }

    /// SIGKILL to the process alone (as `kill -9 PID`), then reaps it.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
            self.reaped = true;
        }
    }

    /// SIGKILL to the whole process group, then reaps the process.
    pub fn kill_group(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on the process group our own child leads.
            unsafe { libc::killpg(pid as libc::pid_t, libc::SIGKILL) };
        }
        self.kill();
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log's last `lines` lines, under a heading naming the process and the file.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        format!(
            "--- {} log tail ({}) ---\n{}",
            self.name,
            self.log_path.display(),
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    /// One look: `Ok(Ok(found))` when `find` accepts the log, `Ok(Err(status))` once the
    /// process has ended (nothing more will come), `Err(lines)` not yet.
    fn look<T>(
        &mut self,
        find: &impl Fn(&str) -> Option<T>,
    ) -> Result<Result<T, ExitStatus>, usize> {
        let exited = self.exited();
        let log = self.log();
        match (exited, find(&log)) {
            (Some(status), _) => Ok(Err(status)),
            (None, Some(found)) => Ok(Ok(found)),
            (None, None) => Err(log.lines().count()),
        }
    }

    fn outcome<T>(
        &self,
        result: Result<Result<T, ExitStatus>, usize>,
        deadline: Duration,
    ) -> Result<T, String> {
        match result {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(status)) => Err(format!(
                "{} exited with {status}\n{}",
                self.name,
                self.log_tail(100)
            )),
            Err(lines) => Err(format!(
                "{} not ready within {deadline:?} ({lines} log lines)\n{}",
                self.name,
                self.log_tail(100)
            )),
        }
    }

    /// Polls the log until `find` accepts it (the whole text) and returns what it found; `Err`
    /// with the log if the process ends first or at the deadline.
    pub async fn wait_log<T>(
        &mut self,
        deadline: Duration,
        find: impl Fn(&str) -> Option<T>,
    ) -> Result<T, String> {
        let result = poll(deadline, async || self.look(&find)).await;
        self.outcome(result, deadline)
    }

    /// Blocking twin of `wait_log`.
    pub fn wait_log_blocking<T>(
        &mut self,
        deadline: Duration,
        find: impl Fn(&str) -> Option<T>,
    ) -> Result<T, String> {
        let result = poll_blocking(deadline, || self.look(&find));
        self.outcome(result, deadline)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(30));
        }
        self.kill_group();
    }
}

/// The log line harmonylite writes once a node is ready (the binary has no other signal).
pub const NODE_READY: &str = "node ready";

/// Whether `log` holds the `starts`-th "node ready".
fn ready(log: &str, starts: usize) -> Option<()> {
    (log.matches(NODE_READY).count() >= starts).then_some(())
}

/// The real `harmonylite` binary, started as `harmonylite -config <config_path> <args>`.
pub struct NodeProcess {
    pub node_id: u64,
    pub config_path: PathBuf,
    /// The node's `data_dir`: its bundled nats-server writes its ports file to `<data_dir>/nats`.
    pub data_dir: PathBuf,
    pub process: Process,
}

impl NodeProcess {
    pub fn start(
        node_id: u64,
        config_path: &Path,
        data_dir: &Path,
        log_path: &Path,
        args: &[String],
    ) -> io::Result<NodeProcess> {
        Self::start_with_env(node_id, config_path, data_dir, log_path, args, &[])
    }

    /// `start` with these environment variables added.
    pub fn start_with_env(
        node_id: u64,
        config_path: &Path,
        data_dir: &Path,
        log_path: &Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> io::Result<NodeProcess> {
        let mut spec = Spec::new(env!("CARGO_BIN_EXE_harmonylite"))
            .arg("-config")
            .arg(config_path)
            .args(args);
        for (key, value) in env {
            spec = spec.env(key, value);
        }
        Ok(NodeProcess {
            node_id,
            config_path: config_path.to_owned(),
            data_dir: data_dir.to_owned(),
            process: Process::start(format!("node {node_id}"), spec, log_path)?,
        })
    }

    /// Waits until this start's "node ready" is in the log (a restart appends to the same log,
    /// so the n-th start waits for the n-th line). `Err` with the log if the process exits.
    pub async fn try_wait_ready(&mut self, deadline: Duration) -> Result<(), String> {
        let starts = self.process.starts();
        self.process
            .wait_log(deadline, |log| ready(log, starts))
            .await
    }

    /// Blocking twin of `try_wait_ready`.
    pub fn try_wait_ready_blocking(&mut self, deadline: Duration) -> Result<(), String> {
        let starts = self.process.starts();
        self.process
            .wait_log_blocking(deadline, |log| ready(log, starts))
    }

    /// Starts the binary again with the same config and flags (appending to its log).
    pub fn restart(&mut self) -> io::Result<()> {
        self.process.restart()
    }

    /// Pid of the running bundled nats-server.
    pub fn nats_pid(&self) -> Option<u32> {
        nats_server_pid(&self.data_dir)
    }

    /// Client URL of the running bundled nats-server, from its ports file.
    pub fn nats_client_url(&self) -> Option<String> {
        let pid = self.nats_pid()?;
        Ports::read(&self.data_dir.join("nats"), pid)?
            .nats
            .first()
            .cloned()
    }

    /// `kill -9` of harmonylite alone, then waits until its nats-server is gone too (it dies
    /// with harmonylite through its death signal; its route port must be free for a restart).
    /// `Err` if the server outlived harmonylite.
    pub fn kill9(&mut self) -> Result<(), String> {
        let nats = self.nats_pid();
        self.process.kill();
        match nats {
            Some(pid) => poll_blocking(Duration::from_secs(10), || {
                if is_live_nats_server(pid) {
                    Err(())
                } else {
                    Ok(())
                }
            })
            .map_err(|()| format!("nats-server {pid} outlived kill -9 of its node")),
            None => Ok(()),
        }
    }

    /// Kills everything this node runs: its nats-server, harmonylite and its process group.
    pub fn kill_all(&mut self) {
        if let Some(pid) = self.nats_pid() {
            signal(pid, libc::SIGKILL);
        }
        self.process.kill_group();
    }
}

impl std::ops::Deref for NodeProcess {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for NodeProcess {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // Before `process` drops (which prints the log tail if the test panicked).
        if let Some(pid) = self.nats_pid() {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// The ports a nats-server listens on, from its ports file `<dir>/nats-server_<pid>.ports`
/// (written with `--ports_file_dir <dir>` once its listeners are up; never parsed from the log).
/// It has no leafnode listener: `NatsServer::leafnode_port` asks `/varz`.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Ports {
    #[serde(default)]
    pub nats: Vec<String>,
    #[serde(default)]
    pub monitoring: Vec<String>,
    #[serde(default)]
    pub cluster: Vec<String>,
}

impl Ports {
    pub fn read(dir: &Path, pid: u32) -> Option<Ports> {
        let text = std::fs::read_to_string(dir.join(format!("nats-server_{pid}.ports"))).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// The port of a URL such as `nats://127.0.0.1:4222` or `http://127.0.0.1:8222/`.
pub fn port_of(url: &str) -> Option<u16> {
    url.trim_end_matches('/').rsplit(':').next()?.parse().ok()
}

/// Pid of the running bundled nats-server of the node whose data directory is `data_dir`: the
/// ports file in `<data_dir>/nats` whose pid is a live nats-server (a `kill -9` leaves stale
/// ports files behind).
pub fn nats_server_pid(data_dir: &Path) -> Option<u32> {
    std::fs::read_dir(data_dir.join("nats"))
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: u32 = name
                .strip_prefix("nats-server_")?
                .strip_suffix(".ports")?
                .parse()
                .ok()?;
            is_live_nats_server(pid).then_some(pid)
        })
}

/// `/proc/<pid>/stat`: `<pid> (<comm>) <state> ...`, or `None` once the process is gone.
fn stat(pid: u32) -> Option<(String, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    Some((comm, rest.trim_start().chars().next()?))
}

/// Whether a process with this pid is alive (not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, state)| state != 'Z')
}

/// Whether the process is stopped (SIGSTOP took effect on all its threads).
pub fn pid_stopped(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, state)| state == 'T')
}

/// A live (not zombie) process named nats-server.
pub fn is_live_nats_server(pid: u32) -> bool {
    stat(pid).is_some_and(|(comm, state)| comm == "nats-server" && state != 'Z')
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a pid the test started (directly or through harmonylite).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

type Request = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` on the spawner thread (see the module docs), in its own process group, with
/// the death signal set. Retries on `ETXTBSY`: another thread may have forked while a freshly
/// extracted nats-server binary was still open for writing.
fn spawn(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("test-process-spawner".into())
            .spawn(move || {
                for (cmd, reply) in rx {
                    let _ = reply.send(spawn_here(cmd));
                }
            })
            .expect("spawner thread");
        tx
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .send((cmd, reply))
        .map_err(|_| io::Error::other("spawner thread gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("spawner thread gone"))?
}

fn spawn_here(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    cmd.process_group(0);
    // SAFETY: prctl and getppid are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The test process died between fork and prctl: nothing would kill this child.
            if libc::getppid() != parent {
                return Err(io::Error::other("the test process is gone"));
            }
            Ok(())
        });
    }
    let mut busy = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && busy < 200 => {
                busy += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}
