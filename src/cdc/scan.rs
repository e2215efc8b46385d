//! The publisher's read side: stamped keys above the per-table watermark, joined to the live
//! row.
//!
//! Why a watermark on `ver` loses nothing: a trigger stamps `MAX(ver) + 1` over the clock and
//! the unfolded capture log (or the wall clock, if higher) inside the writing transaction, which
//! sees every committed row, so a new local stamp is always above every version committed
//! before it, hence above any watermark taken from a committed snapshot. Versions below the
//! watermark that appear later come only from the applier (remote rows), which need no
//! publishing. Rows stamped by other nodes are scanned (the watermark moves over them) but not
//! returned.
//!
//! Local changes not yet folded (`cdc::fold`) sit in the capture log, every one above the
//! clock's local rows. A scan therefore reads the clock only below the log's oldest record,
//! then each logged key's newest record, so it sees every local change whether folded or not
//! (the publisher folds first to keep the log part small; a restore cannot fold under its lock).

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::catalog::discover::{TableMeta, table_meta};
use crate::cdc::parked::ParkedRow;
use crate::cdc::triggers::{
    FOLDED_ORIGIN, LogKind, aliased_key_cols, clock_signature, clock_table, log_table,
    newest_logged_records,
};
use crate::change::{RowChange, TableChanges, Value};
use crate::ids::NodeId;
use crate::sql::internal::{PUBLISHED, TRACKED};
use crate::sql::quote_ident;
use crate::sql::value::version_of;
use crate::sql::{SqlError, is_missing_table, sql_err, table_err};

/// One scan's result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scan {
    /// Local row changes per table (tables without local changes are left out).
    pub tables: Vec<TableChanges>,
    /// New watermark of every table whose watermark moved (also over remote rows only).
    pub watermarks: Vec<(String, u64)>,
    /// Local stamped rows still above the new watermarks (not in this scan).
    pub pending: u64,
    /// `PRAGMA schema_version` the scan saw: its watermarks are recorded only while it holds
    /// (a re-install in between may have stamped rows below them; see `cdc::baseline`).
    pub schema_version: i64,
}

impl Scan {
    pub fn row_count(&self) -> usize {
        self.tables.iter().map(|t| t.rows.len()).sum()
    }
}

/// The tables capture is installed for and whose clock still matches the table's key; tables
/// changed since the last install are left out until the next install.
pub fn tracked_tables(conn: &Connection) -> Result<Vec<TableMeta>, SqlError> {
    let fail = |source| SqlError::Sqlite {
        what: "reading tracked tables",
        source,
    };
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [TRACKED],
            |r| r.get(0),
        )
        .optional()
        .map_err(fail)?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, String)> = {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT tbl, signature FROM {} ORDER BY tbl",
                quote_ident(TRACKED)
            ))
            .map_err(fail)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(fail)?;
        rows.collect::<Result<_, _>>().map_err(fail)?
    };
    let mut tables = Vec::with_capacity(rows.len());
    for (name, signature) in rows {
        if let Ok(meta) = table_meta(conn, &name)?
            && clock_signature(&meta) == signature
        {
            tables.push(meta);
        }
    }
    Ok(tables)
}

/// Current watermarks.
pub fn watermarks(conn: &Connection) -> Result<HashMap<String, u64>, SqlError> {
    let fail = |source| SqlError::Sqlite {
        what: "reading watermarks",
        source,
    };
    let mut stmt = conn
        .prepare_cached(&format!("SELECT tbl, ver FROM {}", quote_ident(PUBLISHED)))
        .map_err(fail)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .map_err(fail)?;
    rows.collect::<Result<_, _>>().map_err(fail)
}

/// How much one scan reads: about `rows` stamped rows, and local rows of about `bytes` of
/// values. Both stop at a version boundary (a watermark never splits a version), so one
/// version is always read whole, however large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub rows: usize,
    pub bytes: usize,
}

