//! Small read-only queries for the dashboard and the metrics sampler: per-table figures, the
//! conflict journal page by page, and journal entries added since a given id. Each runs in one
//! read transaction on the reader's connection (callers are on `spawn_blocking`).

use rusqlite::{OptionalExtension, params};

use super::{ConflictEntry, Reader};
use crate::cdc::scan::{tracked_tables, watermarks};
use crate::db::DbError;
use crate::ids::NodeId;
use crate::sql::internal::{CONFLICTS, TRACKED};
use crate::sql::quote_ident;

/// Figures of one captured table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableStats {
    pub table: String,
    /// Rows in the table now.
    pub rows: u64,
    /// Local changes captured but not yet published.
    pub pending: u64,
    /// Entries of the conflict journal for this table.
    pub conflicts: u64,
}

/// One page of the conflict journal, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictPage {
    /// Entries in the whole journal.
    pub total: u64,
    pub entries: Vec<ConflictEntry>,
}

/// Journal entries added after an id, counted per table and kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewConflicts {
    /// Table (`None` for every table outside the local schema), kind, entries.
    pub counts: Vec<(Option<String>, String, u64)>,
    /// Highest id seen (the `after` for the next call).
    pub last_id: i64,
}

impl Reader {
    /// Rows, pending local changes and journal entries of every captured table.
    pub fn table_stats(&mut self, local: NodeId) -> Result<Vec<TableStats>, DbError> {
        let path = self.path.clone();
        let fail = |what: &'static str| {
            let path = path.clone();
            move |source| DbError::Sqlite {
                what,
                path: path.clone(),
                source,
            }
        };
        let tx = self
            .conn
            .transaction()
            .map_err(fail("starting a read transaction"))?;
        let tables = tracked_tables(&tx).map_err(|e| DbError::capture(&path, e))?;
        let marks = watermarks(&tx).map_err(|e| DbError::capture(&path, e))?;
        let journal = format!(
            "SELECT count(*) FROM {} WHERE tbl = ?1",
            quote_ident(CONFLICTS)
        );
        let mut out = Vec::with_capacity(tables.len());
        for meta in tables {
            let rows: i64 = tx
                .query_row(
                    &format!("SELECT count(*) FROM {}", quote_ident(&meta.name)),
                    [],
                    |r| r.get(0),
                )
                .map_err(fail("counting rows"))?;
            let wm = marks.get(&meta.name).copied().unwrap_or(0);
            let pending = crate::cdc::scan::count_local_above(&tx, &meta, local, wm)
                .map_err(|e| DbError::capture(&path, e))?;
            let conflicts: i64 = tx
                .prepare_cached(&journal)
                .and_then(|mut s| s.query_row([&meta.name], |r| r.get(0)))
                .map_err(fail("counting conflicts"))?;
            out.push(TableStats {
                table: meta.name,
                rows: rows.max(0) as u64,
                pending,
                conflicts: conflicts.max(0) as u64,
            });
        }
        tx.finish().map_err(fail("ending a read transaction"))?;
        Ok(out)
    }

    /// Journal entries `offset..offset + limit`, newest first, and the journal's size.
    pub fn conflict_page(&mut self, offset: u64, limit: u64) -> Result<ConflictPage, DbError> {
        let total: i64 = self
            .conn
            .query_row(
                &format!("SELECT count(*) FROM {}", quote_ident(CONFLICTS)),
                [],
                |r| r.get(0),
            )
            .map_err(self.err("counting the conflict journal"))?;
        let q = format!(
            "SELECT id, at_ms, tbl, kind, key, winner_node, winner_ver, loser_node, loser_ver, \
             winner_row, loser_row, detail FROM {} ORDER BY id DESC LIMIT ?1 OFFSET ?2",
            quote_ident(CONFLICTS)
        );
        let fail = self.err("reading the conflict journal");
        let mut stmt = self.conn.prepare_cached(&q).map_err(&fail)?;
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![as_i64(limit), as_i64(offset)], |r| {
                Ok(ConflictEntry {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    table: r.get(2)?,
                    kind: r.get(3)?,
                    key: r.get(4)?,
                    winner_node: r.get(5)?,
                    winner_ver: r.get(6)?,
                    loser_node: r.get(7)?,
                    loser_ver: r.get(8)?,
                    winner_row: r.get(9)?,
                    loser_row: r.get(10)?,
                    detail: r.get(11)?,
                })
            })
            .map_err(&fail)?;
        let entries = rows.collect::<Result<_, _>>().map_err(&fail)?;
        Ok(ConflictPage {
            total: total.max(0) as u64,
            entries,
        })
    }

    /// Entries with an id above `after`, counted per table and kind. `after = None` only reads
    /// the highest id (counting starts from now). A table this node does not capture (a message
    /// may name any) is `None`, all such tables together: the counts feed metric labels.
    pub fn new_conflicts(&mut self, after: Option<i64>) -> Result<NewConflicts, DbError> {
        let journal = quote_ident(CONFLICTS);
        let fail = self.err("reading the conflict journal");
        let max: Option<i64> = self
            .conn
            .query_row(&format!("SELECT max(id) FROM {journal}"), [], |r| r.get(0))
            .optional()
            .map_err(&fail)?
            .flatten();
        let Some(after) = after else {
            return Ok(NewConflicts {
                counts: Vec::new(),
                last_id: max.unwrap_or(0),
            });
        };
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT CASE WHEN tbl IN (SELECT tbl FROM {tracked}) THEN tbl END AS local, \
                 kind, count(*) FROM {journal} WHERE id > ?1 AND id <= ?2 GROUP BY local, kind",
                tracked = quote_ident(TRACKED)
            ))
            .map_err(&fail)?;
        let last_id = max.unwrap_or(after).max(after);
        let rows = stmt
            .query_map(params![after, last_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
            })
            .map_err(&fail)?;
        let counts = rows.collect::<Result<_, _>>().map_err(&fail)?;
        Ok(NewConflicts { counts, last_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(conn: &rusqlite::Connection, table: &str, n: usize) {
        for _ in 0..n {
            conn.execute(
                &format!(
                    "INSERT INTO {}(at_ms, tbl, kind, key, winner_row, loser_row) \
                     VALUES (1, ?1, 'unique', '[1]', '{{\"a\":1}}', '{{\"a\":2}}')",
                    quote_ident(CONFLICTS)
                ),
                [table],
            )
            .unwrap();
        }
    }

    #[test]
    fn pages_and_counts_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        crate::sql::internal::create_internal(&conn).unwrap();
        journal(&conn, "books", 3);
        let mut reader = Reader::open(&path).unwrap();
        let start = reader.new_conflicts(None).unwrap();
        assert_eq!(start.last_id, 3);
        assert!(start.counts.is_empty());
        journal(&conn, "books", 2);
        journal(&conn, "authors", 1);
        let new = reader.new_conflicts(Some(start.last_id)).unwrap();
        assert_eq!(new.last_id, 6);
        // Neither table is captured here (`counts_name_only_captured_tables` has them captured).
        assert_eq!(new.counts, vec![(None, "unique".to_owned(), 3)]);
        let page = reader.conflict_page(0, 4).unwrap();
        assert_eq!(page.total, 6);
        assert_eq!(
            page.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
            [6, 5, 4, 3]
        );
        let last = reader.conflict_page(4, 4).unwrap();
        assert_eq!(
            last.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(last.entries[0].loser_row.as_deref(), Some("{\"a\":2}"));
        // No tracked tables yet: no stats, no error.
        assert!(reader.table_stats(NodeId(1)).unwrap().is_empty());
    }

    /// Messages may name any table: the counts that feed metric labels name only tables this
    /// node captures, every other one under `None`.
    #[test]
    fn counts_name_only_captured_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        crate::sql::internal::create_internal(&conn).unwrap();
        let mut reader = Reader::open(&path).unwrap();
        let start = reader.new_conflicts(None).unwrap();
        journal(&conn, "books", 2);
        // Tables a message named that this node does not capture: one count, whatever the names.
        for ghost in (0..50).map(|i| format!("ghost-{i}")) {
            conn.execute(
                &format!(
                    "INSERT INTO {}(at_ms, tbl, kind) VALUES (1, ?1, 'missing_table')",
                    quote_ident(CONFLICTS)
                ),
                [&ghost],
            )
            .unwrap();
        }
        for captured in ["authors", "books"] {
            conn.execute(
                &format!(
                    "INSERT INTO {}(tbl, key_columns, signature) VALUES (?1, '', '')",
                    quote_ident(TRACKED)
                ),
                [captured],
            )
            .unwrap();
        }
        let new = reader.new_conflicts(Some(start.last_id)).unwrap();
        assert_eq!(
            new.counts,
            vec![
                (None, "missing_table".to_owned(), 50),
                (Some("books".to_owned()), "unique".to_owned(), 2)
            ]
        );
    }
}
