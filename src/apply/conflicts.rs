//! UNIQUE conflicts between rows of different keys, and the conflict journal.
//!
//! The rule, the same on every node: the logical content of a table is the newest state of
//! every key (last writer wins on `(version, node)`). Where live rows of different keys collide
//! on a UNIQUE index, they are admitted in descending `(version, node)` order and a row that
//! collides with an already admitted one is **parked**: its values stay in its clock row
//! (`parked`), invisible to the application, and it is journaled (kind `unique`). When the
//! rows blocking it change or go away, it is admitted again (`settle`).
//!
//! That order-independent definition matters: deleting the loser for good would depend on which
//! intermediate versions a node happened to see (a row that collided only with an older version
//! of another row would vanish on some nodes and not on others). A table state satisfying
//! "no admitted rows collide, and every parked row collides with a newer admitted row" is unique
//! for a given set of row states, so nodes that received the same changes in any order agree.

use rusqlite::Connection;

use crate::apply::ApplyReport;
use crate::apply::plan::{ClockState, ClockWrite, TablePlan};
use crate::catalog::discover::TableMeta;
use crate::cdc::parked::ParkedRow;
use crate::cdc::triggers::{clock_table, key_col};
use crate::change::Value;
use crate::sql::internal::CONFLICTS;
use crate::sql::quote_ident;
use crate::sql::value::{key_json, row_json};
use crate::sql::{SqlError, table_err};

/// One journal entry.
pub struct Journal<'a> {
    pub table: &'a str,
    pub kind: &'static str,
    pub key: &'a [Value],
    pub winner: Option<(u64, u64)>,
    pub loser: Option<(u64, u64)>,
    pub winner_row: Option<String>,
    pub loser_row: Option<String>,
    pub detail: Option<String>,
}

impl<'a> Journal<'a> {
    pub fn new(table: &'a str, kind: &'static str, key: &'a [Value]) -> Journal<'a> {
        Journal {
            table,
            kind,
            key,
            winner: None,
            loser: None,
            winner_row: None,
            loser_row: None,
            detail: None,
        }
    }
}

/// Appends to `__harmonylite__conflicts`.
pub fn journal(
    conn: &Connection,
    j: &Journal<'_>,
    report: &mut ApplyReport,
) -> Result<(), SqlError> {
    let q = format!(
        "INSERT INTO {}(at_ms, tbl, kind, key, winner_node, winner_ver, loser_node, loser_ver, \
         winner_row, loser_row, detail) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        quote_ident(CONFLICTS)
    );
    let split = |s: Option<(u64, u64)>| (s.map(|(v, _)| v as i64), s.map(|(_, n)| n as i64));
    let (wv, wn) = split(j.winner);
    let (lv, ln) = split(j.loser);
    conn.prepare_cached(&q)
        .and_then(|mut s| {
            s.execute(rusqlite::params![
                crate::hlc::now_ms() as i64,
                j.table,
                j.kind,
                key_json(j.key),
                wn,
                wv,
                ln,
                lv,
                j.winner_row,
                j.loser_row,
                j.detail
            ])
        })
        .map_err(|source| SqlError::Table {
            what: "journaling a conflict",
            table: j.table.into(),
            source,
        })?;
    tracing::debug!(table = j.table, kind = j.kind, "conflict journaled");
    report.conflicts += 1;
    Ok(())
}

/// A live row in the table colliding with a candidate on some UNIQUE index.
struct Rival {
    key: Vec<Value>,
    clock: Option<ClockState>,
}

/// Live rows (other than `key`) colliding with `values` (one per local column, `None` when
/// unknown) on the table's UNIQUE indexes. NULLs never collide.
fn rivals(
    conn: &Connection,
    plan: &TablePlan<'_, '_>,
    values: &[Option<Value>],
    key: &[Value],
) -> Result<Vec<Rival>, SqlError> {
    let meta = plan.meta;
    let fail = |source| SqlError::Table {
        what: "finding unique rivals",
        table: meta.name.clone(),
        source,
    };
    let mut found: Vec<Vec<Value>> = Vec::new();
    'index: for idx in &meta.unique_indexes {
        let mut conds = Vec::new();
        let mut args: Vec<&Value> = Vec::new();
        for (col, coll) in &idx.columns {
            let Some(li) = meta.column_index(col) else {
                continue 'index;
            };
            match &values[li] {
                Some(v) if *v != Value::Null => args.push(v),
                _ => continue 'index,
            }
            conds.push(format!(
                "{} = ?{} COLLATE {coll}",
                quote_ident(col),
                args.len()
            ));
        }
        let not_same: Vec<String> = meta
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} = ?{}", quote_ident(&k.name), args.len() + i + 1))
            .collect();
        args.extend(key.iter());
        let keys: Vec<String> = meta.key.iter().map(|k| quote_ident(&k.name)).collect();
        let q = format!(
            "SELECT {} FROM {} WHERE {} AND NOT ({})",
            keys.join(", "),
            quote_ident(&meta.name),
            conds.join(" AND "),
            not_same.join(" AND ")
        );
        let mut stmt = conn.prepare_cached(&q).map_err(fail)?;
        let n = meta.key.len();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                (0..n).map(|i| r.get(i)).collect()
            })
            .map_err(fail)?;
        for row in rows {
            let row: Vec<Value> = row.map_err(fail)?;
            if !found
                .iter()
                .any(|f| f.iter().zip(&row).all(|(a, b)| a.same_as(b)))
            {
                found.push(row);
            }
        }
    }
    found
        .into_iter()
        .map(|key| {
            Ok(Rival {
                clock: plan.clock_get(&key)?,
                key,
            })
        })
        .collect()
}

