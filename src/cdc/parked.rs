//! The values of a row kept out of its table by a UNIQUE conflict, stored in the clock row's
//! `parked` column (CBOR) until the conflict goes away. See `apply::conflicts`.

use serde::{Deserialize, Serialize};

use crate::change::Value;

/// Column names travel with the values: the table may gain columns while a row is parked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedRow {
    pub columns: Vec<String>,
    pub values: Vec<Value>,
}

impl ParkedRow {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing CBOR into a Vec cannot fail: the writer is infallible and the types are plain.
        ciborium::into_writer(self, &mut out).expect("CBOR encoding into a Vec cannot fail");
        out
    }

    /// `None` for bytes that are not a parked row (never expected; treated as no values).
    pub fn decode(bytes: &[u8]) -> Option<ParkedRow> {
        let row: ParkedRow = ciborium::from_reader(bytes).ok()?;
        (row.columns.len() == row.values.len()).then_some(row)
    }

    /// The values for `columns` (matched case-insensitively), NULL where the row has none.
    pub fn values_for(&self, columns: &[String]) -> Vec<Value> {
        columns
            .iter()
            .map(|c| {
                self.columns
                    .iter()
                    .position(|p| p.eq_ignore_ascii_case(c))
                    .map(|i| self.values[i].clone())
                    .unwrap_or(Value::Null)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mapping() {
        let row = ParkedRow {
            columns: vec!["a".into(), "B".into()],
            values: vec![Value::Integer(1), Value::text("x")],
        };
        let back = ParkedRow::decode(&row.encode()).unwrap();
        assert_eq!(back, row);
        assert_eq!(
            back.values_for(&["b".into(), "c".into()]),
            vec![Value::text("x"), Value::Null]
        );
        assert!(ParkedRow::decode(b"junk").is_none());
    }
}
