//! Helpers shared by the engine's unit tests.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use tempfile::TempDir;

use crate::change::Value;
use crate::db::pragmas::configure_writer;
use crate::sql::quote_ident;

/// A database file in its own temp dir (dropped with it).
pub struct TempDb {
    pub dir: TempDir,
    pub path: PathBuf,
}

impl TempDb {
    pub fn new() -> TempDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db.sqlite");
        TempDb { dir, path }
    }

    /// A read-write connection configured like the writer's.
    pub fn open(&self) -> Connection {
        open_writer(&self.path)
    }
}

pub fn open_writer(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open db");
    configure_writer(&conn).expect("pragmas");
    conn
}

/// `(key…, ver, node, origin, deleted)` rows of a clock table, ordered by version, after
/// folding what the capture logs hold (`cdc::fold`).
pub fn clock_rows(conn: &Connection, table: &str) -> Vec<Vec<Value>> {
    fold_all(conn);
    let clock = crate::cdc::triggers::clock_table(table);
    let q = format!("SELECT * FROM {} ORDER BY ver", quote_ident(&clock));
    let mut stmt = conn.prepare(&q).expect("prepare clock dump");
    let n = stmt.column_count() - 1; // without `parked`
    stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
        .expect("clock dump")
        .collect::<Result<_, _>>()
        .expect("clock rows")
}

/// Folds the capture log of every capturable table (also where the DDL was run by hand, with no
/// tracked-table rows).
pub fn fold_all(conn: &Connection) {
    let (tables, _) = crate::catalog::discover::captured_tables(conn, &[]).expect("tables");
    for meta in &tables {
        crate::cdc::fold::fold_table(conn, meta).expect("fold the capture log");
    }
}

pub fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect("count query")
}

/// Bytes of parsed schema `conn` holds now (`SQLITE_DBSTATUS_SCHEMA_USED`).
pub fn schema_memory(conn: &Connection) -> i64 {
    db_status(conn, rusqlite::ffi::SQLITE_DBSTATUS_SCHEMA_USED, false)
}

/// Pages `conn` had to read from the file since the last call (`SQLITE_DBSTATUS_CACHE_MISS`,
/// reset by the call).
pub fn cache_misses(conn: &Connection) -> i64 {
    db_status(conn, rusqlite::ffi::SQLITE_DBSTATUS_CACHE_MISS, true)
}

fn db_status(conn: &Connection, what: std::os::raw::c_int, reset: bool) -> i64 {
    let (mut current, mut high) = (0, 0);
    // SAFETY: a status query on an open connection the caller owns, into two local ints.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status(
            conn.handle(),
            what,
            &mut current,
            &mut high,
            i32::from(reset),
        )
    };
    assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
    i64::from(current)
}