/// `rows` rows, whatever their size.
impl From<usize> for Budget {
    fn from(rows: usize) -> Budget {
        Budget {
            rows,
            bytes: usize::MAX,
        }
    }
}

/// Scans `budget` over `tables`, starting at table `start` (callers rotate it so one busy table
/// cannot starve the others). `floors` raise the stored watermarks (a publisher that has
/// published but not yet recorded them). Run it inside one read transaction.
pub fn scan(
    conn: &Connection,
    tables: &[TableMeta],
    local: NodeId,
    budget: Budget,
    start: usize,
    floors: &HashMap<String, u64>,
) -> Result<Scan, SqlError> {
    let stored = watermarks(conn)?;
    let mut out = Scan::default();
    let mut budget = Budget {
        rows: budget.rows.max(1),
        bytes: budget.bytes.max(1),
    };
    let mut marks: Vec<(usize, u64)> = Vec::with_capacity(tables.len());
    for i in 0..tables.len() {
        let idx = (start + i) % tables.len();
        let meta = &tables[idx];
        let wm = stored
            .get(&meta.name)
            .copied()
            .unwrap_or(0)
            .max(floors.get(&meta.name).copied().unwrap_or(0));
        if budget.rows == 0 || budget.bytes == 0 {
            marks.push((idx, wm));
            continue;
        }
        let (changes, spent, new_wm) = scan_table(conn, meta, local, wm, budget)?;
        budget.rows = budget.rows.saturating_sub(spent.rows);
        budget.bytes = budget.bytes.saturating_sub(spent.bytes);
        if new_wm > wm {
            out.watermarks.push((meta.name.clone(), new_wm));
        }
        if !changes.rows.is_empty() {
            out.tables.push(changes);
        }
        marks.push((idx, new_wm));
    }
    for (idx, wm) in marks {
        out.pending += count_local_above(conn, &tables[idx], local, wm)?;
    }
    Ok(out)
}

/// Returns the table's local changes, what reading them used (clock and log rows, bytes of
/// local values) and the new watermark.
fn scan_table(
    conn: &Connection,
    meta: &TableMeta,
    local: NodeId,
    wm: u64,
    budget: Budget,
) -> Result<(TableChanges, Budget, u64), SqlError> {
    let fail = table_err("scanning changes", &meta.name);
    let wm_i = i64::try_from(wm).unwrap_or(i64::MAX);
    // Local clock rows all sit below the log's oldest record; rows from there on are remote.
    let below_log = oldest_logged(conn, meta)?.map(|v| v.saturating_sub(1));
    let cut = boundary_version(conn, meta, wm_i, budget.rows)?;
    let clock_upto = match (cut, below_log) {
        (Some(c), Some(b)) => c.min(b),
        (c, b) => c.or(b).unwrap_or(i64::MAX),
    };
    let clock_complete = cut.is_none_or(|c| below_log.is_some_and(|b| c > b));
    let columns = meta.column_names();
    let mut changes = no_changes(meta);
    let mut spent = Budget { rows: 0, bytes: 0 };
    let mut new_wm = wm;
    // Reads rows in version order; stops once the version changes after `limit` rows or after
    // the byte budget (a watermark never splits a version). Returns the rows read and whether
    // it stopped for the bytes.
    let mut read =
        |sql: String, args: &[i64], limit: Option<usize>| -> Result<(usize, bool), SqlError> {
            let mut stmt = conn.prepare_cached(&sql).map_err(&fail)?;
            let mut rows = stmt
                .query(rusqlite::params_from_iter(args))
                .map_err(&fail)?;
            let n_keys = meta.key.len();
            let mut taken = 0;
            while let Some(r) = rows.next().map_err(&fail)? {
                let ver = version_of(r.get_ref(n_keys).map_err(&fail)?);
                let full = spent.bytes >= budget.bytes;
                if (full || limit.is_some_and(|l| taken >= l)) && ver > new_wm {
                    return Ok((taken, full));
                }
                taken += 1;
                spent.rows += 1;
                new_wm = new_wm.max(ver);
                let node: i64 = r.get(n_keys + 1).map_err(&fail)?;
                if node != local.0 as i64 {
                    continue;
                }
                let row = clock_change(r, n_keys, &columns).map_err(&fail)?;
                spent.bytes += row.values.iter().map(Value::heap_bytes).sum::<usize>();
                changes.rows.push(row);
            }
            Ok((taken, false))
        };
    let (from_clock, full) = read(scan_sql(meta), &[wm_i, clock_upto], None)?;
    if clock_complete && !full && below_log.is_some() {
        let left = budget.rows.saturating_sub(from_clock).max(1);
        read(log_scan_sql(meta), &[wm_i], Some(left))?;
    }
    Ok((changes, spent, new_wm))
}

