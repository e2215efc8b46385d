//! Read-only queries for the recovery view: the gaps operators accepted and the changes held in
//! the quarantine.

use super::Reader;
use crate::apply::quarantine::{self, Quarantined};
use crate::db::DbError;
use crate::sql::internal::ACCEPTED_GAPS;
use crate::sql::quote_ident;

/// One gap an operator accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AcceptedGapEntry {
    pub at_ms: i64,
    pub stream: String,
    pub first_missing: u64,
    pub last_missing: u64,
    pub how: String,
}

impl Reader {
    /// The accepted gaps, newest first, at most `limit`.
    pub fn accepted_gaps(&mut self, limit: u64) -> Result<Vec<AcceptedGapEntry>, DbError> {
        let fail = self.err("reading accepted gaps");
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT at_ms, stream, first_missing, last_missing, how FROM {} \
                 ORDER BY id DESC LIMIT ?1",
                quote_ident(ACCEPTED_GAPS)
            ))
            .map_err(&fail)?;
        let rows = stmt
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                Ok(AcceptedGapEntry {
                    at_ms: r.get(0)?,
                    stream: r.get(1)?,
                    first_missing: r.get::<_, i64>(2)?.max(0) as u64,
                    last_missing: r.get::<_, i64>(3)?.max(0) as u64,
                    how: r.get(4)?,
                })
            })
            .map_err(&fail)?;
        rows.collect::<Result<_, _>>().map_err(&fail)
    }

    /// The changes held in the quarantine, oldest first, at most `limit`, and how many there
    /// are in all.
    pub fn quarantined(&mut self, limit: u64) -> Result<(Vec<Quarantined>, u64), DbError> {
        let path = self.path.clone();
        let list = quarantine::list(&self.conn, limit).map_err(|e| DbError::apply(&path, e))?;
        let count = quarantine::count(&self.conn).map_err(|e| DbError::apply(&path, e))?;
        Ok((list, count))
    }
}
