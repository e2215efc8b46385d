//! Baselining: giving a clock row to rows that exist without one (capture installed over an
//! existing table: first install, after `-cleanup`, a table recreated or rebuilt while capture
//! was off), and tombstoning clock rows whose table row vanished meanwhile.
//!
//! The ranking rule (issue 19, `docs/decisions/006-positions-and-recovery.md`): a baselined row
//! is not a write anyone made now; its value may be older than changes other nodes made since,
//! or belong to a key the others deleted. So baselined rows get the **lowest** versions
//! (`1..`, below [`BASELINE_CEILING`]), far below any trigger stamp (the wall clock in ms ×
//! 65536). On other nodes they fill keys nobody else holds, and lose to every real write and
//! every tombstone. The same node's later writes stamp the wall clock as always.
//!
//! A row that vanished while capture was off was deleted by the application at some unknown
//! time after its last stamp; its tombstone gets a fresh stamp like any local delete.
//!
//! Low versions sit below the publisher's watermark, so the table's watermark is lowered to
//! just under the first baseline version: the publisher then sends the baselined rows (and
//! re-sends the table's other local rows, which is harmless under last-writer-wins).

use rusqlite::{Transaction, params};

use crate::catalog::discover::TableMeta;
use crate::cdc::triggers::{clock_table, key_col, key_col_list, version_expr};
use crate::change::Value;
use crate::sql::internal::PUBLISHED;
use crate::sql::quote_ident;
use crate::sql::{SqlError, table_err};

/// Baseline versions stay below this; trigger stamps are the wall clock in ms × 65536, about
/// 2^56 today, so a baselined row can never outrank a real write.
pub const BASELINE_CEILING: i64 = 1 << 40;

/// Stamps every row without a clock row, each with its own low version, and, when the clock
/// existed before (`orphans`), tombstones clock rows whose table row is gone. Returns the rows
/// stamped.
pub fn baseline(
    tx: &Transaction<'_>,
    meta: &TableMeta,
    local: crate::ids::NodeId,
    orphans: bool,
) -> Result<u64, SqlError> {
    let keys = KeySql::new(meta);
    let first = first_baseline_version(tx, meta)?;
    let stamped = stamp_unclocked(tx, meta, &keys, first, local.0 as i64)?;
    if stamped > 0 {
        lower_watermark(tx, &meta.name, first - 1)?;
    }
    if orphans {
        tombstone_vanished(tx, meta, &keys, local.0 as i64)?;
    }
    Ok(stamped)
}

/// The SQL fragments naming a table's key columns and its clock's key columns.
struct KeySql {
    clock: String,
    table: String,
    /// `t."a", t."b"`
    table_keys: Vec<String>,
    /// `c."k0", c."k1"`
    clock_keys: Vec<String>,
    /// `c."k0" = t."a" AND …`
    same_key: String,
}

