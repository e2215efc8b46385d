//! Change messages as a peer this cluster does not know (node 77) would publish them, for the
//! tests that feed the consumers by hand.

use harmonylite::change::{ChangeBatch, RowChange, TableChanges, Value};
use harmonylite::ids::NodeId;

use super::Node;

/// A batch of one row (`id` 1, `column` = `value`) of `table` from node 77, under `node`'s
/// schema.
pub fn foreign_row(node: &Node, table: &str, column: &str, value: Value) -> ChangeBatch {
    ChangeBatch {
        origin: NodeId(77),
        schema_hash: node.status.schema_hash(),
        tables: vec![TableChanges {
            table: table.into(),
            key_columns: vec!["id".into()],
            columns: vec!["id".into(), column.into()],
            rows: vec![RowChange {
                version: 1 << 40,
                node: NodeId(77),
                origin: NodeId(77),
                deleted: false,
                key: vec![Value::Integer(1)],
                values: vec![Value::Integer(1), value],
            }],
        }],
    }
}
