//! Row changes that arrive without their key (the Go peer's: it sends whole rows, and which
//! columns form the key is known only here). Such a table's rows all have an empty `key`; the
//! key is taken from the values by the local table's key columns, and a tombstone's values (the
//! deleted row) are dropped once the key is out. Our own wire format never produces an empty
//! key (`replication::wire` refuses one), so nothing else takes this path.

use crate::catalog::discover::TableMeta;
use crate::change::{RowChange, TableChanges};

/// Whether `changes` is in the key-less form.
pub fn is_keyless(changes: &TableChanges) -> bool {
    changes.key_columns.is_empty() && changes.rows.iter().all(|r| r.key.is_empty())
}

/// `changes` with each row's key filled in from its values; why not, when the local table has
/// no key columns in the values (a table keyed by rowid: the Go peer sends no rowid).
pub fn resolve(meta: &TableMeta, changes: &TableChanges) -> Result<TableChanges, String> {
    if meta.rowid_key {
        return Err("the table has no primary key and the change carries no rowid".to_owned());
    }
    let sources = meta
        .key
        .iter()
        .map(|k| {
            changes
                .columns
                .iter()
                .position(|c| c.eq_ignore_ascii_case(&k.name))
                .ok_or_else(|| format!("key column {} is not in the change", k.name))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let rows = changes
        .rows
        .iter()
        .map(|r| {
            if r.values.len() != changes.columns.len() {
                return Err(format!(
                    "row has {} values for {} columns",
                    r.values.len(),
                    changes.columns.len()
                ));
            }
            Ok(RowChange {
                key: sources.iter().map(|&i| r.values[i].clone()).collect(),
                values: if r.deleted {
                    Vec::new()
                } else {
                    r.values.clone()
                },
                ..r.clone()
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(TableChanges {
        table: changes.table.clone(),
        key_columns: meta.wire_key_columns(),
        columns: changes.columns.clone(),
        rows,
    })
}
