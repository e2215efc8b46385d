//! Noticing commits: inotify events on the database and its `-wal` file wake the publisher
//! within a millisecond; `polling_interval` (or a slow safety tick) covers file systems without
//! events.
//!
//! SQLite writes a WAL frame per page with its own `write`, so one small commit raises a dozen
//! events or more (about 16,000 a second at 1,000 single-row commits a second, measured in
//! `docs/benchmarks.md`, run I), and handling them one by one cost a node 7-8 % of a core. The
//! watch thread wakes the publisher at the first event of a read, then sleeps `COALESCE`: the
//! kernel merges the identical events that arrive meanwhile into one, which the next read turns
//! into at most one more wake (catching the end of a commit the first wake came too early for).

use crate::error::Chain;
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use inotify::{Inotify, WatchMask};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Without events and without `polling_interval`, we still look this often.
const SAFETY_POLL: Duration = Duration::from_secs(1);
/// After a wake, events are left to the kernel to merge for this long: at most one wake per
/// period, and a commit is noticed at most this much later than its last write.
const COALESCE: Duration = Duration::from_micros(500);
/// How often the watch thread looks at the cancellation token while no event arrives.
const CANCEL_CHECK_MS: i32 = 100;

/// Watches the database and wakes `wake` on every commit. Runs until cancelled.
pub async fn run(
    db_path: PathBuf,
    polling: Option<Duration>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let on_commit = {
        let wake = wake.clone();
        move || wake.notify_one()
    };
    // The thread ends on its own once cancelled; nothing waits for it.
    let watching = match watch_files(&db_path, on_commit, cancel.clone()) {
        Ok(_thread) => true,
        Err(error) => {
            warn!(error = %Chain(&error), path = %db_path.display(), "file-system events unavailable, polling");
            false
        }
    };
    let period = match (polling, watching) {
        (Some(p), _) => p,
        (None, true) => SAFETY_POLL,
        (None, false) => Duration::from_millis(100),
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => wake.notify_one(),
        }
    }
}

/// The database's file names and the directory that holds them (symbolic links resolved).
struct Watched {
    dir: PathBuf,
    db: OsString,
    wal: OsString,
}

impl Watched {
    fn of(db_path: &Path) -> std::io::Result<Watched> {
        let db = std::fs::canonicalize(db_path).unwrap_or_else(|_| db_path.to_path_buf());
        let name = db
            .file_name()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
        let mut wal = name.to_os_string();
        wal.push("-wal");
        Ok(Watched {
            dir: db
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| ".".into()),
            db: name.to_os_string(),
            wal,
        })
    }

    fn is_ours(&self, name: Option<&std::ffi::OsStr>) -> bool {
        name.is_some_and(|n| n == self.db || n == self.wal)
    }
}

/// Starts the watch thread on the database's directory (SQLite replaces `-wal` files, so
/// watching the files themselves would lose them); it ends within `CANCEL_CHECK_MS` of `cancel`.
fn watch_files(
    db_path: &Path,
    on_commit: impl Fn() + Send + 'static,
    cancel: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let watched = Watched::of(db_path)?;
    let inotify = Inotify::init()?;
    inotify.watches().add(&watched.dir, WatchMask::MODIFY)?;
    std::thread::Builder::new()
        .name("harmonylite-watch".into())
        .spawn(move || {
            if let Err(error) = watch_loop(inotify, &watched, &on_commit, &cancel) {
                warn!(error = %Chain(&error), "file-system events stopped, polling");
            }
        })
}

fn watch_loop(
    mut inotify: Inotify,
    watched: &Watched,
    on_commit: &dyn Fn(),
    cancel: &CancellationToken,
) -> std::io::Result<()> {
    let mut buffer = [0u8; 4096];
    while !cancel.is_cancelled() {
        if !readable(&inotify, CANCEL_CHECK_MS)? {
            continue;
        }
        let events = match inotify.read_events(&mut buffer) {
            Ok(events) => events,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        };
        if events.into_iter().any(|e| watched.is_ours(e.name)) {
            on_commit();
        }
        // Other files' events too: another database in the directory must not keep this
        // thread reading event by event either.
        std::thread::sleep(COALESCE);
    }
    Ok(())
}

/// Waits up to `timeout_ms` for events; false when none arrived.
fn readable(inotify: &Inotify, timeout_ms: i32) -> std::io::Result<bool> {
    let mut fd = libc::pollfd {
        fd: inotify.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `fd` is one valid pollfd that outlives the call.
    match unsafe { libc::poll(&mut fd, 1, timeout_ms) } {
        -1 => {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(error)
            }
        }
        n => Ok(n > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A commit is noticed within milliseconds, a large commit's burst of WAL writes a bounded
    /// number of times, a write to another file in the directory not at all, and the watch
    /// thread ends when cancelled.
    #[test]
    fn commits_are_noticed_coalesced_and_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("app.db");
        let app = rusqlite::Connection::open(&db_path).unwrap();
        app.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
             CREATE TABLE t(id INTEGER PRIMARY KEY, v)",
        )
        .unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let counter = calls.clone();
        let on_commit = move || {
            counter.fetch_add(1, Ordering::SeqCst);
        };
        let thread = watch_files(&db_path, on_commit, cancel.clone()).unwrap();
        let noticed_within = |limit: Duration, from: u64| {
            let end = std::time::Instant::now() + limit;
            while std::time::Instant::now() < end {
                if calls.load(Ordering::SeqCst) > from {
                    return true;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            false
        };

        for i in 0..20 {
            std::fs::write(dir.path().join("other.log"), format!("line {i}")).unwrap();
        }
        assert!(
            !noticed_within(Duration::from_millis(200), 0),
            "a write to another file was taken for a commit"
        );

        app.execute("INSERT INTO t VALUES (1, 'a')", []).unwrap();
        assert!(
            noticed_within(Duration::from_millis(100), 0),
            "a commit was not noticed within 100 ms"
        );

        // A commit of some 4,000 pages: one `write` per WAL frame. Every notice is followed by
        // `COALESCE` asleep, so however fast the frames come, the notices are bounded by time.
        std::thread::sleep(Duration::from_millis(20));
        let before = calls.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        app.execute(
            "WITH RECURSIVE s(x) AS (SELECT 2 UNION ALL SELECT x + 1 FROM s WHERE x < 16001) \
             INSERT INTO t SELECT x, zeroblob(900) FROM s",
            [],
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let noticed = calls.load(Ordering::SeqCst) - before;
        let bound = started.elapsed().as_micros() / COALESCE.as_micros() + 2;
        assert!(
            (1..=bound as u64).contains(&noticed),
            "a large commit was noticed {noticed} times, expected 1 to {bound}"
        );

        // Cancelled, the thread ends by itself (a commit meanwhile does not hold it up).
        cancel.cancel();
        app.execute("INSERT INTO t VALUES (20000, 'c')", [])
            .unwrap();
        let (ended, end) = std::sync::mpsc::channel();
        std::thread::spawn(move || ended.send(thread.join().is_ok()));
        assert_eq!(
            end.recv_timeout(Duration::from_secs(5)),
            Ok(true),
            "the watch thread went on after it was cancelled"
        );
    }
}
