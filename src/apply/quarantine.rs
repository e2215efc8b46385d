//! The quarantine: remote row changes whose version lies too far in the future to be true (a
//! node's clock years ahead, a damaged or hostile message). Applying one would make its key
//! unchangeable by any honest write for as long as the version is ahead, and push this node's
//! clock there; dropping it would lose a write somebody made. So it is held here, counted and
//! shown, until an operator applies it (`release`) or discards it, explicitly.

use rusqlite::{Connection, OptionalExtension, params};

use crate::change::{RowChange, TableChanges};
use crate::hlc::now_ms;
use crate::sql::internal::{QUARANTINE, table_exists};
use crate::sql::value::key_json;
use crate::sql::{SqlError, quote_ident, sql_err, table_err};

/// One held change, as the dashboard and `/health` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Quarantined {
    pub id: i64,
    pub at_ms: i64,
    pub table: String,
    /// The key as JSON.
    pub key: String,
    pub version: u64,
    pub node: u64,
}

/// Holds one row change of `changes` (in the caller's transaction).
pub fn hold(conn: &Connection, changes: &TableChanges, row: &RowChange) -> Result<(), SqlError> {
    let single = TableChanges {
        rows: vec![row.clone()],
        ..changes.header()
    };
    let mut blob = Vec::new();
    ciborium::into_writer(&single, &mut blob)
        .map_err(|e| sql_err("encoding a quarantined change")(to_sqlite(e.to_string())))?;
    conn.prepare_cached(&format!(
        "INSERT INTO {}(at_ms, tbl, key, version, node, change) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
        quote_ident(QUARANTINE)
    ))
    .and_then(|mut s| {
        s.execute(params![
            now_ms() as i64,
            changes.table,
            key_json(&row.key),
            i64::try_from(row.version).unwrap_or(i64::MAX),
            row.node.0 as i64,
            blob
        ])
    })
    .map_err(table_err("quarantining a change", &changes.table))?;
    tracing::warn!(table = %changes.table, version = row.version, node = %row.node, "a change from the future was quarantined");
    Ok(())
}

/// The held changes, oldest first, at most `limit`.
pub fn list(conn: &Connection, limit: u64) -> Result<Vec<Quarantined>, SqlError> {
    let fail = sql_err("reading the quarantine");
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT id, at_ms, tbl, key, version, node FROM {} ORDER BY id LIMIT ?1",
            quote_ident(QUARANTINE)
        ))
        .map_err(&fail)?;
    let rows = stmt
        .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(Quarantined {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                table: r.get(2)?,
                key: r.get(3)?,
                version: r.get::<_, i64>(4)?.max(0) as u64,
                node: r.get::<_, i64>(5)?.max(0) as u64,
            })
        })
        .map_err(&fail)?;
    rows.collect::<Result<_, _>>().map_err(&fail)
}

/// How many changes are held.
pub fn count(conn: &Connection) -> Result<u64, SqlError> {
    conn.query_row(
        &format!("SELECT count(*) FROM {}", quote_ident(QUARANTINE)),
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
    .map_err(sql_err("counting the quarantine"))
}

/// The held change `id` (`None` when there is none, or it cannot be read back).
pub fn load(conn: &Connection, id: i64) -> Result<Option<TableChanges>, SqlError> {
    let blob: Option<Vec<u8>> = conn
        .query_row(
            &format!(
                "SELECT change FROM {} WHERE id = ?1",
                quote_ident(QUARANTINE)
            ),
            [id],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql_err("reading a quarantined change"))?;
    Ok(blob.and_then(|b| ciborium::from_reader(b.as_slice()).ok()))
}

/// Forgets the held change `id`; returns whether there was one.
pub fn remove(conn: &Connection, id: i64) -> Result<bool, SqlError> {
    conn.execute(
        &format!("DELETE FROM {} WHERE id = ?1", quote_ident(QUARANTINE)),
        [id],
    )
    .map(|n| n > 0)
    .map_err(sql_err("removing a quarantined change"))
}

/// What `adopt` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Changes `dest` holds now and did not before.
    pub added: u64,
    /// Changes `dest` held already.
    pub already: u64,
}

/// Holds in `dest` every change `source` holds that `dest` does not hold yet (the same change:
/// table, key, version, node and the change itself, since versions past `i64::MAX` are stored
/// saturated); says how many it added and how many `dest` held already. A snapshot carries its
/// taker's held changes: they lie below its floors, so a node that restores it must hold them
/// too, and decide on them as every other node does (`db::restore`, `db::merge`). Runs in the
/// caller's transaction, if any; a `source` without a quarantine (an older build's file) adds
/// nothing.
pub fn adopt(dest: &Connection, source: &Connection) -> Result<Adopted, SqlError> {
    let fail = sql_err("adopting held changes");
    let exists = table_exists(source, QUARANTINE).map_err(&fail)?;
    let mut adopted = Adopted::default();
    if !exists {
        return Ok(adopted);
    }
    let table = quote_ident(QUARANTINE);
    let mut read = source
        .prepare(&format!(
            "SELECT at_ms, tbl, key, version, node, change FROM {table} ORDER BY id"
        ))
        .map_err(&fail)?;
    let mut insert = dest
        .prepare(&format!(
            "INSERT INTO {table}(at_ms, tbl, key, version, node, change) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS (SELECT 1 FROM {table} \
             WHERE tbl = ?2 AND key = ?3 AND version = ?4 AND node = ?5 AND change = ?6)"
        ))
        .map_err(&fail)?;
    let mut rows = read.query([]).map_err(&fail)?;
    while let Some(row) = rows.next().map_err(&fail)? {
        let values: Vec<rusqlite::types::Value> = (0..6)
            .map(|i| row.get(i))
            .collect::<Result<_, _>>()
            .map_err(&fail)?;
        match insert
            .execute(rusqlite::params_from_iter(values))
            .map_err(&fail)?
        {
            0 => adopted.already += 1,
            _ => adopted.added += 1,
        }
    }
    Ok(adopted)
}

fn to_sqlite(message: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(message.into())
}
