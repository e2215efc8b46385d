//! Writing a verified snapshot into the live database, keeping local changes not yet published.
//!
//! The copy goes through SQLite's online backup API into the writer's own connection, never a
//! file copy: the application may hold the database open, and its connections see the new
//! content through SQLite's locks (the backup bumps the schema cookie, so they reload).
//!
//! Local changes not yet published would be overwritten, so they are read first and applied
//! again afterwards. The read happens after the backup took the database's write lock (its
//! first zero-page step) and before it copies anything: in WAL mode readers still read, and no
//! application write can commit in between, so nothing slips through. The changes are applied
//! like remote ones (last writer wins against the snapshot's rows), and each table's publish
//! watermark is set just below the oldest of them, so the publisher sends them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, ffi};

use crate::apply::{Applier, IncomingBatch};
use crate::cdc::scan::tracked_tables;
use crate::cdc::triggers::clock_table;
use crate::change::{ChangeBatch, TableChanges};
use crate::db::{DbError, Reader};
use crate::ids::{NodeId, StreamSeq};
use crate::sql::internal::{APPLIED, PUBLISHED};
use crate::sql::quote_ident;

/// How long the backup waits for the application to release its write lock.
const LOCK_DEADLINE: Duration = Duration::from_secs(60);

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Local row changes not yet published that were applied again on top of the snapshot.
    pub reapplied: u64,
    /// Of those, changes for tables the snapshot does not have (lost; logged).
    pub dropped: u64,
    /// The applied sequences the database now holds (the snapshot's).
    pub sequences: BTreeMap<String, StreamSeq>,
}

/// Copies the database at `snapshot` into `conn` (the writer's connection to `db_path`), then
/// re-applies `local`'s unpublished changes and resets the publish watermarks.
pub fn restore_into(
    conn: &mut Connection,
    db_path: &Path,
    snapshot: &Path,
    local: NodeId,
) -> Result<RestoreReport, DbError> {
    let sqlite = |what: &'static str| {
        move |source| DbError::Sqlite {
            what,
            path: db_path.to_path_buf(),
            source,
        }
    };
    let source = Connection::open_with_flags(
        snapshot,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| DbError::Open {
        path: snapshot.to_path_buf(),
        source,
    })?;
    match_page_size(&source, conn).map_err(sqlite("matching the snapshot's page size"))?;
    let pending = {
        let backup = Backup::new(&source, conn).map_err(sqlite("starting the backup"))?;
        step_locked(&backup, 0).map_err(sqlite("locking the database for the restore"))?;
        // The write lock is ours now: read what the application wrote and we did not publish.
        let pending = pending_changes(db_path, local)?;
        step_locked(&backup, -1).map_err(sqlite("copying the snapshot"))?;
        pending
    };
    let mut report = RestoreReport::default();
    reapply(conn, db_path, local, pending, &mut report)?;
    report.sequences = applied(conn).map_err(sqlite("reading the snapshot's sequences"))?;
    Ok(report)
}

