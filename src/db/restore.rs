//! Writing a verified snapshot into the live database without losing anything the application
//! wrote.
//!
//! The copy goes through SQLite's online backup API into the writer's own connection, never a
//! file copy: the application may hold the database open, and its connections see the new
//! content through SQLite's locks (the backup bumps the schema cookie, so they reload).
//!
//! Order, all while the backup's zero-page first step holds the live database's write lock (no
//! application write can commit until the copy is done):
//! 1. read the local changes not yet published from the live database (WAL readers still read);
//! 2. merge them into the snapshot copy with last-writer-wins, so a newer snapshot value is
//!    never overwritten by an older pending one, and set each table's publish watermark just
//!    below the oldest of them, so the publisher sends them;
//! 3. install capture (triggers) into the copy, for this node;
//! 4. copy every page. The live database then has the snapshot's content, the pending changes
//!    and working triggers at once: no application write falls between restore and capture.
//!
//! That replaces the database, so it is how a database without data is restored. A database
//! that holds data is not replaced: the snapshot is merged into it (`db::merge`), so nothing it
//! holds is lost and no floor moves back; a snapshot of another schema is refused. Only the
//! operator replaces a database that holds data (`RestoreMode::Replace`, `-force-restore`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, ffi};

use crate::apply::{Applier, ApplyWork};
use crate::catalog::schema_hash;
use crate::cdc::scan::tracked_tables;
use crate::cdc::triggers::clock_table;
use crate::change::{ChangeBatch, TableChanges};
use crate::db::merge::{MergeReport, merge_snapshot};
use crate::db::{DbError, Reader, pragmas};
use crate::ids::{NodeId, StreamSeq};
use crate::sql::internal::{self, ACCEPTED_GAPS, PUBLISHED, read_positions};
use crate::sql::quote_ident;

/// How long the backup waits for the application to release its write lock.
const LOCK_DEADLINE: Duration = Duration::from_secs(60);

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Local row changes not yet published that were merged into the snapshot (a replace).
    pub reapplied: u64,
    /// Of those, changes for tables the snapshot does not have (lost; logged).
    pub dropped: u64,
    /// Changes the snapshot held in its quarantine that this node now holds too (a replace;
    /// a merge counts them in `MergeReport::held`).
    pub held: u64,
    /// What the merge did, when the snapshot was merged into a database that holds data.
    pub merged: Option<MergeReport>,
    /// The stream floors the database now holds.
    pub sequences: BTreeMap<String, StreamSeq>,
}

/// Who restores: this node, the tables it does not capture, and what happens to a database
/// that holds data.
#[derive(Debug, Clone)]
pub struct RestoreAs<'a> {
    pub local: NodeId,
    pub ignore: &'a [String],
    pub mode: &'a RestoreMode,
}

/// How a restore treats a database that holds data (one without data is always replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreMode {
    /// Merge the snapshot into it (`db::merge`): the snapshot was taken by `taker`, and its
    /// changes beyond `horizon_ms` are quarantined as any remote change would be.
    Merge {
        taker: NodeId,
        horizon_ms: Option<u64>,
    },
    /// Replace it, whatever the snapshot's floors and schema: the operator forces it
    /// (`-force-restore`).
    Replace,
}

