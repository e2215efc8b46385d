//! The content digests of every captured table (`cdc::digest`). Each chunk of rows is read in
//! its own read transaction, never one across a paced scan: a reader held open for a minute
//! keeps SQLite from checkpointing the WAL, and the application's writes slow down (measured:
//! 12 % off 1000-row inserts; `docs/benchmarks.md`). A scan under writes may then read a row
//! twice or not at all, which only makes the digest look in flight, never the same.

use super::Reader;
use crate::cdc::digest::{KeyForm, TableDigest, bucket_rows, digest_table};
use crate::cdc::scan::{count_local_above, tracked_tables, watermarks};
use crate::change::TableChanges;
use crate::db::DbError;
use crate::ids::NodeId;

impl Reader {
    /// Every captured table's digest; `pace` runs after each chunk of rows.
    pub fn digests(&mut self, pace: &mut dyn FnMut()) -> Result<Vec<TableDigest>, DbError> {
        let path = self.path.clone();
        let metas = tracked_tables(&self.conn).map_err(|e| DbError::capture(&path, e))?;
        let mut out = Vec::with_capacity(metas.len());
        for meta in &metas {
            out.push(digest_table(&self.conn, meta, pace).map_err(|e| DbError::capture(&path, e))?);
        }
        Ok(out)
    }

    /// How `table`'s keys are read for digests (`None`: not captured here).
    pub fn key_form(&mut self, table: &str) -> Result<Option<KeyForm>, DbError> {
        let metas = tracked_tables(&self.conn).map_err(|e| DbError::capture(&self.path, e))?;
        Ok(metas
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case(table))
            .map(|m| KeyForm::of(m, &m.column_names())))
    }

    /// Table `table`'s clock rows in bucket `bucket`, from version `after` on, `budget` clock
    /// rows at a time (`cdc::digest::bucket_rows`); `None` when the table is not captured.
    pub fn bucket_rows(
        &mut self,
        table: &str,
        bucket: usize,
        after: i64,
        budget: usize,
    ) -> Result<Option<(TableChanges, Option<i64>)>, DbError> {
        let path = self.path.clone();
        let metas = tracked_tables(&self.conn).map_err(|e| DbError::capture(&path, e))?;
        let Some(meta) = metas.iter().find(|m| m.name.eq_ignore_ascii_case(table)) else {
            return Ok(None);
        };
        let tx = self.conn.transaction().map_err(|source| DbError::Sqlite {
            what: "starting a read transaction",
            path: path.clone(),
            source,
        })?;
        let rows = bucket_rows(&tx, meta, bucket, after, budget)
            .map_err(|e| DbError::capture(&path, e))?;
        Ok(Some(rows))
    }

    /// This node's changes not yet acknowledged by JetStream (above the publish watermarks,
    /// folded or still in the capture log), each table's count capped (`scan::PENDING_CAP`).
    pub fn unpublished(&mut self, local: NodeId) -> Result<u64, DbError> {
        let path = self.path.clone();
        let capture = |e| DbError::capture(&path, e);
        let metas = tracked_tables(&self.conn).map_err(capture)?;
        let marks = watermarks(&self.conn).map_err(capture)?;
        let mut total = 0;
        for meta in &metas {
            let wm = marks.get(&meta.name).copied().unwrap_or(0);
            total += count_local_above(&self.conn, meta, local, wm).map_err(capture)?;
        }
        Ok(total)
    }
}
