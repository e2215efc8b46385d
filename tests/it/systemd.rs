//! The systemd notification protocol spoken by the real binary, with this test as the service
//! manager: a datagram socket passed in `NOTIFY_SOCKET`, and `WATCHDOG_USEC`. The packaged unit
//! under a real systemd (the watchdog restarting a frozen process) is checked by
//! `packaging/test/systemd-check.sh`.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;

use crate::common::process::pid_stopped;
use crate::harness::node::process_toml;
use crate::harness::{AppDb, ClosedPort, NodeProcess, eventually};

/// The watchdog interval the test asks for: fed every 0.5 s.
const WATCHDOG_USEC: u64 = 1_500_000;

/// The service manager's end of `NOTIFY_SOCKET`.
struct Manager {
    socket: UnixDatagram,
    path: String,
    /// Every message received, in order.
    seen: Vec<String>,
}

impl Manager {
    fn bind(dir: &Path) -> Manager {
        let path = dir.join("notify.sock");
        Manager {
            socket: UnixDatagram::bind(&path).unwrap(),
            path: path.display().to_string(),
            seen: Vec::new(),
        }
    }

    fn env(&self, watchdog: bool) -> Vec<(&'static str, String)> {
        let mut env = vec![("NOTIFY_SOCKET", self.path.clone())];
        if watchdog {
            env.push(("WATCHDOG_USEC", WATCHDOG_USEC.to_string()));
        }
        env
    }

    /// The next message, or `None` when none comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(wait, self.socket.recv(&mut buf))
            .await
            .ok()?
            .unwrap();
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.seen.push(message.clone());
        Some(message)
    }

    /// Waits (up to `deadline`) for a message that satisfies `want`.
    async fn until(
        &mut self,
        what: &str,
        deadline: Duration,
        want: impl Fn(&str) -> bool,
    ) -> String {
        let end = Instant::now() + deadline;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if let Some(m) = self.next(left).await
                && want(&m)
            {
                return m;
            }
        }
        panic!("no {what} within {deadline:?}; received: {:#?}", self.seen);
    }

    /// Forgets the messages already queued, without waiting.
    fn drain(&mut self) {
        let mut buf = vec![0u8; 4096];
        while self.socket.try_recv(&mut buf).is_ok() {}
    }

    /// Messages received within `window`.
    async fn during(&mut self, window: Duration) -> Vec<String> {
        let end = Instant::now() + window;
        let mut got = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.next(left).await {
                Some(m) => got.push(m),
                None => break,
            }
        }
        got
    }
}

fn watchdogs(messages: &[String]) -> usize {
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_watchdog_and_stopping_reach_the_service_manager() {
    let dir = tempfile::tempdir().unwrap();
    let mut manager = Manager::bind(dir.path());
    let toml = process_toml(dir.path(), 1, "", "", "");
    // The application's table exists: the node replicates and becomes ready.
    AppDb::open(&dir.path().join("node1.db"))
        .exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    let mut node = NodeProcess::spawn_with_env(dir.path(), 1, &toml, &[], &manager.env(true));

    let ready = manager
        .until("READY=1", Duration::from_secs(60), |m| {
            m.contains("READY=1")
        })
        .await;
    assert!(ready.contains("STATUS="), "{ready}");
    let replicating = manager
        .until("a replicating status", Duration::from_secs(30), |m| {
            m.contains("STATUS=replicating, 1 tables, lag")
        })
        .await;
    assert!(replicating.contains("WATCHDOG=1"), "{replicating}");
    let fed = manager.during(Duration::from_secs(2)).await;
    assert!(watchdogs(&fed) >= 3, "fed every 0.5 s: {fed:#?}");

    // Frozen: nothing feeds the watchdog (systemd would kill and restart it).
    node.process.signal(libc::SIGSTOP);
    let pid = node.process.pid().unwrap();
    eventually(
        "the process is stopped",
        Duration::from_secs(10),
        async || pid_stopped(pid).then_some(()).ok_or("running"),
    )
    .await;
    manager.drain(); // what was sent before the freeze
    let frozen = manager.during(Duration::from_secs(2)).await;
    node.process.signal(libc::SIGCONT);
    assert_eq!(watchdogs(&frozen), 0, "{frozen:#?}");
    manager
        .until("WATCHDOG=1 after the thaw", Duration::from_secs(10), |m| {
            m.contains("WATCHDOG=1")
        })
        .await;

    node.process.signal(libc::SIGTERM);
    manager
        .until("STOPPING=1", Duration::from_secs(30), |m| {
            m.contains("STOPPING=1")
        })
        .await;
    assert_eq!(node.exit_code(Duration::from_secs(30)).await, Some(0));
}

/// A start that waits (NATS unreachable, retried) extends the start timeout and says it is
/// starting; it never claims to be ready, and exits by itself when it gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_start_extends_the_start_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut manager = Manager::bind(dir.path());
    let closed = ClosedPort::bind();
    let nats = format!(
        "urls = [\"nats://127.0.0.1:{}\"]\nconnect_retries = 5\nreconnect_wait_seconds = 2\n",
        closed.port
    );
    let toml = process_toml(dir.path(), 1, "", &nats, "");
    let mut node = NodeProcess::spawn_with_env(dir.path(), 1, &toml, &[], &manager.env(false));
    let extend = manager
        .until("EXTEND_TIMEOUT_USEC", Duration::from_secs(30), |m| {
            m.contains("EXTEND_TIMEOUT_USEC=")
        })
        .await;
    assert!(extend.contains("EXTEND_TIMEOUT_USEC=30000000"), "{extend}");
    assert!(extend.contains("STATUS=starting"), "{extend}");
    let code = node.exit_code(Duration::from_secs(60)).await;
    assert_eq!(code, Some(1), "{}", node.log());
    // The process has exited: everything it sent is queued.
    while manager.next(Duration::ZERO).await.is_some() {}
    assert!(
        !manager.seen.iter().any(|m| m.contains("READY=1")),
        "{:#?}",
        manager.seen
    );
    assert!(
        !manager.seen.iter().any(|m| m.contains("WATCHDOG=1")),
        "no watchdog asked for"
    );
}