/// Moves a live row out of the table into its clock row's `parked` column.
fn park_row(plan: &TablePlan<'_, '_>, rival: &Rival) -> Result<Option<String>, SqlError> {
    let meta = plan.meta;
    let fail = |source| SqlError::Table {
        what: "parking a row",
        table: meta.name.clone(),
        source,
    };
    let Some(clock) = rival.clock else {
        return Ok(None);
    };
    let Some(values) = plan.select(&rival.key).map_err(fail)? else {
        return Ok(None);
    };
    let columns = meta.column_names();
    let json = row_json(&columns, &values);
    let parked = ParkedRow { columns, values }.encode();
    plan.clock_put(
        &rival.key,
        &ClockWrite {
            ver: clock.ver,
            node: clock.node,
            origin: clock.origin,
            deleted: false,
            parked: Some(&parked),
        },
    )?;
    plan.delete_row(&rival.key).map_err(fail)?;
    Ok(Some(json))
}

/// What the applier knows about an incoming row that hit a UNIQUE constraint.
pub struct Candidate<'a> {
    pub key: &'a [Value],
    pub ver: u64,
    pub node: u64,
    pub origin: u64,
    pub columns: &'a [String],
    pub values: &'a [Value],
}

impl Candidate<'_> {
    fn local_values(&self, meta: &TableMeta) -> Vec<Option<Value>> {
        let mut out = vec![None; meta.columns.len()];
        for (c, v) in self.columns.iter().zip(self.values) {
            if let Some(li) = meta.column_index(c) {
                out[li].get_or_insert_with(|| v.clone());
            }
        }
        out
    }

    fn row_json(&self) -> String {
        row_json(self.columns, self.values)
    }

    /// `(version, node)`: what last-writer-wins compares.
    fn stamp(&self) -> (u64, u64) {
        (self.ver, self.node)
    }

    /// The candidate's clock row, live (`parked: None`) or parked.
    fn clock_write<'p>(&self, parked: Option<&'p [u8]>) -> ClockWrite<'p> {
        ClockWrite {
            ver: self.ver,
            node: self.node,
            origin: self.origin,
            deleted: false,
            parked,
        }
    }
}

/// Resolves an incoming row (already the newest state of its key) that violated a UNIQUE
/// index. Returns whether it was admitted into the table.
pub fn resolve_unique(
    conn: &Connection,
    plan: &TablePlan<'_, '_>,
    cand: &Candidate<'_>,
    error: &rusqlite::Error,
    report: &mut ApplyReport,
) -> Result<bool, SqlError> {
    let meta = plan.meta;
    let found = rivals(conn, plan, &cand.local_values(meta), cand.key)?;
    if found.is_empty() || found.iter().any(|r| r.clock.is_none()) {
        // An expression or partial unique index, or a colliding row without a version: no
        // deterministic winner, so the change is journaled and skipped.
        journal_refused(conn, &meta.name, cand, &error.to_string(), report)?;
        return Ok(false);
    }
    let strongest = found
        .iter()
        .filter_map(|r| r.clock.map(|c| (c.stamp(), r)))
        .max_by_key(|(s, _)| *s)
        .map(|(s, r)| (s, r.key.clone()));
    if let Some((stamp, winner_key)) = strongest.filter(|(s, _)| *s > cand.stamp()) {
        // A newer row holds the value: the candidate waits, parked.
        park_candidate(conn, plan, cand, stamp, &winner_key, report)?;
        return Ok(false);
    }
    // The candidate is the newest: every rival is parked, then it goes in.
    let detail = format!("parked; admitted row {}", key_json(cand.key));
    match admit_over(conn, plan, cand, cand.values, &found, &detail, report)? {
        Ok(()) => {
            report.applied += 1;
            Ok(true)
        }
        Err(refused) => {
            journal_refused(conn, &meta.name, cand, &refused.to_string(), report)?;
            Ok(false)
        }
    }
}

