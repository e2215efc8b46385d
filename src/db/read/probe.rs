//! Schema probes for schema versioning: the cheap `PRAGMA schema_version` poll, and the hash of
//! the schema together with the version it belongs to, read in one transaction so the pair is
//! consistent.

use super::Reader;
use crate::catalog::discover::captured_tables;
use crate::catalog::{SchemaHash, hash_tables};
use crate::db::DbError;

/// The local schema at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaProbe {
    /// `PRAGMA schema_version` (bumped by every DDL of any connection).
    pub schema_version: i64,
    pub hash: SchemaHash,
    /// Names of the tables the hash covers.
    pub tables: Vec<String>,
}

impl Reader {
    /// `PRAGMA schema_version` now.
    pub fn schema_version(&mut self) -> Result<i64, DbError> {
        self.conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(self.err("reading schema_version"))
    }

    /// The `PRAGMA schema_version` the last `scan` read its tables at (`None` before the first
    /// scan): the publisher stamps a scan's rows only with a hash computed at that version.
    pub fn scanned_schema_version(&self) -> Option<i64> {
        self.schema_version
    }

    /// The schema hash of the tables that would be captured with `ignore`, and the
    /// `schema_version` it belongs to.
    pub fn probe_schema(&mut self, ignore: &[String]) -> Result<SchemaProbe, DbError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|source| DbError::Sqlite {
            what: "starting a read transaction",
            path: path.clone(),
            source,
        })?;
        let schema_version: i64 = tx
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(|source| DbError::Sqlite {
                what: "reading schema_version",
                path: path.clone(),
                source,
            })?;
        let (tables, _) = captured_tables(&tx, ignore).map_err(|e| DbError::capture(&path, e))?;
        tx.finish().map_err(|source| DbError::Sqlite {
            what: "ending a read transaction",
            path: path.clone(),
            source,
        })?;
        Ok(SchemaProbe {
            schema_version,
            hash: hash_tables(&tables),
            tables: tables.into_iter().map(|t| t.name).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testutil::TempDb;

    #[test]
    fn probe_follows_ddl_of_other_connections() {
        let db = TempDb::new();
        let app = db.open();
        app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE skip(x);")
            .unwrap();
        let mut reader = Reader::open(&db.path).unwrap();
        assert_eq!(reader.scanned_schema_version(), None);
        let first = reader.probe_schema(&["skip".into()]).unwrap();
        assert_eq!(first.tables, vec!["t".to_owned()]);
        assert_eq!(first.schema_version, reader.schema_version().unwrap());

        app.execute_batch("ALTER TABLE t ADD COLUMN email TEXT")
            .unwrap();
        let second = reader.probe_schema(&["skip".into()]).unwrap();
        assert!(second.schema_version > first.schema_version);
        assert_ne!(second.hash, first.hash);

        // DDL that does not change the replicated shape moves the version, not the hash.
        app.execute_batch("CREATE INDEX t_v ON t(v); ALTER TABLE skip ADD COLUMN y")
            .unwrap();
        let third = reader.probe_schema(&["skip".into()]).unwrap();
        assert!(third.schema_version > second.schema_version);
        assert_eq!(third.hash, second.hash);
    }
}
