//! The change model: one SQLite value, the state of one row at one version, the changes of one
//! table, and the batch one message carries. Capture produces it, the applier consumes it, the
//! wire format (`replication::wire`) moves it; none of them owns it.
//!
//! Deserialising a batch is bounded in memory (`limits`): a hostile or broken message cannot
//! make a node allocate more than the decode budget, whatever its compression ratio.

pub mod limits;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
pub use limits::{DECODE_BUDGET_BYTES, MAX_COLUMNS};

/// One SQLite value. `Text` holds raw bytes because SQLite text may be invalid UTF-8 and must
/// round-trip byte for byte. Variant names are one letter on the wire (CBOR carries them for
/// every value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    #[serde(rename = "n")]
    Null,
    #[serde(rename = "i")]
    Integer(i64),
    #[serde(rename = "r")]
    Real(#[serde(deserialize_with = "real")] f64),
    #[serde(rename = "t")]
    Text(#[serde(with = "serde_bytes")] Vec<u8>),
    #[serde(rename = "b")]
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// A REAL in any CBOR float width: the encoder writes the shortest one that keeps the value
/// (half, single or double precision), and a strict reader of `f64` accepts only double.
fn real<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct Float;
    impl serde::de::Visitor<'_> for Float {
        type Value = f64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a float")
        }
        fn visit_f32<E>(self, v: f32) -> Result<f64, E> {
            Ok(f64::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
    }
    d.deserialize_any(Float)
}

impl Value {
    /// Bytes of a text or blob (0 for the others): what a copy of the value costs.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Value::Text(b) | Value::Blob(b) => b.len(),
            _ => 0,
        }
    }

    /// Byte-exact equality (`Real` compared by bit pattern, so `-0.0 != 0.0`).
    pub fn same_as(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Real(a), Value::Real(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a == b,
        }
    }

    /// Text from a Rust string (tests and callers that build batches by hand).
    pub fn text(s: &str) -> Value {
        Value::Text(s.as_bytes().to_vec())
    }
}

/// The origin of a row change that does not know who first inserted its key (the Go peer's
/// updates and deletes): the applier keeps the local key's origin. Id 0 means "derive it" to
/// the Go peer, so no node moved over from Go has it; a node configured with id 0 would only
/// lose the journal of independent inserts of one key.
pub const UNKNOWN_ORIGIN: NodeId = NodeId(0);

/// The state of one row (identified by its key) at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowChange {
    /// HLC version of this state (`crate::hlc::Hlc`).
    #[serde(rename = "v")]
    pub version: u64,
    /// The node that stamped `version`; the tie-breaker between equal versions.
    #[serde(rename = "n")]
    pub node: NodeId,
    /// The node that first inserted this key (detects independent inserts of one key).
    #[serde(rename = "o")]
    pub origin: NodeId,
    /// A tombstone: the row is deleted at this version.
    #[serde(rename = "d")]
    pub deleted: bool,
    /// Primary-key values in key order (the rowid for tables without a primary key).
    #[serde(rename = "k", deserialize_with = "limits::values")]
    pub key: Vec<Value>,
    /// One value per `TableChanges::columns`; empty when `deleted`.
    #[serde(rename = "c", deserialize_with = "limits::values")]
    pub values: Vec<Value>,
}

/// The changes of one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableChanges {
    #[serde(rename = "t")]
    pub table: String,
    /// Primary-key columns in key order; empty means the table is keyed by rowid.
    #[serde(rename = "k", deserialize_with = "limits::names")]
    pub key_columns: Vec<String>,
    /// The columns `RowChange::values` follow.
    #[serde(rename = "c", deserialize_with = "limits::names")]
    pub columns: Vec<String>,
    #[serde(rename = "r", deserialize_with = "limits::rows")]
    pub rows: Vec<RowChange>,
}

/// What one message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeBatch {
    /// The publishing node.
    #[serde(rename = "o")]
    pub origin: NodeId,
    /// The publisher's schema hash (`crate::catalog::SchemaHash`).
    #[serde(rename = "s")]
    pub schema_hash: String,
    #[serde(rename = "t", deserialize_with = "limits::tables")]
    pub tables: Vec<TableChanges>,
}

impl ChangeBatch {
    /// Number of row changes over all tables.
    pub fn row_count(&self) -> usize {
        self.tables.iter().map(|t| t.rows.len()).sum()
    }