/// Copies the database at `snapshot` into `conn` (the writer's connection to `db_path`), with
/// the local changes not yet published merged in and capture installed.
pub fn restore_into(
    conn: &mut Connection,
    db_path: &Path,
    snapshot: &Path,
    who: &RestoreAs<'_>,
) -> Result<RestoreReport, DbError> {
    let sqlite = |what: &'static str| {
        move |source| DbError::Sqlite {
            what,
            path: db_path.to_path_buf(),
            source,
        }
    };
    let source = open_copy(snapshot)?;
    if let RestoreMode::Merge { taker, horizon_ms } = *who.mode
        && holds_data(conn, db_path)?
    {
        refuse_other_schema(conn, &source, db_path, who.ignore)?;
        let merged = merge_snapshot(conn, db_path, &source, taker, horizon_ms)?;
        return Ok(RestoreReport {
            merged: Some(merged),
            sequences: floors_of(conn, db_path)?,
            ..RestoreReport::default()
        });
    }
    match_page_size(&source, conn).map_err(sqlite("matching the snapshot's page size"))?;
    let mut report = RestoreReport::default();
    {
        let backup = Backup::new(&source, conn).map_err(sqlite("starting the backup"))?;
        step_locked(&backup, 0).map_err(sqlite("locking the database for the restore"))?;
        // The write lock is ours now: read what the application wrote and we did not publish,
        // then prepare the copy through the backup's own source connection (the backup sees
        // those changes: it copies every page in the next step).
        let pending = pending_changes(db_path, who.local)?;
        merge_pending(&source, snapshot, who.local, pending, &mut report)?;
        report.held = keep_own_journals(db_path, &source)?;
        crate::cdc::install(&source, who.local, who.ignore)
            .map_err(|e| DbError::capture(snapshot, e))?;
        step_locked(&backup, -1).map_err(sqlite("copying the snapshot"))?;
    }
    report.sequences = floors_of(conn, db_path)?;
    Ok(report)
}

/// The database's stream floors.
fn floors_of(conn: &Connection, db_path: &Path) -> Result<BTreeMap<String, StreamSeq>, DbError> {
    Ok(read_positions(conn)
        .map_err(|source| DbError::Sqlite {
            what: "reading the stream floors",
            path: db_path.to_path_buf(),
            source,
        })?
        .into_iter()
        .map(|p| (p.stream, StreamSeq(p.position.floor())))
        .collect())
}

