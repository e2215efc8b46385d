//! Repairs the consistency digests call for, beside the applier's strict last-writer-wins
//! (`docs/decisions/015-consistency-digests.md`). Neither invents a version for data nobody
//! wrote:
//! - **adoption**: rows with no clock row (and no capture-log record) were written with capture
//!   off. They are kept, not deleted: a no-op `UPDATE` through the capture triggers records
//!   each as a new local write of this node, which is then published like any other.
//! - **the equal-version rule**: where this node holds a key at the same `(version, node)` as
//!   the winning content but different content (changed, or deleted, behind capture's back),
//!   the winning content is written under that same version. Who wins is decided by the caller
//!   (`consistency::repair`): the content most nodes hold at that version, a tie going to the
//!   smaller content hash, so every node reaches the same answer in any order.
//!
//! Every repair is journaled in the conflict journal (kinds `repair_adopted`,
//! `repair_equal_version`).

use rusqlite::Connection;

use super::ApplyReport;
use super::conflicts::{Journal, journal};
use super::plan::{ClockWrite, TablePlan};
use crate::catalog::discover::TableMeta;
use crate::cdc::digest::unclocked_where;
use crate::change::TableChanges;
use crate::sql::internal::GUARD;
use crate::sql::value::row_json;
use crate::sql::{SqlError, quote_ident, table_err};

/// Records every row of `meta` that has a key but neither a clock row nor a capture-log record
/// as a new write of this node (through the capture triggers); returns how many rows.
pub fn adopt_unclocked(conn: &Connection, meta: &TableMeta) -> Result<u64, SqlError> {
    let fail = table_err("adopting rows written with capture off", &meta.name);
    let table = quote_ident(&meta.name);
    let k0 = quote_ident(&meta.key[0].name);
    let sql = format!(
        "UPDATE {table} SET {k0} = {k0} WHERE {}",
        unclocked_where(conn, meta, &table)?
    );
    // Capture's triggers record the adoption: the applier may have turned them off here.
    super::run_triggers(conn, true)?;
    let adopted = conn.execute(&sql, []).map_err(&fail)? as u64;
    if adopted > 0 {
        let mut j = Journal::new(&meta.name, "repair_adopted", &[]);
        j.detail = Some(format!(
            "{adopted} rows without a clock row (written with capture off) adopted as this \
             node's writes"
        ));
        journal(conn, &j, &mut ApplyReport::default())?;
    }
    Ok(adopted)
}

/// Writes each row of `winners` whose `(version, node)` this node holds with other content,
/// under the capture guard (the repair is not a new write); returns how many rows changed.
pub fn settle_equal_versions(
    conn: &Connection,
    meta: &TableMeta,
    winners: &TableChanges,
) -> Result<u64, SqlError> {
    let sql = |what: &'static str| move |source| SqlError::Sqlite { what, source };
    // Content is compared column by column: the rows must come in this table's column order
    // (the peers' digests agree on the schema when they are compared at all).
    if winners.columns != meta.column_names() {
        return Err(table_err("repairing rows", &meta.name)(
            rusqlite::Error::InvalidParameterName(format!(
                "columns {:?} are not the table's",
                winners.columns
            )),
        ));
    }
    let tx = conn
        .unchecked_transaction()
        .map_err(sql("starting a repair transaction"))?;
    tx.execute(
        &format!("INSERT INTO {} VALUES (1)", quote_ident(GUARD)),
        [],
    )
    .map_err(sql("raising the capture guard"))?;
    crate::cdc::fold::fold_table(&tx, meta)?;
    let plan = TablePlan::new(&tx, meta, &winners.columns);
    let fail = table_err("repairing a row", &meta.name);
    let is_key: Vec<bool> = winners
        .columns
        .iter()
        .map(|c| meta.key.iter().any(|k| k.name.eq_ignore_ascii_case(c)))
        .collect();
    let mut repaired = 0;
    for row in &winners.rows {
        let key = plan.key_of(&row.key, if row.deleted { &[] } else { &row.values });
        let Some(local) = plan.clock_get(&key)? else {
            continue;
        };
        if local.stamp() != (row.version, row.node.0) {
            continue;
        }
        let before = plan.select(&key).map_err(&fail)?;
        // Key columns are left out: an apply never respells a live key (NOCASE, RTRIM), and
        // neither can this repair.
        let same = match (&before, row.deleted) {
            (None, true) => local.deleted,
            (Some(values), false) => !local.deleted && same_content(&is_key, values, &row.values),
            _ => false,
        };
        if same {
            continue;
        }
        if row.deleted {
            plan.delete_row(&key).map_err(&fail)?;
        } else {
            plan.write_row(&key, &row.values).map_err(&fail)?;
        }
        let write = ClockWrite {
            ver: local.ver,
            node: local.node,
            origin: local.origin,
            deleted: row.deleted,
            parked: None,
        };
        plan.clock_put(&key, &write)?;
        let mut j = Journal::new(&meta.name, "repair_equal_version", &key);
        j.winner = Some((row.version, row.node.0));
        j.loser = Some((local.ver, local.node));
        j.winner_row = (!row.deleted).then(|| row_json(&winners.columns, &row.values));
        j.loser_row = before.map(|v| row_json(&winners.columns, &v));
        j.detail = Some(
            "same version, other content: the content most nodes hold at this version wins"
                .to_owned(),
        );
        journal(&tx, &j, &mut ApplyReport::default())?;
        repaired += 1;
    }
    drop(plan);
    tx.execute(&format!("DELETE FROM {}", quote_ident(GUARD)), [])
        .map_err(sql("lowering the capture guard"))?;
    tx.commit().map_err(sql("committing the repair"))?;
    Ok(repaired)
}

/// Whether two rows hold the same values outside the key columns.
fn same_content(is_key: &[bool], a: &[crate::change::Value], b: &[crate::change::Value]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .zip(is_key)
            .all(|((x, y), key)| *key || x == y)
}
