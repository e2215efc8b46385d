//! Applying remote changes: compare `(version, node)` with the local clock, upsert or delete,
//! resolve UNIQUE conflicts, journal what cannot be applied. Runs on the writer's connection,
//! all batches of one call in one transaction.
//!
//! The applier's own writes must not be stamped as local changes: the transaction first inserts
//! a row into the guard table (every trigger's `WHEN` checks it is empty) and deletes it before
//! commit, so no other connection ever sees it.

pub mod conflicts;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rusqlite::{Connection, TransactionBehavior};

use crate::apply::conflicts::{Candidate, Journal, journal, resolve_unique};
use crate::apply::plan::{ClockState, ClockWrite, TablePlan};
use crate::catalog::discover::TableMeta;
use crate::cdc::CaptureInfo;
use crate::cdc::scan::tracked_tables;
use crate::change::{ChangeBatch, RowChange, TableChanges, Value};
use crate::ids::StreamSeq;
use crate::sql::internal::{APPLIED, GUARD};
use crate::sql::quote_ident;
use crate::sql::value::row_json;
use crate::sql::{SqlError, is_row_level, table_err};

/// One decoded message and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingBatch {
    pub stream: String,
    pub seq: StreamSeq,
    pub batch: ChangeBatch,
}

/// Counts of one `apply` call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Row changes written (newer than the local state).
    pub applied: u64,
    /// Row changes older than (or equal to) the local state, skipped.
    pub stale: u64,
    /// Entries added to the conflict journal.
    pub conflicts: u64,
    /// Row changes for tables this node does not capture.
    pub missing_table: u64,
    /// Message columns the local table lacks (per table per message).
    pub skipped_columns: u64,
    /// Row changes skipped because SQLite refused them (journaled as `apply_error`).
    pub errors: u64,
    /// Rows parked by UNIQUE conflicts.
    pub parked: u64,
    /// Parked rows admitted again.
    pub restored: u64,
    /// Highest version applied (`crate::hlc::Hlc`), 0 if none.
    pub newest_version: u64,
    /// Set when the writer re-installed capture first because the schema had changed.
    pub reinstalled: Option<CaptureInfo>,
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

/// Applies batches for one node; caches table metadata between calls (reloaded when
/// `PRAGMA schema_version` moves).
pub struct Applier {
    tables: HashMap<String, TableMeta>,
    schema_version: Option<i64>,
    /// Tables known to hold parked rows; `settle` runs for them after every call.
    parked_tables: BTreeSet<String>,
}

impl Default for Applier {
    fn default() -> Self {
        Self::new()
    }
}

impl Applier {
    pub fn new() -> Applier {
        Applier {
            tables: HashMap::new(),
            schema_version: None,
            parked_tables: BTreeSet::new(),
        }
    }

    fn refresh(&mut self, conn: &Connection) -> Result<(), SqlError> {
        let version: i64 = conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(|source| SqlError::Sqlite {
                what: "reading the schema version",
                source,
            })?;
        if self.schema_version == Some(version) {
            return Ok(());
        }
        self.tables.clear();
        self.parked_tables.clear();
        for meta in tracked_tables(conn)? {
            if conflicts::has_parked(conn, &meta)? {
                self.parked_tables.insert(meta.name.to_ascii_lowercase());
            }
            self.tables.insert(meta.name.to_ascii_lowercase(), meta);
        }
        self.schema_version = Some(version);
        Ok(())
    }

    /// Applies `batches` in one `BEGIN IMMEDIATE` transaction and records the highest sequence
    /// per stream in `__harmonylite__applied` in the same transaction.
    pub fn apply(
        &mut self,
        conn: &mut Connection,
        batches: &[IncomingBatch],
    ) -> Result<ApplyReport, SqlError> {
        self.refresh(conn)?;
        if batches.is_empty() && self.parked_tables.is_empty() {
            return Ok(ApplyReport::default());
        }
        let sql = |what: &'static str| move |source| SqlError::Sqlite { what, source };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("starting the apply transaction"))?;
        tx.execute(
            &format!("INSERT INTO {} VALUES (1)", quote_ident(GUARD)),
            [],
        )
        .map_err(sql("raising the capture guard"))?;
        let mut report = ApplyReport::default();
        let mut seqs: BTreeMap<&str, u64> = BTreeMap::new();
        for incoming in batches {
            let mut missing_seen: HashSet<String> = HashSet::new();
            for changes in &incoming.batch.tables {
                let key = changes.table.to_ascii_lowercase();
                match self.tables.get(&key) {
                    Some(meta) => {
                        if apply_table(&tx, meta, changes, &mut report)? {
                            self.parked_tables.insert(key);
                        }
                    }
                    None => {
                        report.missing_table += changes.rows.len() as u64;
                        if missing_seen.insert(key) && !changes.rows.is_empty() {
                            let mut j = Journal::new(&changes.table, "missing_table", &[]);
                            j.detail = Some(format!(
                                "{} row changes from node {} skipped: table not captured here",
                                changes.rows.len(),
                                incoming.batch.origin
                            ));
                            journal(&tx, &j, &mut report)?;
                        }
                    }
                }
            }
            // An empty stream marks changes that did not come from the log (local changes
            // applied again after a restore): there is no sequence to record.
            if !incoming.stream.is_empty() {
                let seq = seqs.entry(incoming.stream.as_str()).or_default();
                *seq = (*seq).max(incoming.seq.0);
            }
        }
        let record = format!(
            "INSERT INTO {}(stream, seq) VALUES(?1, ?2) \
             ON CONFLICT(stream) DO UPDATE SET seq = MAX(seq, excluded.seq)",
            quote_ident(APPLIED)
        );
        for (stream, seq) in seqs {
            tx.prepare_cached(&record)
                .and_then(|mut s| s.execute(rusqlite::params![stream, seq as i64]))
                .map_err(sql("recording the applied sequence"))?;
        }
        // Local writes since the last call may also have unblocked parked rows.
        for name in self.parked_tables.clone() {
            let Some(meta) = self.tables.get(&name) else {
                continue;
            };
            if !conflicts::settle(&tx, meta, &mut report)? {
                self.parked_tables.remove(&name);
            }
        }
        tx.execute(&format!("DELETE FROM {}", quote_ident(GUARD)), [])
            .map_err(sql("lowering the capture guard"))?;
        tx.commit().map_err(sql("committing applied changes"))?;
        Ok(report)
    }
}