/// The verified copy, read-write: the pending changes and capture go into it.
fn open_copy(snapshot: &Path) -> Result<Connection, DbError> {
    let open_err = |source| DbError::Open {
        path: snapshot.to_path_buf(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(snapshot, flags).map_err(open_err)?;
    pragmas::configure_restore_copy(&conn).map_err(open_err)?;
    // A snapshot of an older build has our older tables: bring them to this build's format.
    internal::create_internal(&conn).map_err(open_err)?;
    Ok(conn)
}

/// Refuses to merge a snapshot whose schema differs from the database's: its rows would not
/// fit.
fn refuse_other_schema(
    live: &Connection,
    copy: &Connection,
    db_path: &Path,
    ignore: &[String],
) -> Result<(), DbError> {
    let hash = |c: &Connection| schema_hash(c, ignore).map_err(|e| DbError::capture(db_path, e));
    let (ours, theirs) = (hash(live)?, hash(copy)?);
    if ours != theirs {
        return Err(DbError::RestoreRefused {
            reason: format!("its schema {theirs} differs from this database's {ours}"),
        });
    }
    Ok(())
}

/// Whether the live database holds anything a snapshot could destroy: a stream position, or a
/// row in a captured table.
fn holds_data(live: &Connection, db_path: &Path) -> Result<bool, DbError> {
    let floors = read_positions(live).map_err(|source| DbError::Sqlite {
        what: "reading the database's floors",
        path: db_path.to_path_buf(),
        source,
    })?;
    if floors.iter().any(|p| p.position.highest() > 0) {
        return Ok(true);
    }
    let tables = tracked_tables(live).map_err(|e| DbError::capture(db_path, e))?;
    for t in tables {
        let any: bool = live
            .query_row(
                &format!("SELECT EXISTS (SELECT 1 FROM {})", quote_ident(&t.name)),
                [],
                |r| r.get(0),
            )
            .map_err(|source| DbError::Sqlite {
                what: "looking for data",
                path: db_path.to_path_buf(),
                source,
            })?;
        if any {
            return Ok(true);
        }
    }
    Ok(false)
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

/// This node's held changes and accepted gaps stay its own: they go into the copy, beside the
/// changes the snapshot holds (each held once, `quarantine::adopt`); the snapshot carries none
/// of its taker's accepted gaps. Returns how many of the copy's held changes are new here.
fn keep_own_journals(db_path: &Path, copy: &Connection) -> Result<u64, DbError> {
    let sqlite = |source| DbError::Sqlite {
        what: "keeping this node's journals",
        path: db_path.to_path_buf(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let live = Connection::open_with_flags(db_path, flags).map_err(sqlite)?;
    let quarantine = |e| DbError::apply(db_path, e);
    let snapshot_held = crate::apply::quarantine::count(copy).map_err(quarantine)?;
    let tx = copy.unchecked_transaction().map_err(sqlite)?;
    let own = crate::apply::quarantine::adopt(&tx, &live).map_err(quarantine)?;
    copy_accepted_gaps(&live, &tx).map_err(sqlite)?;
    tx.commit().map_err(sqlite)?;
    // The snapshot's held changes that this node did not hold already.
    Ok(snapshot_held.saturating_sub(own.already))
}

fn copy_accepted_gaps(live: &Connection, copy: &Connection) -> rusqlite::Result<()> {
    if !internal::table_exists(live, ACCEPTED_GAPS)? {
        return Ok(());
    }
    let columns = "at_ms, stream, first_missing, last_missing, how";
    let table = quote_ident(ACCEPTED_GAPS);
    let mut read = live.prepare(&format!("SELECT {columns} FROM {table}"))?;
    let insert = format!("INSERT INTO {table}({columns}) VALUES (?, ?, ?, ?, ?)");
    let mut rows = read.query([])?;
    while let Some(row) = rows.next()? {
        let values: Vec<rusqlite::types::Value> =
            (0..5).map(|i| row.get(i)).collect::<Result<_, _>>()?;
        copy.execute(&insert, rusqlite::params_from_iter(values))?;
    }
    Ok(())
}

/// Merges `pending` into the copy (last writer wins against the snapshot's rows) and sets the
/// copy's publish watermarks so the publisher sends the pending changes again.
fn merge_pending(
    copy: &Connection,
    copy_path: &Path,
    local: NodeId,
    pending: Vec<TableChanges>,
    report: &mut RestoreReport,
) -> Result<(), DbError> {
    let sql = |what: &'static str| {
        move |source| DbError::Sqlite {
            what,
            path: copy_path.to_path_buf(),
            source,
        }
    };
    let tables = tracked_tables(copy).map_err(|e| DbError::capture(copy_path, e))?;
    reset_watermarks(copy, &tables, &pending).map_err(sql("resetting publish watermarks"))?;
    let (kept, dropped): (Vec<_>, Vec<_>) = pending.into_iter().partition(|t| {
        tables
            .iter()
            .any(|meta| meta.name.eq_ignore_ascii_case(&t.table))
    });
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
    let work = ApplyWork {
        batches: vec![ChangeBatch {
            origin: local,
            schema_hash: String::new(),
            tables: kept,
        }],
        ..ApplyWork::default()
    };
    Applier::new()
        .apply(copy, &work)
        .map_err(|e| DbError::apply(copy_path, e))?;
    Ok(())
}

/// Everything in the snapshot counts as published; each table's watermark goes just below the
/// oldest of its pending changes, so they are sent again.
fn reset_watermarks(
    copy: &Connection,
    tables: &[crate::catalog::TableMeta],
    pending: &[TableChanges],
) -> rusqlite::Result<()> {
    let tx = copy.unchecked_transaction()?;
    for meta in tables {
        let oldest_pending = pending
            .iter()
            .filter(|t| t.table.eq_ignore_ascii_case(&meta.name))
            .flat_map(|t| t.rows.iter().map(|r| r.version))
            .min();
        let max_ver: i64 = tx.query_row(
            &format!(
                "SELECT COALESCE(MAX(ver), 0) FROM {}",
                quote_ident(&clock_table(&meta.name))
            ),
            [],
            |r| r.get(0),
        )?;
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
        )?;
    }
    tx.commit()
}