/// Journals a change SQLite refused (kind `apply_error`) and counts it.
fn journal_refused(
    conn: &Connection,
    table: &str,
    cand: &Candidate<'_>,
    error: &str,
    report: &mut ApplyReport,
) -> Result<(), SqlError> {
    let mut j = Journal::new(table, "apply_error", cand.key);
    j.loser = Some(cand.stamp());
    j.loser_row = Some(cand.row_json());
    j.detail = Some(error.to_owned());
    journal(conn, &j, report)?;
    report.errors += 1;
    Ok(())
}

/// Keeps the candidate out of the table, its values in its clock row's `parked` column, because
/// the newer row `winner_key` (stamped `winner`) holds the unique value.
fn park_candidate(
    conn: &Connection,
    plan: &TablePlan<'_, '_>,
    cand: &Candidate<'_>,
    winner: (u64, u64),
    winner_key: &[Value],
    report: &mut ApplyReport,
) -> Result<(), SqlError> {
    let meta = plan.meta;
    let fail = table_err("parking a row", &meta.name);
    plan.delete_row(cand.key).map_err(&fail)?;
    let parked = ParkedRow {
        columns: cand.columns.to_vec(),
        values: cand.values.to_vec(),
    }
    .encode();
    plan.clock_put(cand.key, &cand.clock_write(Some(&parked)))?;
    let winner_row = plan.select(winner_key).map_err(&fail)?;
    let mut j = Journal::new(&meta.name, "unique", cand.key);
    j.winner = Some(winner);
    j.loser = Some(cand.stamp());
    j.winner_row = winner_row.map(|v| row_json(&meta.column_names(), &v));
    j.loser_row = Some(cand.row_json());
    j.detail = Some(format!("parked; kept row {}", key_json(winner_key)));
    journal(conn, &j, report)?;
    report.parked += 1;
    Ok(())
}

/// Parks every rival, then writes the candidate (`values`, one per local column) in their
/// place, inside a savepoint: all of it happens, or, when SQLite refuses the row
/// (`Ok(Err(_))`), none of it. Each parked rival is journaled with `detail`.
fn admit_over(
    conn: &Connection,
    plan: &TablePlan<'_, '_>,
    cand: &Candidate<'_>,
    values: &[Value],
    found: &[Rival],
    detail: &str,
    report: &mut ApplyReport,
) -> Result<Result<(), rusqlite::Error>, SqlError> {
    let meta = plan.meta;
    let fail = table_err("admitting a row over unique rivals", &meta.name);
    savepoint(conn, "SAVEPOINT harmonylite_unique").map_err(&fail)?;
    let mut parked_rows = Vec::new();
    for r in found {
        if let Some(json) = park_row(plan, r)? {
            parked_rows.push((r, json));
        }
    }
    match plan.write_row(cand.key, values) {
        Ok(()) => savepoint(conn, "RELEASE harmonylite_unique").map_err(&fail)?,
        Err(e) if crate::sql::is_row_level(&e) => {
            savepoint(conn, "ROLLBACK TO harmonylite_unique").map_err(&fail)?;
            savepoint(conn, "RELEASE harmonylite_unique").map_err(&fail)?;
            return Ok(Err(e));
        }
        Err(e) => return Err(fail(e)),
    }
    plan.clock_put(cand.key, &cand.clock_write(None))?;
    for (r, json) in parked_rows {
        let mut j = Journal::new(&meta.name, "unique", &r.key);
        j.winner = Some(cand.stamp());
        j.loser = r.clock.map(|c| c.stamp());
        j.winner_row = Some(cand.row_json());
        j.loser_row = Some(json);
        j.detail = Some(detail.to_owned());
        journal(conn, &j, report)?;
        report.parked += 1;
    }
    Ok(Ok(()))
}

