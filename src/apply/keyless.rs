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

#[cfg(test)]
mod tests {
    use crate::apply::ApplyWork;
    use crate::apply::tests::Replica;
    use crate::change::{ChangeBatch, RowChange, TableChanges, UNKNOWN_ORIGIN, Value};
    use crate::ids::NodeId;

    const GO: NodeId = NodeId(77);
    /// The version of the one insert below (the Go bridge gives inserts the Go node as origin).
    const INSERT: u64 = (1 << 62) + 1;

    /// A batch in the form the Go bridge produces: whole rows, no key.
    fn keyless(
        table: &str,
        columns: &[&str],
        values: Vec<Value>,
        deleted: bool,
        version: u64,
    ) -> ChangeBatch {
        ChangeBatch {
            origin: GO,
            schema_hash: String::new(),
            tables: vec![TableChanges {
                table: table.into(),
                key_columns: Vec::new(),
                columns: columns.iter().map(|c| c.to_string()).collect(),
                rows: vec![RowChange {
                    version,
                    node: GO,
                    origin: if deleted || version != INSERT {
                        UNKNOWN_ORIGIN
                    } else {
                        GO
                    },
                    deleted,
                    key: Vec::new(),
                    values,
                }],
            }],
        }
    }

    fn apply(r: &mut Replica, batch: ChangeBatch) -> crate::apply::ApplyReport {
        let work = ApplyWork {
            batches: vec![batch],
            positions: Vec::new(),
            horizon_ms: None,
        };
        r.applier.apply(&r.conn, &work).unwrap()
    }

    fn origin(r: &Replica, b: i64) -> i64 {
        r.conn
            .query_row(
                "SELECT origin FROM __harmonylite__t_clock WHERE k0 = ?1",
                [b],
                |row| row.get(0),
            )
            .unwrap()
    }

    #[test]
    fn whole_rows_find_their_key_and_keep_the_local_origin() {
        let mut r = Replica::new(
            1,
            "CREATE TABLE t(a TEXT, b INTEGER, v TEXT, PRIMARY KEY(b, a));
                                      CREATE TABLE plain(x TEXT);",
        );
        r.exec("INSERT INTO t VALUES ('x', 1, 'local')");
        let now = 1u64 << 62;
        // An update (origin unknown), columns in another order than the table's.
        let up = keyless(
            "t",
            &["v", "A", "b"],
            vec![Value::text("go"), Value::text("x"), Value::Integer(1)],
            false,
            now,
        );
        assert_eq!(apply(&mut r, up).applied, 1);
        assert_eq!(r.content("t").len(), 1);
        assert_eq!(origin(&r, 1), 1, "the key's origin stays the local node");
        assert_eq!(
            r.conflicts("key_collision"),
            0,
            "an update is no independent insert"
        );
        // An insert of a new key: the Go node is its origin.
        let ins = keyless(
            "t",
            &["a", "b", "v"],
            vec![Value::text("y"), Value::Integer(2), Value::text("new")],
            false,
            INSERT,
        );
        assert_eq!(apply(&mut r, ins).applied, 1);
        assert_eq!(origin(&r, 2), 77);
        // A delete carries the deleted row; it becomes a tombstone of the key.
        let del = keyless(
            "t",
            &["a", "b", "v"],
            vec![Value::text("x"), Value::Integer(1), Value::text("go")],
            true,
            now + 2,
        );
        assert_eq!(apply(&mut r, del).applied, 1);
        assert_eq!(r.content("t").len(), 1);
        // Without the key columns, or on a table keyed by rowid: journaled, never guessed.
        let partial = keyless(
            "t",
            &["a", "v"],
            vec![Value::text("z"), Value::text("?")],
            false,
            now + 4,
        );
        assert_eq!(apply(&mut r, partial).errors, 1);
        let rowid = keyless("plain", &["x"], vec![Value::text("?")], false, now + 6);
        assert_eq!(apply(&mut r, rowid).errors, 1);
        assert_eq!(r.conflicts("apply_error"), 2);
        assert_eq!(r.content("t").len(), 1);
    }
}
