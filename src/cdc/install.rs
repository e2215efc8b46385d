//! Installing capture (clock tables, triggers, baseline) and removing every trace of it.
//!
//! `install` is idempotent and cheap when nothing changed: it compares the expected objects with
//! `sqlite_schema` and touches only what differs, so re-running it does not bump
//! `PRAGMA schema_version`. It also takes over databases left by the Go HarmonyLite.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, Transaction, TransactionBehavior, params};

use crate::catalog::discover::{TableMeta, captured_tables};
use crate::cdc::baseline::baseline;
use crate::cdc::fold::fold_table;
use crate::cdc::triggers::{
    MAX_VERSION, clock_signature, clock_table, create_clock_indexes_sql, create_clock_sql,
    create_log_sql, log_table, triggers_sql,
};
use crate::cdc::{CaptureInfo, CleanupReport};
use crate::ids::NodeId;
use crate::sql::internal::{self, INTERNAL_TABLES, PREFIX, PUBLISHED, TRACKED};
use crate::sql::quote_ident;
use crate::sql::{SqlError, sql_err, table_err};

/// The Go implementation's global change log.
const GO_GLOBAL_LOG: &str = "__harmonylite___change_log_global";

/// One of our objects in `sqlite_schema`.
struct Object {
    kind: String,
    name: String,
    sql: String,
}

fn our_objects(conn: &Connection) -> Result<Vec<Object>, SqlError> {
    let q = format!(
        "SELECT type, name, COALESCE(sql, '') FROM sqlite_schema WHERE substr(name, 1, {}) = ?1",
        PREFIX.len()
    );
    let fail = sql_err("listing harmonylite objects");
    let mut stmt = conn.prepare(&q).map_err(&fail)?;
    let rows = stmt
        .query_map([PREFIX], |r| {
            Ok(Object {
                kind: r.get(0)?,
                name: r.get(1)?,
                sql: r.get(2)?,
            })
        })
        .map_err(&fail)?;
    rows.collect::<Result<_, _>>().map_err(&fail)
}

/// Installs (or re-installs after a schema change) capture for every table not in `ignore`,
/// in one `BEGIN IMMEDIATE` transaction. The caller must not be inside a transaction (the
/// connection is shared, so a restore can install capture into the copy it is backing up).
pub fn install(
    conn: &Connection,
    local: NodeId,
    ignore: &[String],
) -> Result<CaptureInfo, SqlError> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(sql_err("starting the install transaction"))?;
    internal::create_internal(&tx).map_err(sql_err("creating internal tables"))?;
    let (tables, skipped) = captured_tables(&tx, ignore)?;
    let _cache = SchemaCache::hold(conn, &tables, local)?;
    let objects = our_objects(&tx)?;
    let (existing, mut changed) = sweep_objects(&tx, &objects, &tables, local)?;
    let tracked = tracked_signatures(&tx)?;
    let names: HashSet<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    for gone in tracked.keys().filter(|t| !names.contains(t.as_str())) {
        forget_table(&tx, gone)?;
    }
    let mut baselined = 0;
    for meta in &tables {
        let (table_changed, stamped) = install_table(&tx, meta, local, &existing, &tracked)?;
        changed |= table_changed;
        baselined += stamped;
    }
    tx.commit().map_err(sql_err("committing the install"))?;
    if changed {
        tracing::info!(tables = tables.len(), baselined, "capture installed");
    }
    Ok(CaptureInfo {
        tables,
        skipped,
        baselined,
        changed,
    })
}

/// A page cache that holds the whole schema table while the install runs, restored on drop.
///
/// Every `CREATE` re-reads its new entry with a full scan of `sqlite_schema` (SQLite has no
/// index on it), so a first install on many tables scans the schema table thousands of times.
/// Past SQLite's default cache of 2,000 KiB (about 700 tables' capture objects) each scan read
/// it from the file again: at 1,000 tables the DDL took 2.7 s instead of 2.2 s. The cache is
/// sized from the schema's SQL text as it will be (twice it, for the pages' own room), so a
/// baseline of a large table is not given more memory than before.
struct SchemaCache<'c> {
    conn: &'c Connection,
    previous: i64,
}

