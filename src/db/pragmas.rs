//! Every pragma our connections set, each with the reason.

use std::time::Duration;

use rusqlite::Connection;

/// How long a statement waits for the application's write lock before failing with
/// `SQLITE_BUSY`. The application writes concurrently; a long wait is cheaper than a retry loop.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
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

/// The engine's one read-write connection, and the database's journal mode.
pub fn configure_writer(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(WRITER_BUSY_TIMEOUT)?;
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
    conn.busy_timeout(WRITER_BUSY_TIMEOUT)?;
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
