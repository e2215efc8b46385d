//! This node's instance: the one process that runs it, and where that process lives.
//!
//! One process per node: a running node holds exclusive locks (`flock`, released by the kernel
//! when the process dies, however it dies) on `<data_dir>/harmonylite.lock` and on
//! `<db path>-harmonylite.lock` beside the database, for its whole life. A second
//! `harmonylite -config …` for the same node, `-cleanup` on its database, or a `-save-snapshot`
//! that would otherwise start a second node, finds the lock taken and says who holds it. The
//! database's lock is a separate file, not the database itself: SQLite's own locks are `fcntl`
//! locks on the database file, and the two kinds must not meet (they do on NFS).
//!
//! Where it lives (`Instance`: kernel host name and data directory) is what the node registers
//! with its id in the cluster registry, so two live processes never share one node id.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The lock file's name in the data directory.
const DATA_DIR_LOCK: &str = "harmonylite.lock";

/// Errors taking the locks.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another harmonylite process{} runs this node: {path} is locked; stop it first (for \
         example `systemctl stop harmonylite`)",
        holder_text(.holder)
    )]
    Held { path: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn holder_text(holder: &str) -> String {
    if holder.is_empty() {
        String::new()
    } else {
        format!(" ({holder})")
    }
}

/// The locks of a running node; dropping it releases them.
#[derive(Debug)]
pub struct InstanceLock {
    _files: Vec<File>,
}

impl InstanceLock {
    /// Takes the data directory's lock, then the database's.
    pub fn acquire(data_dir: &Path, db_path: &Path) -> Result<InstanceLock, LockError> {
        let first = lock_file(&data_dir.join(DATA_DIR_LOCK))?;
        let second = lock_file(&db_lock_path(db_path))?;
        Ok(InstanceLock {
            _files: vec![first, second],
        })
    }

    /// Takes only the database's lock (`-cleanup -db PATH` knows no data directory).
    pub fn acquire_database(db_path: &Path) -> Result<InstanceLock, LockError> {
        Ok(InstanceLock {
            _files: vec![lock_file(&db_lock_path(db_path))?],
        })
    }
}

/// `<db path>-harmonylite.lock`, beside SQLite's `-wal` and `-shm`.
pub fn db_lock_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push("-harmonylite.lock");
    PathBuf::from(name)
}

/// Opens (creating) and exclusively locks `path`, then writes who holds it.
fn lock_file(path: &Path) -> Result<File, LockError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    take_lock(&mut file, path)?;
    // Who holds it, for the message of the next one to try; the lock works without it (a full
    // disk must not stop a node from starting).
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", own_holder()));
    Ok(file)
}

/// Locks `file`, or says who holds it.
///
/// A lock that names this very process was released here a moment ago (a node stopped and is
/// started again in one process, as the tests do) and is still held by a child that another
/// thread forked and that has not yet exec'd: the child shares the locked description until its
/// exec closes it (`O_CLOEXEC`). That window is short, so such a lock is tried again for up to
/// [`OWN_FORK_WAIT`]; a lock that names another process is refused at once.
fn take_lock(file: &mut File, path: &Path) -> Result<(), LockError> {
    let deadline = Instant::now() + OWN_FORK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file
                    .rewind()
                    .and_then(|()| file.read_to_string(&mut holder));
                let holder = holder.trim().to_owned();
                if holder != own_holder() || Instant::now() >= deadline {
                    return Err(LockError::Held {
                        path: path.to_path_buf(),
                        holder,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(TryLockError::Error(source)) => {
                return Err(LockError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// How long a lock naming this process is tried again (see [`take_lock`]).
const OWN_FORK_WAIT: Duration = Duration::from_secs(1);

/// What a lock file says about this process.
fn own_holder() -> String {
    format!("pid {}", std::process::id())
}

/// Where this node's process lives, as registered with its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The kernel host name.
    pub host: String,
    /// The data directory, absolute.
    pub data_dir: String,
}

impl Instance {
    /// This process's instance for `data_dir`.
    pub fn here(data_dir: &Path) -> Instance {
        let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        Instance {
            host: crate::config::identity::host_name().unwrap_or_default(),
            data_dir: dir.display().to_string(),
        }
    }
}

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host {:?}, data directory {}", self.host, self.data_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let held = InstanceLock::acquire(dir.path(), &db).unwrap();
        let again = InstanceLock::acquire(dir.path(), &db).unwrap_err();
        let text = again.to_string();
        assert!(text.contains("harmonylite.lock"), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        // The database's lock alone is held too (another data directory, same database).
        let other = tempfile::tempdir().unwrap();
        let err = InstanceLock::acquire(other.path(), &db).unwrap_err();
        assert!(err.to_string().contains("app.db-harmonylite.lock"), "{err}");
        assert!(InstanceLock::acquire_database(&db).is_err());
        drop(held);
        InstanceLock::acquire(dir.path(), &db).unwrap();
    }

    #[test]
    fn a_lock_released_while_another_thread_forks_is_taken_again() {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let held = InstanceLock::acquire(dir.path(), &db).unwrap();
        // A child forked now shares the locked descriptions until it execs; it says when it
        // has forked, then waits before its exec.
        let (mut forked, tell) = std::io::pipe().unwrap();
        let spawner = std::thread::spawn(move || {
            let tell_fd = tell.as_raw_fd();
            let mut cmd = std::process::Command::new("true");
            // SAFETY: write and nanosleep are async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    libc::write(tell_fd, [1u8].as_ptr().cast(), 1);
                    let pause = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 300_000_000,
                    };
                    libc::nanosleep(&pause, std::ptr::null_mut());
                    Ok(())
                });
            }
            cmd.status().unwrap()
        });
        let mut byte = [0u8; 1];
        forked.read_exact(&mut byte).unwrap();
        drop(held);
        InstanceLock::acquire(dir.path(), &db).expect("taken once the child has exec'd");
        assert!(spawner.join().unwrap().success());
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_the_path() {
        let err = InstanceLock::acquire_database(Path::new("/nonexistent/dir/app.db")).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("/nonexistent/dir/app.db-harmonylite.lock")
        );
    }
}