impl<'c> SchemaCache<'c> {
    fn hold(
        conn: &'c Connection,
        tables: &[TableMeta],
        local: NodeId,
    ) -> Result<Option<SchemaCache<'c>>, SqlError> {
        let fail = sql_err("sizing the page cache for the install");
        let existing: f64 = conn
            .query_row("SELECT total(length(sql)) FROM sqlite_schema", [], |r| {
                r.get(0)
            })
            .map_err(&fail)?;
        let planned: usize = tables.iter().map(|t| capture_sql_len(t, local)).sum();
        let wanted_kib = DEFAULT_CACHE_KIB + 2 * (existing as i64 + planned as i64) / 1024;
        let previous: i64 = conn
            .query_row("PRAGMA cache_size", [], |r| r.get(0))
            .map_err(&fail)?;
        // A negative cache_size is in KiB, a positive one in pages.
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(&fail)?;
        let previous_kib = if previous < 0 {
            -previous
        } else {
            previous * page_size / 1024
        };
        if wanted_kib <= previous_kib {
            return Ok(None);
        }
        conn.execute_batch(&format!("PRAGMA cache_size = -{wanted_kib}"))
            .map_err(&fail)?;
        Ok(Some(SchemaCache { conn, previous }))
    }
}

impl Drop for SchemaCache<'_> {
    fn drop(&mut self) {
        // Shrinking the cache frees the pages above the limit at once.
        let restore = format!("PRAGMA cache_size = {}", self.previous);
        if let Err(error) = self.conn.execute_batch(&restore) {
            tracing::warn!(%error, "cannot restore the page cache size after the install");
        }
    }
}

/// SQLite's default page cache (`PRAGMA cache_size = -2000`).
const DEFAULT_CACHE_KIB: i64 = 2000;

/// The length of the SQL text of a table's capture objects.
fn capture_sql_len(meta: &TableMeta, local: NodeId) -> usize {
    let triggers: usize = triggers_sql(meta, local).iter().map(|(_, s)| s.len()).sum();
    let indexes: usize = create_clock_indexes_sql(meta).iter().map(String::len).sum();
    triggers + indexes + create_clock_sql(meta).len() + create_log_sql(meta).len()
}

/// Our triggers, clock tables and capture logs that are still wanted, by name (triggers with
/// their SQL).
struct Existing<'a> {
    triggers: HashMap<&'a str, &'a str>,
    clocks: HashSet<&'a str>,
    logs: HashSet<&'a str>,
}

/// Drops our objects that no table needs any more (and the Go implementation's); returns the
/// ones kept and whether anything was dropped.
fn sweep_objects<'a>(
    tx: &Transaction<'_>,
    objects: &'a [Object],
    tables: &[TableMeta],
    local: NodeId,
) -> Result<(Existing<'a>, bool), SqlError> {
    let expected_triggers: HashSet<String> = tables
        .iter()
        .flat_map(|t| triggers_sql(t, local))
        .map(|(name, _)| name)
        .collect();
    let expected_clocks: HashSet<String> = tables.iter().map(|t| clock_table(&t.name)).collect();
    let expected_logs: HashSet<String> = tables.iter().map(|t| log_table(&t.name)).collect();
    let mut existing = Existing {
        triggers: HashMap::new(),
        clocks: HashSet::new(),
        logs: HashSet::new(),
    };
    let mut changed = false;
    for o in objects {
        match o.kind.as_str() {
            // Ours for a table no longer captured, or the Go implementation's.
            "trigger" if !expected_triggers.contains(&o.name) => {
                tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote_ident(&o.name)))
                    .map_err(table_err("dropping a stale trigger", &o.name))?;
                changed = true;
            }
            "trigger" => {
                existing.triggers.insert(&o.name, &o.sql);
            }
            "table" if expected_clocks.contains(&o.name) => {
                existing.clocks.insert(&o.name);
            }
            "table" if expected_logs.contains(&o.name) => {
                existing.logs.insert(&o.name);
            }
            "table" if is_stale_table(&o.name) => {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote_ident(&o.name)))
                    .map_err(table_err("dropping a stale table", &o.name))?;
                changed = true;
            }
            _ => {}
        }
    }
    Ok((existing, changed))
}

