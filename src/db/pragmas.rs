//! Every pragma our connections set, each with the reason.

use std::time::Duration;

use rusqlite::Connection;

/// How long a statement waits for the application's write lock before failing with
/// `SQLITE_BUSY`. The application writes concurrently; a long wait is cheaper than a retry loop.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The writer's first tries at a lock the application holds come this often, for
/// `FINE_TRIES` tries; then every `COARSE_WAIT`. SQLite's own handler sleeps 1, 2, 5, 10 ms…
/// between tries: a fold or apply that met one of the application's commits (tens of µs) lost a
/// millisecond or more, on the commit-to-visible path.
const FINE_WAIT: Duration = Duration::from_micros(100);
const FINE_TRIES: u32 = 50;
const COARSE_WAIT: Duration = Duration::from_millis(1);
/// Readers in WAL mode rarely wait (only around checkpoints and recovery).
const READER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `op` again while it fails with `SQLITE_BUSY`, up to `deadline`. Switching the journal
/// mode needs the file to itself, and SQLite answers busy at once, without its busy handler,
/// while the application holds the database (seen in the fault program: an application that
/// recreated a lost database file made the node's start fail).
fn while_busy<T>(
    deadline: Duration,
    mut op: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let started = std::time::Instant::now();
    loop {
        match op() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && started.elapsed() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            done => return done,
        }
    }
}

/// How long the writer sleeps before its try number `attempt` (from 0) at a busy lock; `None`
/// once the sleeps before it add up to `WRITER_BUSY_TIMEOUT`.
fn writer_busy_wait(attempt: u32) -> Option<Duration> {
    let fine = attempt.min(FINE_TRIES);
    let waited = FINE_WAIT * fine + COARSE_WAIT * (attempt - fine);
    (waited < WRITER_BUSY_TIMEOUT).then_some(if attempt < FINE_TRIES {
        FINE_WAIT
    } else {
        COARSE_WAIT
    })
}

/// SQLite's busy handler for the writer's connections: true to try again.
fn writer_busy(attempt: i32) -> bool {
    match writer_busy_wait(u32::try_from(attempt).unwrap_or(0)) {
        Some(wait) => {
            std::thread::sleep(wait);
            true
        }
        None => false,
    }
}

/// The engine's one read-write connection, and the database's journal mode.
pub fn configure_writer(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_handler(Some(writer_busy))?;
    // WAL lets the publisher's read transactions run while the application and the applier
    // write, and it is what the commit watcher observes (the -wal file).
    let mode: String = while_busy(WRITER_BUSY_TIMEOUT, || {
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
    })?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "database did not switch to WAL journal mode");
    }
    configure_writer_connection(conn)?;
    set_writer_synchronous(conn)
}

/// The writer's settings that belong to a connection and parse nothing: what a connection
/// that replaces the writer's gets at once (the journal mode stays set in the database file;
/// setting it, or `synchronous`, would parse the whole schema).
pub fn configure_writer_connection(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_handler(Some(writer_busy))?;
    // The applier writes rows in version order, not in the order foreign keys would need;
    // convergence, not referential checks, is its job (the origin already enforced them).
    conn.pragma_update(None, "foreign_keys", "OFF")
}

/// NORMAL in WAL mode is durable against application crashes and loses at most the last
/// transactions on power loss, which replication re-delivers (acks follow commits). Setting it
/// parses the schema: a replacement connection sets it before its first write.
pub fn set_writer_synchronous(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")
}

/// Read-only connections (publisher scan, dashboard).
pub fn configure_reader(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(READER_BUSY_TIMEOUT)?;
    // Belt and braces on top of SQLITE_OPEN_READ_ONLY: a reader must never write.
    conn.pragma_update(None, "query_only", "ON")?;
    Ok(())
}

/// The verified snapshot copy a restore prepares (merges pending changes into, installs
/// capture into) before it is copied into the live database: nobody else has it open.
pub fn configure_restore_copy(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(WRITER_BUSY_TIMEOUT)?;
    // As on the writer: the applier writes rows in version order, not foreign-key order.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(())
}

/// A short-lived maintenance connection (`-cleanup`): it only needs to wait for the
/// application's locks.
pub fn configure_maintenance(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(WRITER_BUSY_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer tries a busy lock again every 100 µs at first, then every millisecond, and
    /// gives up once it has waited `WRITER_BUSY_TIMEOUT`, as `busy_timeout` did.
    #[test]
    fn the_writer_waits_finely_first_and_gives_up_at_the_timeout() {
        assert_eq!(writer_busy_wait(0), Some(FINE_WAIT));
        assert_eq!(writer_busy_wait(FINE_TRIES - 1), Some(FINE_WAIT));
        assert_eq!(writer_busy_wait(FINE_TRIES), Some(COARSE_WAIT));
        let waits: Vec<Duration> = (0..).map_while(writer_busy_wait).collect();
        let total: Duration = waits.iter().sum();
        assert!(total >= WRITER_BUSY_TIMEOUT - COARSE_WAIT && total <= WRITER_BUSY_TIMEOUT);
    }

    /// A writer meets a lock another connection holds for 3 ms and gets it: the handler is
    /// installed and waits (SQLite's default would fail at once).
    #[test]
    fn the_writer_waits_for_a_lock_held_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let app = Connection::open(&path).unwrap();
        app.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x)")
            .unwrap();
        let writer = Connection::open(&path).unwrap();
        configure_writer(&writer).unwrap();
        app.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1)")
            .unwrap();
        let committer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(3));
            app.execute_batch("COMMIT").unwrap();
        });
        writer.execute("INSERT INTO t VALUES (2)", []).unwrap();
        committer.join().unwrap();
        let rows: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
    }

    /// The application holds a write transaction on a new rollback-journal database while the
    /// node opens it (SQLite then answers busy at once, to avoid a deadlock): the switch to
    /// WAL waits for it instead of failing the start.
    #[test]
    fn the_switch_to_wal_waits_for_the_application() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let app = Connection::open(&path).unwrap();
        app.execute_batch("CREATE TABLE t(x); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            app.execute_batch("COMMIT").unwrap();
            app
        });
        let node = Connection::open(&path).unwrap();
        configure_writer(&node).expect("waits for the application's read lock");
        let mode: String = node
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(release.join().unwrap());
    }
}
