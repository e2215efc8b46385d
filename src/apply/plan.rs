//! The statements the applier runs for one table and one incoming column list, built once per
//! table per batch. Each statement is taken from the connection's cache once and held for the
//! plan's rows: `prepare_cached` per row hashed the SQL text twice and cleared the bindings
//! every time, 9 % of the appliers' time in the throughput profile (`docs/benchmarks.md`).

use std::cell::RefCell;

use rusqlite::{CachedStatement, Connection, OptionalExtension, params_from_iter};

use crate::catalog::discover::TableMeta;
use crate::cdc::triggers::{clock_table, key_col, key_col_list};
use crate::change::Value;
use crate::sql::quote_ident;
use crate::sql::value::version_of;
use crate::sql::{SqlError, table_err};

/// A key's clock row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockState {
    pub ver: u64,
    pub node: u64,
    pub origin: u64,
    pub deleted: bool,
}

impl ClockState {
    /// The total order of versions: version, then node id.
    pub fn stamp(&self) -> (u64, u64) {
        (self.ver, self.node)
    }
}

/// What to write to the clock for a key.
pub struct ClockWrite<'a> {
    pub ver: u64,
    pub node: u64,
    pub origin: u64,
    pub deleted: bool,
    pub parked: Option<&'a [u8]>,
}

/// The plan's statements, by index into `TablePlan::sql` and `TablePlan::held`.
#[derive(Clone, Copy)]
enum Stmt {
    Upsert,
    RowidUpdate,
    RowidInsert,
    Delete,
    SelectRow,
    ClockGet,
    ClockPut,
}

const STATEMENTS: usize = 7;
/// A row with a text or blob this large is written through `sql::in_place` (no bound copy).
const LARGE_VALUE_BYTES: usize = 1 << 20;

/// Statements for one table, given the incoming message's columns, on one connection.
pub struct TablePlan<'m, 'c> {
    pub meta: &'m TableMeta,
    conn: &'c Connection,
    /// (message column index, local column index) of the columns written.
    pub writes: Vec<(usize, usize)>,
    /// For each key column: the message column carrying it, if any.
    key_from_values: Vec<Option<usize>>,
    /// SQL by `Stmt`; the rowid update is empty when no column is written.
    sql: [String; STATEMENTS],
    /// Statements taken from the cache on first use (they return to it when the plan drops).
    held: [RefCell<Option<CachedStatement<'c>>>; STATEMENTS],
}

impl<'m, 'c> TablePlan<'m, 'c> {
    /// Plans writes of the message columns that exist locally (matched case-insensitively, the
    /// first of duplicates wins).
    pub fn new(
        conn: &'c Connection,
        meta: &'m TableMeta,
        message_columns: &[String],
    ) -> TablePlan<'m, 'c> {
        let writes = written_columns(meta, message_columns);
        let key_from_values = key_sources(meta, &writes);
        let table = quote_ident(&meta.name);
        let col = |li: usize| quote_ident(&meta.columns[li].name);
        let where_key: Vec<String> = meta
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} = ?{}", quote_ident(&k.name), i + 1))
            .collect();
        let where_key = where_key.join(" AND ");
        let all_cols: Vec<String> = (0..meta.columns.len()).map(col).collect();
        let (rowid_update, rowid_insert) = rowid_sql(meta, &writes);
        let (clock_get, clock_put) = clock_sql(meta);
        TablePlan {
            meta,
            conn,
            sql: [
                upsert_sql(meta, &writes, &key_from_values),
                rowid_update.unwrap_or_default(),
                rowid_insert,
                format!("DELETE FROM {table} WHERE {where_key}"),
                format!(
                    "SELECT {} FROM {table} WHERE {where_key}",
                    all_cols.join(", ")
                ),
                clock_get,
                clock_put,
            ],
            held: Default::default(),
            key_from_values,
            writes,
        }
    }