/// One backup step, retried while the application holds a lock, up to `LOCK_DEADLINE`.
fn step_locked(backup: &Backup<'_, '_>, pages: i32) -> rusqlite::Result<()> {
    let started = Instant::now();
    loop {
        match backup.step(pages)? {
            StepResult::Done => return Ok(()),
            StepResult::More if pages >= 0 => return Ok(()),
            StepResult::More => {}
            StepResult::Busy | StepResult::Locked => {
                if started.elapsed() > LOCK_DEADLINE {
                    return Err(rusqlite::Error::SqliteFailure(
                        ffi::Error::new(ffi::SQLITE_BUSY),
                        Some("the application held the database locked too long".to_owned()),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A WAL database cannot change its page size, and the backup needs both equal: an empty
/// database takes the snapshot's; a non-empty one with another size is an error.
fn match_page_size(source: &Connection, dest: &Connection) -> rusqlite::Result<()> {
    let size = |c: &Connection| c.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0));
    let (want, have) = (size(source)?, size(dest)?);
    if want == have {
        return Ok(());
    }
    let pages: i64 = dest.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    if pages > 0 {
        return Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_MISMATCH),
            Some(format!(
                "the snapshot has {want}-byte pages and this database {have}-byte pages"
            )),
        ));
    }
    dest.pragma_update(None, "journal_mode", "DELETE")?;
    dest.pragma_update(None, "page_size", want)?;
    dest.pragma_update(None, "journal_mode", "WAL")?;
    Ok(())
}

/// Local changes above the publish watermarks (none when capture was never installed).
fn pending_changes(db_path: &Path, local: NodeId) -> Result<Vec<TableChanges>, DbError> {
    let mut reader = Reader::open(db_path)?;
    Ok(reader.scan(local, usize::MAX)?.tables)
}

fn reapply(
    conn: &mut Connection,
    db_path: &Path,
    local: NodeId,
    pending: Vec<TableChanges>,
    report: &mut RestoreReport,
) -> Result<(), DbError> {
    let sql = |what: &'static str| {
        move |source| DbError::Sqlite {
            what,
            path: db_path.to_path_buf(),
            source,
        }
    };
    let tables = tracked_tables(conn).map_err(|e| DbError::capture(db_path, e))?;
    let known: BTreeMap<String, _> = tables
        .iter()
        .map(|t| (t.name.to_ascii_lowercase(), t))
        .collect();
    // Everything in the snapshot counts as published; our pending rows go above the mark.
    let tx = conn
        .transaction()
        .map_err(sql("starting watermark reset"))?;
    for meta in &tables {
        let oldest_pending = pending
            .iter()
            .filter(|t| t.table.eq_ignore_ascii_case(&meta.name))
            .flat_map(|t| t.rows.iter().map(|r| r.version))
            .min();
        let max_ver: i64 = tx
            .query_row(
                &format!(
                    "SELECT COALESCE(MAX(ver), 0) FROM {}",
                    quote_ident(&clock_table(&meta.name))
                ),
                [],
                |r| r.get(0),
            )
            .map_err(sql("reading clock versions"))?;
        let mark = match oldest_pending {
            Some(v) => (max_ver as u64).min(v.saturating_sub(1)),
            None => max_ver as u64,
        };
        tx.execute(
            &format!(
                "INSERT INTO {}(tbl, ver) VALUES (?1, ?2) \
                 ON CONFLICT(tbl) DO UPDATE SET ver = excluded.ver",
                quote_ident(PUBLISHED)
            ),
            rusqlite::params![meta.name, mark as i64],
        )
        .map_err(sql("resetting publish watermarks"))?;
    }
    tx.commit().map_err(sql("committing watermark reset"))?;
    let (kept, dropped): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .partition(|t| known.contains_key(&t.table.to_ascii_lowercase()));
    report.dropped = dropped.iter().map(|t| t.rows.len() as u64).sum();
    for t in &dropped {
        tracing::error!(
            table = %t.table,
            rows = t.rows.len(),
            "local changes not yet published are lost: the snapshot does not have this table"
        );
    }
    report.reapplied = kept.iter().map(|t| t.rows.len() as u64).sum();
    if kept.is_empty() {
        return Ok(());
    }
    let batch = IncomingBatch {
        // No stream: these are not from the log, so no applied sequence is recorded.
        stream: String::new(),
        seq: StreamSeq(0),
        batch: ChangeBatch {
            origin: local,
            schema_hash: String::new(),
            tables: kept,
        },
    };
    Applier::new()
        .apply(conn, &[batch])
        .map_err(|e| DbError::apply(db_path, e))?;
    Ok(())
}

fn applied(conn: &Connection) -> rusqlite::Result<BTreeMap<String, StreamSeq>> {
    let mut stmt = conn.prepare(&format!("SELECT stream, seq FROM {}", quote_ident(APPLIED)))?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get(0)?, StreamSeq(r.get::<_, i64>(1)? as u64)))
    })?;
    rows.collect()
}
