//! Conversions between wire `Value`s and SQLite values, and the JSON form of rows used by the
//! conflict journal.

use rusqlite::ToSql;
use rusqlite::types::{FromSql, FromSqlResult, ToSqlOutput, ValueRef};

use crate::change::Value;

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        // Text is bound as raw bytes: rusqlite does not validate UTF-8 here, so invalid text
        // round-trips byte for byte.
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl FromSql for Value {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        Ok(from_ref(v))
    }
}

/// A clock version as stored: an integer, or a REAL a pre-2 trigger could write when its
/// arithmetic overflowed (clamped into the integers, so it still orders as the largest).
pub fn version_of(v: ValueRef<'_>) -> u64 {
    match v {
        ValueRef::Integer(i) => i.max(0) as u64,
        // `as` saturates: NaN becomes 0, anything past the integers their end.
        ValueRef::Real(f) => (f as i64).max(0) as u64,
        _ => 0,
    }
}

/// Copies one SQLite value.
pub fn from_ref(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(t.to_vec()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// JSON for an operator: text as a string when it is UTF-8, otherwise tagged hex.
pub fn value_json(v: &Value) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => json!(i),
        Value::Real(f) => json!(f),
        Value::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => json!(s),
            Err(_) => json!({ "text_hex": hex::encode(t) }),
        },
        Value::Blob(b) => json!({ "blob_hex": hex::encode(b) }),
    }
}

/// A JSON array of key values.
pub fn key_json(key: &[Value]) -> String {
    serde_json::Value::Array(key.iter().map(value_json).collect()).to_string()
}

/// A JSON object `{column: value}`.
pub fn row_json(columns: &[String], values: &[Value]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = columns
        .iter()
        .cloned()
        .zip(values.iter().map(value_json))
        .collect();
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_forms() {
        assert_eq!(
            key_json(&[Value::Integer(1), Value::text("a")]),
            r#"[1,"a"]"#
        );
        assert_eq!(
            row_json(
                &["t".into(), "b".into()],
                &[Value::Text(vec![0xff]), Value::Blob(vec![1])]
            ),
            r#"{"b":{"blob_hex":"01"},"t":{"text_hex":"ff"}}"#
        );
    }

    #[test]
    fn binds_raw_text_bytes() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let raw = Value::Text(vec![b'a', 0, 0xff, 0xfe]);
        let (back, ty): (Value, String) = conn
            .query_row("SELECT ?1, typeof(?1)", [&raw], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(back, raw);
        assert_eq!(ty, "text");
    }
}