/// The version of the capture log's oldest record (none when the log is empty or missing).
fn oldest_logged(conn: &Connection, meta: &TableMeta) -> Result<Option<i64>, SqlError> {
    let q = format!(
        "SELECT ver FROM {} ORDER BY seq LIMIT 1",
        quote_ident(&log_table(&meta.name))
    );
    match conn.prepare_cached(&q) {
        Ok(mut stmt) => stmt
            .query_row([], |r| {
                Ok(i64::try_from(version_of(r.get_ref(0)?)).unwrap_or(i64::MAX))
            })
            .optional()
            .map_err(table_err("reading the capture log", &meta.name)),
        // Capture installed by an older build: no log until the next install.
        Err(e) if is_missing_table(&e) => Ok(None),
        Err(e) => Err(table_err("reading the capture log", &meta.name)(e)),
    }
}

/// The version at which a scan of `budget` clock rows above the watermark stops; rows sharing
/// it are all taken, so the watermark never splits a version. `None`: fewer rows than that.
fn boundary_version(
    conn: &Connection,
    meta: &TableMeta,
    wm: i64,
    budget: usize,
) -> Result<Option<i64>, SqlError> {
    let clock = quote_ident(&clock_table(&meta.name));
    conn.prepare_cached(&format!(
        "SELECT ver FROM {clock} WHERE ver > ?1 ORDER BY ver LIMIT 1 OFFSET ?2"
    ))
    .and_then(|mut s| {
        s.query_row(
            params![wm, i64::try_from(budget).unwrap_or(i64::MAX) - 1],
            |r| Ok(i64::try_from(version_of(r.get_ref(0)?)).unwrap_or(i64::MAX)),
        )
        .optional()
    })
    .map_err(table_err("scanning changes", &meta.name))
}

/// Clock rows between two versions joined to their live row: key, `ver, node, origin,
/// deleted, parked`, whether the row exists, then the table's columns.
fn scan_sql(meta: &TableMeta) -> String {
    let keys_c = aliased_key_cols(meta, "c");
    let join = live_row_join(meta, &keys_c);
    let cols = live_row_columns(meta);
    format!(
        "SELECT {keys}, c.ver, c.node, c.origin, c.deleted, c.parked, t.{k0} IS NOT NULL{sep}{cols} \
         FROM {clock} AS c LEFT JOIN {table} AS t ON {join} \
         WHERE c.ver > ?1 AND c.ver <= ?2 ORDER BY c.ver",
        keys = keys_c.join(", "),
        k0 = quote_ident(&meta.key[0].name),
        sep = if cols.is_empty() { "" } else { ", " },
        cols = cols.join(", "),
        clock = quote_ident(&clock_table(&meta.name)),
        table = quote_ident(&meta.name),
    )
}