    /// Runs `f` with the plan's statement `which`, preparing it on first use.
    fn with<T>(
        &self,
        which: Stmt,
        f: impl FnOnce(&mut CachedStatement<'c>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let mut slot = self.held[which as usize].borrow_mut();
        let stmt = match &mut *slot {
            Some(stmt) => stmt,
            empty => empty.insert(self.conn.prepare_cached(&self.sql[which as usize])?),
        };
        f(stmt)
    }

    /// The key of an incoming row: key columns are taken from the row's values when present,
    /// so a NOCASE key keeps the spelling the origin's table has.
    pub fn key_of(&self, key: &[Value], values: &[Value]) -> Vec<Value> {
        self.key_from_values
            .iter()
            .enumerate()
            .map(|(i, m)| match m {
                Some(m) if !values.is_empty() => values[*m].clone(),
                _ => key[i].clone(),
            })
            .collect()
    }

    pub fn clock_get(&self, key: &[Value]) -> Result<Option<ClockState>, SqlError> {
        self.with(Stmt::ClockGet, |stmt| {
            stmt.query_row(params_from_iter(key), |r| {
                Ok(ClockState {
                    ver: version_of(r.get_ref(0)?),
                    node: r.get::<_, i64>(1)? as u64,
                    origin: r.get::<_, i64>(2)? as u64,
                    deleted: r.get::<_, i64>(3)? != 0,
                })
            })
            .optional()
        })
        .map_err(table_err("reading a clock row", &self.meta.name))
    }

    pub fn clock_put(&self, key: &[Value], w: &ClockWrite<'_>) -> Result<(), SqlError> {
        let ver = w.ver as i64;
        let node = w.node as i64;
        let origin = w.origin as i64;
        let deleted = i64::from(w.deleted);
        let mut args: Vec<&dyn rusqlite::ToSql> =
            key.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
        args.extend([
            &ver as &dyn rusqlite::ToSql,
            &node,
            &origin,
            &deleted,
            &w.parked,
        ]);
        self.with(Stmt::ClockPut, |stmt| stmt.execute(args.as_slice()))
            .map_err(table_err("writing a clock row", &self.meta.name))?;
        Ok(())
    }

    /// Writes a live row (upsert; for rowid tables update, else insert). Returns the raw SQLite
    /// error so the caller can tell constraint violations from fatal errors.
    pub fn write_row(&self, key: &[Value], values: &[Value]) -> rusqlite::Result<()> {
        let large = values.iter().any(|v| v.heap_bytes() >= LARGE_VALUE_BYTES);
        let vals = self.writes.iter().map(|&(m, _)| &values[m]);
        if self.meta.rowid_key {
            let mut changed = 0;
            if self.writes.is_empty() {
                if self.select(key)?.is_some() {
                    changed = 1;
                }
            } else {
                let args: Vec<&Value> = vals.clone().chain(key.iter()).collect();
                changed = self.execute(Stmt::RowidUpdate, large, &args)?;
            }
            if changed == 0 {
                let args: Vec<&Value> = key.iter().chain(vals).collect();
                self.execute(Stmt::RowidInsert, large, &args)?;
            }
        } else {
            let extra_keys = self
                .key_from_values
                .iter()
                .enumerate()
                .filter(|(_, m)| m.is_none())
                .map(|(i, _)| &key[i]);
            let args: Vec<&Value> = vals.chain(extra_keys).collect();
            self.execute(Stmt::Upsert, large, &args)?;
        }
        Ok(())
    }

    /// Runs one of the write statements. A row with a `large` value goes through
    /// `sql::in_place`, where SQLite reads the value where it is: bound through rusqlite it
    /// would be copied, and the copy kept by the cached statement until its next use.
    fn execute(&self, which: Stmt, large: bool, args: &[&Value]) -> rusqlite::Result<usize> {
        if large {
            return crate::sql::in_place::execute(self.conn, &self.sql[which as usize], args);
        }
        self.with(which, |s| s.execute(params_from_iter(args)))
    }

    /// Deletes the row with `key` (a no-op when absent).
    pub fn delete_row(&self, key: &[Value]) -> rusqlite::Result<usize> {
        self.with(Stmt::Delete, |s| s.execute(params_from_iter(key)))
    }

    /// The live row's values (all local columns) or `None`.
    pub fn select(&self, key: &[Value]) -> rusqlite::Result<Option<Vec<Value>>> {
        let n = self.meta.columns.len();
        self.with(Stmt::SelectRow, |s| {
            s.query_row(params_from_iter(key), |r| {
                (0..n).map(|i| r.get(i)).collect()
            })
            .optional()
        })
    }
}

/// (message column index, local column index) of the message columns that exist locally.
fn written_columns(meta: &TableMeta, message_columns: &[String]) -> Vec<(usize, usize)> {
    let mut writes: Vec<(usize, usize)> = Vec::new();
    for (mi, name) in message_columns.iter().enumerate() {
        if let Some(li) = meta.column_index(name)
            && !writes.iter().any(|&(_, l)| l == li)
        {
            writes.push((mi, li));
        }
    }
    writes
}

/// For each key column, the message column that carries it (none for a rowid key).
fn key_sources(meta: &TableMeta, writes: &[(usize, usize)]) -> Vec<Option<usize>> {
    if meta.rowid_key {
        return vec![None];
    }
    meta.key
        .iter()
        .map(|k| {
            let li = meta.column_index(&k.name);
            writes
                .iter()
                .find(|&&(_, l)| Some(l) == li)
                .map(|&(m, _)| m)
        })
        .collect()
}

/// `?from, ?from+1, …` (`n` of them).
fn placeholders(n: usize, from: usize) -> String {
    (from..from + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT … ON CONFLICT(pk) DO UPDATE`: never INSERT OR REPLACE, which deletes and re-inserts
/// (firing delete triggers and cascades).
fn upsert_sql(
    meta: &TableMeta,
    writes: &[(usize, usize)],
    key_from_values: &[Option<usize>],
) -> String {
    let col = |li: usize| quote_ident(&meta.columns[li].name);
    let key_names: Vec<String> = meta.key.iter().map(|k| quote_ident(&k.name)).collect();
    let mut insert_cols: Vec<String> = writes.iter().map(|&(_, l)| col(l)).collect();
    for (i, k) in key_names.iter().enumerate() {
        if key_from_values[i].is_none() && !meta.rowid_key {
            insert_cols.push(k.clone());
        }
    }
    let target: Vec<String> = meta
        .key
        .iter()
        .zip(&key_names)
        .map(|(k, q)| {
            if k.collation == "BINARY" {
                q.clone()
            } else {
                format!("{q} COLLATE {}", k.collation)
            }
        })
        .collect();
    let key_locals: Vec<Option<usize>> = meta
        .key
        .iter()
        .map(|k| meta.column_index(&k.name))
        .collect();
    let sets: Vec<String> = writes
        .iter()
        .filter(|&&(_, l)| !key_locals.contains(&Some(l)))
        .map(|&(_, l)| format!("{0} = excluded.{0}", col(l)))
        .collect();
    format!(
        "INSERT INTO {}({}) VALUES({}) ON CONFLICT({}) DO {}",
        quote_ident(&meta.name),
        insert_cols.join(", "),
        placeholders(insert_cols.len(), 1),
        target.join(", "),
        if sets.is_empty() {
            "NOTHING".to_string()
        } else {
            format!("UPDATE SET {}", sets.join(", "))
        }
    )
}

/// The rowid table's update (none without written columns) and insert.
fn rowid_sql(meta: &TableMeta, writes: &[(usize, usize)]) -> (Option<String>, String) {
    let table = quote_ident(&meta.name);
    let col = |li: usize| quote_ident(&meta.columns[li].name);
    let rowid = quote_ident(&meta.key[0].name);
    let update = (!writes.is_empty()).then(|| {
        let sets: Vec<String> = writes
            .iter()
            .enumerate()
            .map(|(i, &(_, l))| format!("{} = ?{}", col(l), i + 1))
            .collect();
        format!(
            "UPDATE {table} SET {} WHERE {rowid} = ?{}",
            sets.join(", "),
            writes.len() + 1
        )
    });
    let mut cols = vec![rowid];
    cols.extend(writes.iter().map(|&(_, l)| col(l)));
    let insert = format!(
        "INSERT INTO {table}({}) VALUES({})",
        cols.join(", "),
        placeholders(cols.len(), 1)
    );
    (update, insert)
}

/// The clock row's read and upsert.
fn clock_sql(meta: &TableMeta) -> (String, String) {
    let clock = quote_ident(&clock_table(&meta.name));
    let n_keys = meta.key.len();
    let where_clock: Vec<String> = (0..n_keys)
        .map(|i| format!("{} = ?{}", quote_ident(&key_col(i)), i + 1))
        .collect();
    let mut clock_set = String::from(
        "ver = excluded.ver, node = excluded.node, origin = excluded.origin, \
         deleted = excluded.deleted, parked = excluded.parked",
    );
    for (i, k) in meta.key.iter().enumerate() {
        if k.collation != "BINARY" {
            clock_set.push_str(&format!(", {0} = excluded.{0}", quote_ident(&key_col(i))));
        }
    }
    let get = format!(
        "SELECT ver, node, origin, deleted FROM {clock} WHERE {}",
        where_clock.join(" AND ")
    );
    let put = format!(
        "INSERT INTO {clock}({}, ver, node, origin, deleted, parked) VALUES({}) \
         ON CONFLICT({}) DO UPDATE SET {clock_set}",
        key_col_list(meta),
        placeholders(n_keys + 5, 1),
        key_col_list(meta),
    );
    (get, put)
}
