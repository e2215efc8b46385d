//! Applying remote changes: compare `(version, node)` with the local clock, upsert or delete,
//! resolve UNIQUE conflicts, journal what cannot be applied. Runs on the writer's connection,
//! all batches of one call in one transaction.
//!
//! The applier's own writes must not be stamped as local changes: the transaction first inserts
//! a row into the guard table (every trigger's `WHEN` checks it is empty) and deletes it before
//! commit, so no other connection ever sees it.
//!
//! The stream positions the applied messages bring this node to are written in the same
//! transaction (`crate::position`), so the database's floor never claims a change it lacks.
//! A remote change whose version lies beyond the horizon (this node's wall clock plus the
//! allowed skew) is neither applied nor dropped: it waits in the quarantine table for an
//! operator (`quarantine`).

pub mod conflicts;
pub mod keyless;
pub mod plan;
pub mod quarantine;
pub mod repair;

use std::collections::{BTreeSet, HashMap, HashSet};

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::apply::conflicts::{Candidate, Journal, journal, resolve_unique};
use crate::apply::plan::{ClockState, ClockWrite, TablePlan};
use crate::catalog::discover::TableMeta;
use crate::cdc::CaptureInfo;
use crate::cdc::scan::tracked_tables;
use crate::change::{ChangeBatch, RowChange, TableChanges, UNKNOWN_ORIGIN, Value};
use crate::hlc::Hlc;
use crate::ids::NodeId;
use crate::position::StreamPosition;
use crate::sql::internal::{self, GUARD};
use crate::sql::quote_ident;
use crate::sql::value::row_json;
use crate::sql::{SqlError, is_row_level, table_err};

/// What one apply transaction writes: decoded messages' changes, and the stream positions they
/// bring this node to (recorded in the same transaction).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyWork {
    pub batches: Vec<ChangeBatch>,
    pub positions: Vec<StreamPosition>,
    /// Versions whose wall-clock part is later than this (ms since the epoch) are quarantined;
    /// `None` for changes that are this node's own (local changes applied again after a
    /// restore) or released by an operator.
    pub horizon_ms: Option<u64>,
}

impl ApplyWork {
    /// Work that only moves stream positions.
    pub fn positions(positions: Vec<StreamPosition>) -> ApplyWork {
        ApplyWork {
            positions,
            ..ApplyWork::default()
        }
    }
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
    /// Row changes held in the quarantine (version beyond the horizon).
    pub quarantined: u64,
    /// Highest version applied (`crate::hlc::Hlc`), 0 if none.
    pub newest_version: u64,
    /// Set when the writer re-installed capture first because the schema had changed.
    pub reinstalled: Option<CaptureInfo>,
}