impl KeySql {
    fn new(meta: &TableMeta) -> KeySql {
        let table_keys: Vec<String> = meta
            .key
            .iter()
            .map(|k| format!("t.{}", quote_ident(&k.name)))
            .collect();
        let clock_keys: Vec<String> = (0..meta.key.len())
            .map(|i| format!("c.{}", quote_ident(&key_col(i))))
            .collect();
        let same_key = clock_keys
            .iter()
            .zip(&table_keys)
            .map(|(c, t)| format!("{c} = {t}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        KeySql {
            clock: quote_ident(&clock_table(&meta.name)),
            table: quote_ident(&meta.name),
            table_keys,
            clock_keys,
            same_key,
        }
    }
}

/// One above the highest baseline version already in the clock, so versions stay distinct
/// (the publisher's watermark relies on that).
fn first_baseline_version(tx: &Transaction<'_>, meta: &TableMeta) -> Result<i64, SqlError> {
    let top: i64 = tx
        .query_row(
            &format!(
                "SELECT COALESCE(MAX(ver), 0) FROM {} WHERE ver < ?1",
                quote_ident(&clock_table(&meta.name))
            ),
            [BASELINE_CEILING],
            |r| r.get(0),
        )
        .map_err(table_err("reading the baseline versions", &meta.name))?;
    Ok(top + 1)
}

/// Inserts a clock row for every table row without one, versions `first`, `first + 1`, …
fn stamp_unclocked(
    tx: &Transaction<'_>,
    meta: &TableMeta,
    keys: &KeySql,
    first: i64,
    node: i64,
) -> Result<u64, SqlError> {
    let KeySql {
        clock,
        table,
        same_key,
        ..
    } = keys;
    let mut filter = format!("NOT EXISTS (SELECT 1 FROM {clock} AS c WHERE {same_key})");
    for (k, t) in meta.key.iter().zip(&keys.table_keys) {
        if k.nullable {
            filter.push_str(&format!(" AND {t} IS NOT NULL"));
        }
    }
    let stamped = tx
        .execute(
            &format!(
                "INSERT INTO {clock}({cols}, ver, node, origin, deleted) \
                 SELECT {keys_t}, ?1 + ROW_NUMBER() OVER () - 1, ?2, ?2, 0 FROM {table} AS t \
                 WHERE {filter}",
                cols = key_col_list(meta),
                keys_t = keys.table_keys.join(", "),
            ),
            params![first, node],
        )
        .map_err(table_err("baselining existing rows", &meta.name))?;
    if first.saturating_add(stamped as i64) >= BASELINE_CEILING {
        tracing::warn!(table = %meta.name, "baseline versions reached their ceiling");
    }
    Ok(stamped as u64)
}

/// Lets the publisher see rows stamped below its watermark.
fn lower_watermark(tx: &Transaction<'_>, table: &str, below: i64) -> Result<(), SqlError> {
    tx.execute(
        &format!(
            "UPDATE {} SET ver = MIN(ver, ?2) WHERE tbl = ?1",
            quote_ident(PUBLISHED)
        ),
        params![table, below.max(0)],
    )
    .map_err(table_err(
        "lowering the watermark for baselined rows",
        table,
    ))?;
    Ok(())
}

/// Tombstones (with a fresh stamp each) the live clock rows whose table row is gone.
fn tombstone_vanished(
    tx: &Transaction<'_>,
    meta: &TableMeta,
    keys: &KeySql,
    node: i64,
) -> Result<(), SqlError> {
    let fail = table_err("tombstoning vanished rows", &meta.name);
    let KeySql {
        clock,
        table,
        same_key,
        ..
    } = keys;
    let q = format!(
        "SELECT {keys_c} FROM {clock} AS c WHERE c.deleted = 0 AND c.parked IS NULL \
         AND NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {same_key})",
        keys_c = keys.clock_keys.join(", ")
    );
    let gone: Vec<Vec<Value>> = {
        let mut stmt = tx.prepare(&q).map_err(&fail)?;
        let n = meta.key.len();
        let rows = stmt
            .query_map([], |r| {
                (0..n).map(|i| r.get(i)).collect::<Result<Vec<_>, _>>()
            })
            .map_err(&fail)?;
        rows.collect::<Result<_, _>>().map_err(&fail)?
    };
    let where_key: Vec<String> = (0..meta.key.len())
        .map(|i| format!("{} = ?{}", quote_ident(&key_col(i)), i + 3))
        .collect();
    let update = format!(
        "UPDATE {clock} SET ver = ?1, node = ?2, deleted = 1 WHERE {}",
        where_key.join(" AND ")
    );
    let next_version = format!("SELECT {}", version_expr(&meta.name));
    for key in gone {
        let ver: i64 = tx
            .query_row(&next_version, [], |r| r.get(0))
            .map_err(&fail)?;
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&ver, &node];
        args.extend(key.iter().map(|v| v as &dyn rusqlite::ToSql));
        tx.execute(&update, args.as_slice()).map_err(&fail)?;
    }
    Ok(())
}
