//! Read-only connections: the publisher's scan and small queries for the dashboard.
//! Callers run these on `spawn_blocking`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::catalog::discover::TableMeta;
use crate::cdc::scan::{self, Scan, tracked_tables};
use crate::db::{DbError, pragmas};
use crate::ids::NodeId;

mod digest;
mod probe;
mod recovery;
mod stats;
pub use probe::SchemaProbe;
pub use recovery::AcceptedGapEntry;
pub use stats::{ConflictPage, NewConflicts, TableStats};

/// A read-only connection that scans for local changes.
pub struct Reader {
    conn: Connection,
    path: PathBuf,
    schema_version: Option<i64>,
    tables: Vec<TableMeta>,
    /// Next table to start scanning at (round robin, so a busy table cannot starve others).
    start: usize,
    /// Watermarks the caller published but may not have recorded through the writer yet.
    floors: HashMap<String, u64>,
}

/// A read-only connection to `path` (`SQLITE_OPEN_READ_ONLY`, `query_only`); the database must
/// exist. Opening parses nothing: the schema is read by the first statement that needs it.
fn open_connection(path: &Path) -> Result<Connection, DbError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let open_err = |source| DbError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    pragmas::configure_reader(&conn).map_err(open_err)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// One row of the conflict journal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConflictEntry {
    pub id: i64,
    pub at_ms: i64,
    pub table: String,
    pub kind: String,
    pub key: Option<String>,
    pub winner_node: Option<i64>,
    pub winner_ver: Option<i64>,
    pub loser_node: Option<i64>,
    pub loser_ver: Option<i64>,
    pub winner_row: Option<String>,
    pub loser_row: Option<String>,
    pub detail: Option<String>,
}

impl Reader {
    /// Opens `path` read-only (`SQLITE_OPEN_READ_ONLY`); the database must exist.
    pub fn open(path: &Path) -> Result<Reader, DbError> {
        Ok(Reader {
            conn: open_connection(path)?,
            path: path.to_path_buf(),
            schema_version: None,
            tables: Vec::new(),
            start: 0,
            floors: HashMap::new(),
        })
    }

    /// Lets go of the parsed schema: the connection is replaced by a new one that has parsed
    /// nothing yet. A connection that read any table keeps the whole schema (about 21 KB a
    /// captured table), so an occasional reader (the schema tracker, the dashboard) releases it
    /// when done, and the publisher when idle; the next query parses it again. What the scan
    /// cached stays (tables, raised watermarks): the next scan still compares the schema
    /// version.
    pub fn release_schema(&mut self) -> Result<(), DbError> {
        self.conn = open_connection(&self.path)?;
        crate::memory::return_free_memory();
        Ok(())
    }

    fn err(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> DbError + '_ {
        move |source| DbError::Sqlite {
            what,
            path: self.path.clone(),
            source,
        }
    }

    /// `PRAGMA data_version`: changes when another connection commits, so an unchanged value
    /// means there is nothing new to scan.
    pub fn data_version(&mut self) -> Result<i64, DbError> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(self.err("reading data_version"))
    }

    /// Raises the watermarks this reader scans from (after a publish, before the writer has
    /// recorded them); stored watermarks still apply when higher.
    pub fn advance(&mut self, marks: &[(String, u64)]) {
        for (table, ver) in marks {
            let floor = self.floors.entry(table.clone()).or_default();
            *floor = (*floor).max(*ver);
        }
    }

    /// Local changes above the watermarks, within `budget`, in one read transaction. Tracked
    /// tables are re-read when the schema changes.
    pub fn scan(
        &mut self,
        local: NodeId,
        budget: impl Into<scan::Budget>,
    ) -> Result<Scan, DbError> {
        let path = self.path.clone();
        let sqlite = |what: &'static str| {
            let path = path.clone();
            move |source| DbError::Sqlite {
                what,
                path: path.clone(),
                source,
            }
        };
        let capture = |source| DbError::capture(&path, source);
        let tx = self
            .conn
            .transaction()
            .map_err(sqlite("starting a read transaction"))?;
        let version: i64 = tx
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(sqlite("reading schema_version"))?;
        if self.schema_version != Some(version) {
            self.tables = tracked_tables(&tx).map_err(capture)?;
            self.schema_version = Some(version);
            // A re-install may have stamped rows below the raised watermarks; the stored
            // ones (lowered by the install where needed) rule again.
            self.floors.clear();
        }
        if self.tables.is_empty() {
            return Ok(Scan::default());
        }
        let start = self.start % self.tables.len();
        let mut result = scan::scan(&tx, &self.tables, local, budget.into(), start, &self.floors)
            .map_err(capture)?;
        result.schema_version = version;
        tx.finish().map_err(sqlite("ending a read transaction"))?;
        self.start = self.start.wrapping_add(1);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testutil::{TempDb, schema_memory};

    /// The publisher watches for commits on a connection that never parses the schema, and lets
    /// its scan connection's schema go when idle without forgetting what the scan knew.
    #[test]
    fn data_version_parses_nothing_and_a_released_scan_goes_on() {
        let db = TempDb::new();
        let app = db.open();
        let ddl: String = (0..20)
            .map(|i| format!("CREATE TABLE tab{i}(id INTEGER PRIMARY KEY, v TEXT);"))
            .collect();
        app.execute_batch(&ddl).unwrap();
        crate::cdc::install(&app, NodeId(1), &[]).unwrap();
        let mut watch = Reader::open(&db.path).unwrap();
        let before = watch.data_version().unwrap();
        app.execute("INSERT INTO tab0 VALUES (1, 'a'), (2, 'b')", [])
            .unwrap();
        assert_ne!(watch.data_version().unwrap(), before);
        assert_eq!(
            schema_memory(&watch.conn),
            0,
            "data_version parsed the schema"
        );

        let mut scan = Reader::open(&db.path).unwrap();
        let first = scan.scan(NodeId(1), 1).unwrap();
        assert_eq!((first.row_count(), first.pending), (1, 1));
        assert!(schema_memory(&scan.conn) > 0);
        scan.advance(&first.watermarks);
        scan.release_schema().unwrap();
        assert_eq!(schema_memory(&scan.conn), 0);
        // The raised watermark survived the release: the next scan reads the second row only.
        let second = scan.scan(NodeId(1), 10).unwrap();
        assert_eq!((second.row_count(), second.pending), (1, 0));
    }
}