/// Turns `conn`'s triggers on or off (`SQLITE_DBCONFIG_ENABLE_TRIGGER`). The applier turns them
/// off on the engine's connection while only capture's exist; a write that must be captured
/// there (a repair adopting rows) turns them on first. Setting the value it already has keeps
/// the prepared statements; a change makes SQLite prepare them again.
pub fn run_triggers(conn: &Connection, on: bool) -> Result<(), SqlError> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        on,
    )
    .map_err(|source| SqlError::Sqlite {
        what: "switching the connection's triggers",
        source,
    })?;
    Ok(())
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
    /// Whether the schema holds triggers other than capture's: applied rows run them, as the
    /// origin's did. Without any, the connection runs no triggers at all while applying.
    app_triggers: bool,
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
            app_triggers: true,
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
        self.app_triggers =
            internal::has_app_triggers(conn).map_err(|source| SqlError::Sqlite {
                what: "listing the schema's triggers",
                source,
            })?;
        self.schema_version = Some(version);
        Ok(())
    }

    /// Capture's triggers only write the capture log, and under the guard they write nothing;
    /// still, SQLite runs each one's `WHEN` as a sub-program for every applied row, a fifth of
    /// the applier's time (`apply_cost`). When the schema holds no other trigger the
    /// connection runs none; when it does, all run, as before.
    fn set_triggers(&self, conn: &Connection) -> Result<(), SqlError> {
        run_triggers(conn, self.app_triggers)
    }

    /// Applies `work` in one `BEGIN IMMEDIATE` transaction, recording its stream positions in
    /// the same transaction. The caller must not be inside a transaction (the connection is
    /// shared, so a restore can merge changes into the copy it is backing up).
    pub fn apply(&mut self, conn: &Connection, work: &ApplyWork) -> Result<ApplyReport, SqlError> {
        self.refresh(conn)?;
        if work.batches.is_empty() && work.positions.is_empty() && self.parked_tables.is_empty() {
            return Ok(ApplyReport::default());
        }
        let sql = |what: &'static str| move |source| SqlError::Sqlite { what, source };
        self.set_triggers(conn)?;
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
            .map_err(sql("starting the apply transaction"))?;
        tx.execute(
            &format!("INSERT INTO {} VALUES (1)", quote_ident(GUARD)),
            [],
        )
        .map_err(sql("raising the capture guard"))?;
        self.fold_touched(&tx, work)?;
        let mut report = ApplyReport::default();
        for batch in &work.batches {
            self.apply_batch(&tx, batch, work.horizon_ms, &mut report)?;
        }
        for p in &work.positions {
            internal::write_position(&tx, p).map_err(sql("recording the stream position"))?;
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

    /// Folds the capture logs of the tables this transaction reads the clocks of (the tables
    /// it applies to and the parked ones it settles), so last-writer-wins compares against
    /// every local write, folded or not (`cdc::fold`).
    fn fold_touched(&self, tx: &Connection, work: &ApplyWork) -> Result<(), SqlError> {
        let mut touched: BTreeSet<String> = self.parked_tables.clone();
        for batch in &work.batches {
            touched.extend(batch.tables.iter().map(|t| t.table.to_ascii_lowercase()));
        }
        for name in touched {
            if let Some(meta) = self.tables.get(&name) {
                crate::cdc::fold::fold_table(tx, meta)?;
            }
        }
        Ok(())
    }

    /// Applies one message's tables; a table this node does not capture is journaled once.
    fn apply_batch(
        &mut self,
        tx: &Connection,
        batch: &ChangeBatch,
        horizon_ms: Option<u64>,
        report: &mut ApplyReport,
    ) -> Result<(), SqlError> {
        let mut missing_seen: HashSet<String> = HashSet::new();
        for changes in &batch.tables {
            let key = changes.table.to_ascii_lowercase();
            match self.tables.get(&key) {
                Some(meta) => {
                    if apply_table(tx, meta, changes, horizon_ms, report)? {
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
                            batch.origin
                        ));
                        journal(tx, &j, report)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Applies one table's changes; returns whether rows were parked.
fn apply_table(
    conn: &Connection,
    meta: &TableMeta,
    changes: &TableChanges,
    horizon_ms: Option<u64>,
    report: &mut ApplyReport,
) -> Result<bool, SqlError> {
    let resolved;
    let changes = if keyless::is_keyless(changes) {
        match keyless::resolve(meta, changes) {
            Ok(r) => {
                resolved = r;
                &resolved
            }
            Err(why) => {
                let mut j = Journal::new(&meta.name, "apply_error", &[]);
                j.detail = Some(format!("{} row changes skipped: {why}", changes.rows.len()));
                journal(conn, &j, report)?;
                report.errors += changes.rows.len() as u64;
                return Ok(false);
            }
        }
    } else {
        changes
    };
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
    let plan = TablePlan::new(conn, meta, &changes.columns);
    report.skipped_columns += changes
        .columns
        .iter()
        .filter(|c| meta.column_index(c).is_none())
        .count() as u64;
    let parked_before = report.parked;
    for row in &changes.rows {
        if horizon_ms.is_some_and(|h| Hlc(row.version).wall_ms() > h) {
            // One this node already holds (or holds newer) needs no decision: a redelivery, or
            // a repair fetching rows again, must not hold it a second time.
            if already_held(&plan, changes.columns.len(), row)? {
                report.stale += 1;
                continue;
            }
            quarantine::hold(conn, changes, row)?;
            report.quarantined += 1;
            continue;
        }
        apply_row(conn, &plan, &changes.columns, row, report)?;
    }
    Ok(report.parked > parked_before)
}

/// Whether this node's clock already holds `row`'s key at its version or newer.
fn already_held(
    plan: &TablePlan<'_, '_>,
    columns: usize,
    row: &RowChange,
) -> Result<bool, SqlError> {
    if row.key.len() != plan.meta.key.len() || (!row.deleted && row.values.len() != columns) {
        return Ok(false);
    }
    let key = plan.key_of(&row.key, if row.deleted { &[] } else { &row.values });
    let local = plan.clock_get(&key)?;
    Ok(local.is_some_and(|l| (row.version, row.node.0) <= l.stamp()))
}

/// Applies one row change when it is newer than the local state of its key.
fn apply_row(
    conn: &Connection,
    plan: &TablePlan<'_, '_>,
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
    let local = plan.clock_get(&key)?;
    if local.is_some_and(|l| incoming <= l.stamp()) {
        report.stale += 1;
        return Ok(());
    }
    // A change that does not know who first inserted its key keeps the local key's origin.
    let origin = match local {
        Some(l) if row.origin == UNKNOWN_ORIGIN => NodeId(l.origin),
        _ if row.origin == UNKNOWN_ORIGIN => row.node,
        _ => row.origin,
    };
    let write = ClockWrite {
        ver: row.version,
        node: row.node.0,
        origin: origin.0,
        deleted: row.deleted,
        parked: None,
    };
    report.newest_version = report.newest_version.max(row.version);
    if row.deleted {
        plan.delete_row(&key).map_err(fail)?;
        plan.clock_put(&key, &write)?;
        report.applied += 1;
        return Ok(());
    }
    if let Some(l) = local.filter(|l| !l.deleted && l.origin != origin.0) {
        journal_key_collision(conn, plan, columns, row, &key, l, report)?;
    }
    match plan.write_row(&key, &row.values) {
        Ok(()) => {
            plan.clock_put(&key, &write)?;
            report.applied += 1;
        }
        Err(e) if is_unique_violation(&e) => {
            let cand = Candidate {
                key: &key,
                ver: row.version,
                node: row.node.0,
                origin: origin.0,
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
    plan: &TablePlan<'_, '_>,
    columns: &[String],
    row: &RowChange,
    key: &[Value],
    local: ClockState,
    report: &mut ApplyReport,
) -> Result<(), SqlError> {
    let meta = plan.meta;
    let old = plan
        .select(key)
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