    /// An empty batch with this batch's origin and schema hash.
    pub fn empty_like(&self) -> ChangeBatch {
        ChangeBatch {
            origin: self.origin,
            schema_hash: self.schema_hash.clone(),
            tables: Vec::new(),
        }
    }

    /// Splits off the first `n` rows (in table order) from the rest. A table cut in the middle
    /// appears in both parts with its header.
    pub fn split_at(self, n: usize) -> (ChangeBatch, ChangeBatch) {
        let mut left = self.empty_like();
        let mut right = self.empty_like();
        let mut room = n;
        for mut table in self.tables {
            if room == 0 {
                right.tables.push(table);
            } else if table.rows.len() <= room {
                room -= table.rows.len();
                left.tables.push(table);
            } else {
                let rest = table.rows.split_off(room);
                room = 0;
                right.tables.push(TableChanges {
                    rows: rest,
                    ..table.header()
                });
                left.tables.push(table);
            }
        }
        (left, right)
    }

    /// Splits the batch into batches of at most `per_batch` rows (at least one row each), in
    /// order. An empty batch gives none.
    pub fn split_every(self, per_batch: usize) -> Vec<ChangeBatch> {
        let per_batch = per_batch.max(1);
        let mut out = Vec::with_capacity(self.row_count().div_ceil(per_batch));
        let mut rest = self;
        while rest.row_count() > per_batch {
            let (head, tail) = rest.split_at(per_batch);
            out.push(head);
            rest = tail;
        }
        if rest.row_count() > 0 {
            out.push(rest);
        }
        out
    }
}

impl TableChanges {
    /// The table's name and columns without rows.
    pub fn header(&self) -> TableChanges {
        TableChanges {
            table: self.table.clone(),
            key_columns: self.key_columns.clone(),
            columns: self.columns.clone(),
            rows: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: i64) -> RowChange {
        RowChange {
            version: key as u64,
            node: NodeId(1),
            origin: NodeId(1),
            deleted: false,
            key: vec![Value::Integer(key)],
            values: vec![Value::Integer(key)],
        }
    }

    fn table(name: &str, keys: std::ops::Range<i64>) -> TableChanges {
        TableChanges {
            table: name.into(),
            key_columns: vec!["id".into()],
            columns: vec!["id".into()],
            rows: keys.map(row).collect(),
        }
    }

    fn batch() -> ChangeBatch {
        ChangeBatch {
            origin: NodeId(1),
            schema_hash: "h".into(),
            tables: vec![table("a", 0..3), table("b", 3..8)],
        }
    }

    /// (table, key) of every row, in order.
    fn rows(batches: &[ChangeBatch]) -> Vec<(String, i64)> {
        batches
            .iter()
            .flat_map(|b| &b.tables)
            .flat_map(|t| {
                t.rows.iter().map(|r| match r.key[0] {
                    Value::Integer(k) => (t.table.clone(), k),
                    _ => unreachable!(),
                })
            })
            .collect()
    }

    #[test]
    fn split_at_cuts_a_table_in_the_middle() {
        let (left, right) = batch().split_at(4);
        assert_eq!(left.row_count(), 4);
        assert_eq!(right.row_count(), 4);
        assert_eq!(left.tables.len(), 2, "b is cut: its first row goes left");
        assert_eq!(right.tables.len(), 1);
        assert_eq!(right.tables[0].columns, vec!["id".to_owned()]);
        assert_eq!(right.schema_hash, "h");
        assert_eq!(rows(&[left, right]), rows(&[batch()]));
    }

    #[test]
    fn split_at_edges() {
        let (left, right) = batch().split_at(0);
        assert_eq!((left.row_count(), right.row_count()), (0, 8));
        let (left, right) = batch().split_at(3);
        assert_eq!((left.tables.len(), right.tables.len()), (1, 1));
        let (left, right) = batch().split_at(100);
        assert_eq!((left.row_count(), right.row_count()), (8, 0));
    }

    #[test]
    fn split_every_keeps_order_and_sizes() {
        for per in 1..10 {
            let parts = batch().split_every(per);
            assert_eq!(parts.len(), 8usize.div_ceil(per), "per {per}");
            assert!(parts.iter().all(|p| (1..=per).contains(&p.row_count())));
            assert!(
                parts
                    .iter()
                    .all(|p| p.tables.iter().all(|t| !t.rows.is_empty()))
            );
            assert_eq!(rows(&parts), rows(&[batch()]), "per {per}");
        }
        assert!(batch().empty_like().split_every(3).is_empty());
        assert_eq!(batch().split_every(0).len(), 8, "0 means one row each");
    }
}