/// Brings one table's clock, indexes and triggers to what this build wants, baselining rows
/// nobody stamped. Returns whether a schema object changed and how many rows were stamped.
fn install_table(
    tx: &Transaction<'_>,
    meta: &TableMeta,
    local: NodeId,
    existing: &Existing<'_>,
    tracked: &HashMap<String, String>,
) -> Result<(bool, u64), SqlError> {
    let clock = clock_table(&meta.name);
    let log = log_table(&meta.name);
    let signature = clock_signature(meta);
    let mut exists = existing.clocks.contains(clock.as_str());
    let mut log_exists = existing.logs.contains(log.as_str());
    let mut changed = false;
    if exists && tracked.get(&meta.name) != Some(&signature) {
        drop_clock_for_rebuild(tx, meta, log_exists)?;
        exists = false;
        log_exists = false;
    }
    if !exists {
        tx.execute_batch(&create_clock_sql(meta))
            .map_err(table_err("creating the clock table", &meta.name))?;
        changed = true;
    }
    if log_exists {
        // The key is unchanged: what was captured since the last fold goes into the clock
        // before the baseline or anyone else reads it.
        fold_table(tx, meta)?;
    } else {
        tx.execute_batch(&create_log_sql(meta))
            .map_err(table_err("creating the capture log", &meta.name))?;
        changed = true;
    }
    for idx in create_clock_indexes_sql(meta) {
        tx.execute_batch(&idx)
            .map_err(table_err("creating a clock index", &meta.name))?;
    }
    repair_real_versions(tx, meta)?;
    remember_table(tx, meta, &signature)?;
    let mut trigger_missing = false;
    for (name, sql) in triggers_sql(meta, local) {
        match existing.triggers.get(name.as_str()) {
            Some(existing) if existing.trim() == sql => continue,
            Some(_) => {
                tx.execute_batch(&format!("DROP TRIGGER {}", quote_ident(&name)))
                    .map_err(table_err("replacing a trigger", &meta.name))?;
            }
            None => trigger_missing = true,
        }
        tx.execute_batch(&sql)
            .map_err(table_err("creating a trigger", &meta.name))?;
        changed = true;
    }
    // A new clock, or a table whose triggers vanished (first install, cleanup, the table
    // was dropped and recreated): rows nobody stamped get a version once.
    let mut stamped = 0;
    if !exists || trigger_missing {
        stamped = baseline(tx, meta, local, exists)?;
    }
    Ok((changed, stamped))
}

/// A clock poisoned by the overflow of a pre-2 trigger (a version past `i64::MAX` became a
/// REAL, and every reader of the clock failed) gets `MAX_VERSION` for those rows: readable
/// again, still ordered as the newest, and the node id breaks ties from there on.
fn repair_real_versions(tx: &Transaction<'_>, meta: &TableMeta) -> Result<(), SqlError> {
    let repaired = tx
        .execute(
            &format!(
                "UPDATE {} SET ver = ?1 WHERE typeof(ver) <> 'integer'",
                quote_ident(&clock_table(&meta.name))
            ),
            [MAX_VERSION],
        )
        .map_err(table_err("repairing clock versions", &meta.name))?;
    if repaired > 0 {
        tracing::warn!(
            table = %meta.name,
            rows = repaired,
            "clock versions past the integers (an old overflow) set to the largest version"
        );
    }
    Ok(())
}