/// `t."a" = c."k0" AND …`: the live row (`t`) of a clock or log row's key columns.
fn live_row_join(meta: &TableMeta, keys: &[String]) -> String {
    meta.key
        .iter()
        .zip(keys)
        .map(|(k, c)| format!("t.{} = {c}", quote_ident(&k.name)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `t."col"` for every column of the live row.
fn live_row_columns(meta: &TableMeta) -> Vec<String> {
    meta.columns
        .iter()
        .map(|c| format!("t.{}", quote_ident(&c.name)))
        .collect()
}

/// Each logged key's newest record above a version, in the shape of `scan_sql`'s rows, with the
/// origin the fold will give it (the same `FROM` and origin rule as `cdc::fold`).
fn log_scan_sql(meta: &TableMeta) -> String {
    let l_keys = aliased_key_cols(meta, "l");
    let join_table = live_row_join(meta, &l_keys);
    let cols = live_row_columns(meta);
    format!(
        "SELECT {l_keys}, l.ver, l.node, {FOLDED_ORIGIN}, l.kind = {delete}, NULL, \
         t.{k0} IS NOT NULL{sep}{cols} {newest} \
         LEFT JOIN {table} AS t ON {join_table} \
         WHERE l.ver > ?1 ORDER BY l.ver",
        l_keys = l_keys.join(", "),
        k0 = quote_ident(&meta.key[0].name),
        sep = if cols.is_empty() { "" } else { ", " },
        cols = cols.join(", "),
        delete = LogKind::Delete as i32,
        newest = newest_logged_records(meta),
        table = quote_ident(&meta.name),
    )
}

/// No rows yet, in `meta`'s shape.
pub fn no_changes(meta: &TableMeta) -> TableChanges {
    TableChanges {
        table: meta.name.clone(),
        key_columns: meta.wire_key_columns(),
        columns: meta.column_names(),
        rows: Vec::new(),
    }
}

/// Every clock row of `meta` above version `after`, in version order, within `budget` (a
/// version is never split), as row changes with the node that stamped each: what a merge of
/// another node's database reads (`db::restore`). Also returns the version to read on from,
/// `None` once everything was read. The table's capture log must be folded.
pub fn clock_rows(
    conn: &Connection,
    meta: &TableMeta,
    after: i64,
    budget: Budget,
) -> Result<(TableChanges, Option<i64>), SqlError> {
    let mut changes = no_changes(meta);
    let cut = each_clock_row(conn, meta, after, budget, &mut |row| changes.rows.push(row))?;
    Ok((changes, cut))
}

/// As `clock_rows`, but hands each row to `each` as it is read instead of gathering them: one
/// row in memory at a time, whatever the rows' sizes (digests read every row).
pub fn each_clock_row(
    conn: &Connection,
    meta: &TableMeta,
    after: i64,
    budget: Budget,
    each: &mut dyn FnMut(RowChange),
) -> Result<Option<i64>, SqlError> {
    let fail = table_err("reading the clock", &meta.name);
    let cut = boundary_version(conn, meta, after, budget.rows)?;
    let columns = meta.column_names();
    let mut stmt = conn.prepare_cached(&scan_sql(meta)).map_err(&fail)?;
    let mut rows = stmt
        .query(params![after, cut.unwrap_or(i64::MAX)])
        .map_err(&fail)?;
    let (mut bytes, mut last) = (0, after);
    while let Some(r) = rows.next().map_err(&fail)? {
        let ver = i64::try_from(version_of(r.get_ref(meta.key.len()).map_err(&fail)?))
            .unwrap_or(i64::MAX);
        // Past the byte budget, stop where the version changes: read on from `last`.
        if bytes >= budget.bytes && ver > last {
            return Ok(Some(last));
        }
        last = ver;
        let row = clock_change(r, meta.key.len(), &columns).map_err(&fail)?;
        bytes += row.values.iter().map(Value::heap_bytes).sum::<usize>();
        each(row);
    }
    Ok(cut)
}

/// The row change a clock row of `scan_sql` describes, stamped by the row's `node`.
fn clock_change(
    r: &rusqlite::Row<'_>,
    n_keys: usize,
    columns: &[String],
) -> rusqlite::Result<RowChange> {
    let key: Vec<Value> = (0..n_keys).map(|i| r.get(i)).collect::<Result<_, _>>()?;
    let ver = version_of(r.get_ref(n_keys)?);
    let node: i64 = r.get(n_keys + 1)?;
    let origin: i64 = r.get(n_keys + 2)?;
    let mut deleted = r.get::<_, i64>(n_keys + 3)? != 0;
    let parked: Option<Vec<u8>> = r.get(n_keys + 4)?;
    let live: bool = r.get(n_keys + 5)?;
    let mut values = Vec::new();
    if !deleted {
        if live {
            values = (0..columns.len())
                .map(|i| r.get(n_keys + 6 + i))
                .collect::<Result<_, _>>()?;
        } else if let Some(p) = parked.as_deref().and_then(ParkedRow::decode) {
            values = p.values_for(columns);
        } else {
            // A stamped live key without a row cannot happen inside one read transaction; if
            // it does, the row is gone, and a tombstone says so.
            deleted = true;
        }
    }
    Ok(RowChange {
        version: ver,
        node: NodeId(node as u64),
        origin: NodeId(origin as u64),
        deleted,
        key,
        values,
    })
}

/// Most pending rows counted per table (the pending gauge saturates there).
pub const PENDING_CAP: u64 = 100_000;

/// This node's changes above `wm` not yet published, folded or still in the capture log
/// (saturating at [`PENDING_CAP`]).
pub fn count_local_above(
    conn: &Connection,
    meta: &TableMeta,
    local: NodeId,
    wm: u64,
) -> Result<u64, SqlError> {
    // Capped: the count runs every publisher round, and an uncapped count over a large backlog
    // would make draining it quadratic. Callers only need "more to do" and a gauge.
    let q = format!(
        "SELECT count(*) FROM (SELECT 1 FROM {} WHERE ver > ?1 AND node = ?2 LIMIT {PENDING_CAP})",
        quote_ident(&clock_table(&meta.name))
    );
    let n: i64 = conn
        .prepare_cached(&q)
        .and_then(|mut s| {
            s.query_row(
                params![i64::try_from(wm).unwrap_or(i64::MAX), local.0 as i64],
                |r| r.get(0),
            )
        })
        .map_err(table_err("counting pending changes", &meta.name))?;
    let logged = if oldest_logged(conn, meta)?.is_some() {
        let q = format!(
            "SELECT count(*) FROM (SELECT 1 FROM {} WHERE ver > ?1 LIMIT {PENDING_CAP})",
            quote_ident(&log_table(&meta.name))
        );
        conn.prepare_cached(&q)
            .and_then(|mut s| {
                s.query_row(params![i64::try_from(wm).unwrap_or(i64::MAX)], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .map_err(table_err("counting pending changes", &meta.name))?
    } else {
        0
    };
    Ok((n + logged).min(PENDING_CAP as i64) as u64)
}

/// Raises watermarks (never lowers them), unless the schema changed since the scan that found
/// them (`scanned_at`): capture may have been re-installed meanwhile, with baselined rows below
/// them. Skipping is safe: unrecorded marks only mean rows are published again.
pub fn mark_published(
    conn: &Connection,
    marks: &[(String, u64)],
    scanned_at: i64,
) -> Result<(), SqlError> {
    let now: i64 = conn
        .query_row("PRAGMA schema_version", [], |r| r.get(0))
        .map_err(sql_err("reading schema_version"))?;
    if now != scanned_at {
        return Ok(());
    }
    let q = format!(
        "INSERT INTO {}(tbl, ver) VALUES(?1, ?2) \
         ON CONFLICT(tbl) DO UPDATE SET ver = MAX(ver, excluded.ver)",
        quote_ident(PUBLISHED)
    );
    for (table, ver) in marks {
        conn.prepare_cached(&q)
            .and_then(|mut s| s.execute(params![table, i64::try_from(*ver).unwrap_or(i64::MAX)]))
            .map_err(table_err("recording the watermark", table))?;
    }
    Ok(())
}