/// Applies one table's changes; returns whether rows were parked.
fn apply_table(
    conn: &Connection,
    meta: &TableMeta,
    changes: &TableChanges,
    report: &mut ApplyReport,
) -> Result<bool, SqlError> {
    let local_keys = meta.wire_key_columns();
    let same_keys = local_keys.len() == changes.key_columns.len()
        && local_keys
            .iter()
            .zip(&changes.key_columns)
            .all(|(a, b)| a.eq_ignore_ascii_case(b));
    if !same_keys {
        let mut j = Journal::new(&meta.name, "apply_error", &[]);
        j.detail = Some(format!(
            "{} row changes skipped: key columns differ (message {:?}, local {:?})",
            changes.rows.len(),
            changes.key_columns,
            local_keys
        ));
        journal(conn, &j, report)?;
        report.errors += changes.rows.len() as u64;
        return Ok(false);
    }
    let plan = TablePlan::new(meta, &changes.columns);
    report.skipped_columns += changes
        .columns
        .iter()
        .filter(|c| meta.column_index(c).is_none())
        .count() as u64;
    let parked_before = report.parked;
    for row in &changes.rows {
        apply_row(conn, &plan, &changes.columns, row, report)?;
    }
    Ok(report.parked > parked_before)
}

/// Applies one row change when it is newer than the local state of its key.
fn apply_row(
    conn: &Connection,
    plan: &TablePlan<'_>,
    columns: &[String],
    row: &RowChange,
    report: &mut ApplyReport,
) -> Result<(), SqlError> {
    let meta = plan.meta;
    let fail = table_err("applying a row", &meta.name);
    let shape_ok = row.key.len() == meta.key.len()
        && (row.deleted || row.values.len() == columns.len())
        && i64::try_from(row.version).is_ok();
    if !shape_ok {
        let mut j = Journal::new(&meta.name, "apply_error", &row.key);
        j.loser = Some((row.version, row.node.0));
        j.detail = Some("malformed row change (key, value count or version)".into());
        journal(conn, &j, report)?;
        report.errors += 1;
        return Ok(());
    }
    let key = plan.key_of(&row.key, if row.deleted { &[] } else { &row.values });
    let incoming = (row.version, row.node.0);
    let local = plan.clock_get(conn, &key)?;
    if local.is_some_and(|l| incoming <= l.stamp()) {
        report.stale += 1;
        return Ok(());
    }
    let write = ClockWrite {
        ver: row.version,
        node: row.node.0,
        origin: row.origin.0,
        deleted: row.deleted,
        parked: None,
    };
    report.newest_version = report.newest_version.max(row.version);
    if row.deleted {
        plan.delete_row(conn, &key).map_err(fail)?;
        plan.clock_put(conn, &key, &write)?;
        report.applied += 1;
        return Ok(());
    }
    if let Some(l) = local.filter(|l| !l.deleted && l.origin != row.origin.0) {
        journal_key_collision(conn, plan, columns, row, &key, l, report)?;
    }
    match plan.write_row(conn, &key, &row.values) {
        Ok(()) => {
            plan.clock_put(conn, &key, &write)?;
            report.applied += 1;
        }
        Err(e) if is_unique_violation(&e) => {
            let cand = Candidate {
                key: &key,
                ver: row.version,
                node: row.node.0,
                origin: row.origin.0,
                columns,
                values: &row.values,
            };
            resolve_unique(conn, plan, &cand, &e, report)?;
        }
        Err(e) if is_row_level(&e) => {
            let mut j = Journal::new(&meta.name, "apply_error", &key);
            j.loser = Some(incoming);
            j.loser_row = Some(row_json(columns, &row.values));
            j.detail = Some(e.to_string());
            journal(conn, &j, report)?;
            report.errors += 1;
        }
        Err(e) => return Err(fail(e)),
    }
    Ok(())
}

/// Two nodes inserted the same key independently (typically rowid/AUTOINCREMENT keys): last
/// writer wins, and the row it overwrites is journaled.
fn journal_key_collision(
    conn: &Connection,
    plan: &TablePlan<'_>,
    columns: &[String],
    row: &RowChange,
    key: &[Value],
    local: ClockState,
    report: &mut ApplyReport,
) -> Result<(), SqlError> {
    let meta = plan.meta;
    let old = plan
        .select(conn, key)
        .map_err(table_err("applying a row", &meta.name))?;
    let Some(old) = old else {
        return Ok(());
    };
    let mut j = Journal::new(&meta.name, "key_collision", key);
    j.winner = Some((row.version, row.node.0));
    j.loser = Some(local.stamp());
    j.winner_row = Some(row_json(columns, &row.values));
    j.loser_row = Some(row_json(&meta.column_names(), &old));
    j.detail = Some(format!(
        "origin {} replaced origin {}",
        row.origin, local.origin
    ));
    journal(conn, &j, report)
}

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