/// The key changed: stamped keys mean something else now, so the clock (and the capture log,
/// whose records name keys of the old shape) is dropped to be rebuilt, its rows baselined again
/// below every real write.
fn drop_clock_for_rebuild(
    tx: &Transaction<'_>,
    meta: &TableMeta,
    with_log: bool,
) -> Result<(), SqlError> {
    let clock = quote_ident(&clock_table(&meta.name));
    tx.execute_batch(&format!("DROP TABLE {clock}"))
        .map_err(table_err(
            "dropping a clock table to rebuild it",
            &meta.name,
        ))?;
    if with_log {
        tx.execute_batch(&format!(
            "DROP TABLE {}",
            quote_ident(&log_table(&meta.name))
        ))
        .map_err(table_err(
            "dropping a capture log to rebuild it",
            &meta.name,
        ))?;
    }
    forget_table(tx, &meta.name)?;
    Ok(())
}

/// Prefixed tables we may drop: clocks and capture logs of tables no longer captured and the
/// Go change logs. Other prefixed tables (internal ones, other modules') are left alone.
fn is_stale_table(name: &str) -> bool {
    !INTERNAL_TABLES.contains(&name)
        && (name.ends_with("_clock")
            || name.ends_with("_changes")
            || name.ends_with("_change_log")
            || name == GO_GLOBAL_LOG)
}

fn tracked_signatures(conn: &Connection) -> Result<HashMap<String, String>, SqlError> {
    let fail = sql_err("reading tracked tables");
    let mut stmt = conn
        .prepare(&format!(
            "SELECT tbl, signature FROM {}",
            quote_ident(TRACKED)
        ))
        .map_err(&fail)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(&fail)?;
    rows.collect::<Result<_, _>>().map_err(&fail)
}

fn forget_table(tx: &Transaction<'_>, table: &str) -> Result<(), SqlError> {
    let fail = table_err("forgetting a table", table);
    tx.execute(
        &format!("DELETE FROM {} WHERE tbl = ?1", quote_ident(TRACKED)),
        [table],
    )
    .map_err(&fail)?;
    tx.execute(
        &format!("DELETE FROM {} WHERE tbl = ?1", quote_ident(PUBLISHED)),
        [table],
    )
    .map_err(&fail)?;
    Ok(())
}

fn remember_table(tx: &Transaction<'_>, meta: &TableMeta, signature: &str) -> Result<(), SqlError> {
    let keys = serde_json::to_string(&meta.wire_key_columns()).unwrap_or_else(|_| "[]".into());
    tx.execute(
        &format!(
            "INSERT INTO {} (tbl, key_columns, signature) VALUES(?1, ?2, ?3) \
             ON CONFLICT(tbl) DO UPDATE SET key_columns = excluded.key_columns, \
             signature = excluded.signature \
             WHERE key_columns IS NOT excluded.key_columns OR signature IS NOT excluded.signature",
            quote_ident(TRACKED)
        ),
        params![meta.name, keys, signature],
    )
    .map_err(table_err("recording a tracked table", &meta.name))?;
    Ok(())
}

/// Drops every trigger and table whose name starts with our prefix (indexes go with their
/// tables); the application's objects are untouched. One transaction.
pub fn remove_all(conn: &mut Connection) -> Result<CleanupReport, SqlError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err("starting the cleanup transaction"))?;
    let objects = our_objects(&tx)?;
    let mut report = CleanupReport::default();
    for o in objects.iter().filter(|o| o.kind == "trigger") {
        tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote_ident(&o.name)))
            .map_err(table_err("dropping a trigger", &o.name))?;
        report.triggers += 1;
    }
    for o in objects.iter().filter(|o| o.kind == "view") {
        tx.execute_batch(&format!("DROP VIEW IF EXISTS {}", quote_ident(&o.name)))
            .map_err(table_err("dropping a view", &o.name))?;
    }
    for o in objects.iter().filter(|o| o.kind == "table") {
        tx.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote_ident(&o.name)))
            .map_err(table_err("dropping a table", &o.name))?;
        report.tables += 1;
    }
    for o in objects.iter().filter(|o| o.kind == "index") {
        tx.execute_batch(&format!("DROP INDEX IF EXISTS {}", quote_ident(&o.name)))
            .map_err(table_err("dropping an index", &o.name))?;
    }
    tx.commit().map_err(sql_err("committing the cleanup"))?;
    Ok(report)
}

#[cfg(test)]
#[path = "install_tests.rs"]
mod tests;