fn savepoint(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.execute_batch(sql)
}

/// Whether the table has parked rows.
pub fn has_parked(conn: &Connection, meta: &TableMeta) -> Result<bool, SqlError> {
    let q = format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE parked IS NOT NULL)",
        quote_ident(&clock_table(&meta.name))
    );
    conn.prepare_cached(&q)
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(table_err("looking for parked rows", &meta.name))
}

/// A parked clock row: key, version, node, origin and the parked values (CBOR).
type Parked = (Vec<Value>, u64, u64, u64, Vec<u8>);

/// Admits every parked row no newer admitted row blocks any more (parking the older rows it
/// now collides with), until nothing changes. Returns whether parked rows remain.
pub fn settle(
    conn: &Connection,
    meta: &TableMeta,
    report: &mut ApplyReport,
) -> Result<bool, SqlError> {
    let plan = TablePlan::new(conn, meta, &meta.column_names());
    // Keys SQLite refused to admit (or whose parked values cannot be read): skipped from now on.
    let mut stuck: Vec<Vec<Value>> = Vec::new();
    loop {
        let parked = parked_rows(conn, meta)?;
        let mut progressed = false;
        for row in &parked {
            if stuck
                .iter()
                .any(|s| s.iter().zip(&row.0).all(|(a, b)| a.same_as(b)))
            {
                continue;
            }
            match admit_parked(conn, &plan, row, report)? {
                Settled::Admitted => {
                    report.restored += 1;
                    progressed = true;
                    // Admitting one row changes which others are blocked: look again.
                    break;
                }
                Settled::Blocked => {}
                Settled::Stuck => stuck.push(row.0.clone()),
            }
        }
        if !progressed {
            return Ok(!parked.is_empty());
        }
    }
}

/// Every parked row of the table, newest first.
fn parked_rows(conn: &Connection, meta: &TableMeta) -> Result<Vec<Parked>, SqlError> {
    let fail = table_err("restoring parked rows", &meta.name);
    let n = meta.key.len();
    let keys: Vec<String> = (0..n).map(|i| quote_ident(&key_col(i))).collect();
    let q = format!(
        "SELECT {}, ver, node, origin, parked FROM {} WHERE parked IS NOT NULL ORDER BY ver DESC, node DESC",
        keys.join(", "),
        quote_ident(&clock_table(&meta.name))
    );
    let mut stmt = conn.prepare_cached(&q).map_err(&fail)?;
    let rows = stmt
        .query_map([], |r| {
            let key: Vec<Value> = (0..n).map(|i| r.get(i)).collect::<Result<_, _>>()?;
            Ok((
                key,
                r.get::<_, i64>(n)? as u64,
                r.get::<_, i64>(n + 1)? as u64,
                r.get::<_, i64>(n + 2)? as u64,
                r.get(n + 3)?,
            ))
        })
        .map_err(&fail)?;
    rows.collect::<Result<_, _>>().map_err(&fail)
}

/// What became of one parked row in `settle`.
enum Settled {
    Admitted,
    /// A newer admitted row (or one without a version) still holds its unique value.
    Blocked,
    /// SQLite refused it, or its parked values cannot be read.
    Stuck,
}

/// Admits a parked row when no newer row blocks it.
fn admit_parked(
    conn: &Connection,
    plan: &TablePlan<'_, '_>,
    (key, ver, node, origin, blob): &Parked,
    report: &mut ApplyReport,
) -> Result<Settled, SqlError> {
    let meta = plan.meta;
    let Some(row) = ParkedRow::decode(blob) else {
        return Ok(Settled::Stuck);
    };
    let cand = Candidate {
        key,
        ver: *ver,
        node: *node,
        origin: *origin,
        columns: &row.columns,
        values: &row.values,
    };
    let found = rivals(conn, plan, &cand.local_values(meta), key)?;
    if found
        .iter()
        .any(|r| r.clock.is_none_or(|c| c.stamp() > cand.stamp()))
    {
        return Ok(Settled::Blocked);
    }
    let values = row.values_for(&meta.column_names());
    let detail = format!("parked; restored row {}", key_json(key));
    Ok(
        match admit_over(conn, plan, &cand, &values, &found, &detail, report)? {
            Ok(()) => Settled::Admitted,
            Err(_) => Settled::Stuck,
        },
    )
}
