//! The application schema the writers use, and the one canonical text form of keys and rows that
//! the ledger and the verifier both compare.
//!
//! Three tables with three key shapes: an `INTEGER PRIMARY KEY` (rowid alias), a `TEXT` key in a
//! `WITHOUT ROWID` table, and a composite key. No UNIQUE secondary index and no AUTOINCREMENT:
//! those have their own documented conflict rules (parking, key collisions) that a plain
//! last-writer-wins ledger does not model. Every write sets every value column, so the ledger
//! knows a row's whole content from the write alone.

use rusqlite::types::{Value, ValueRef};

pub struct Table {
    pub name: &'static str,
    pub keys: &'static [&'static str],
    pub vals: &'static [&'static str],
}

pub const TABLES: [Table; 3] = [
    Table {
        name: "items",
        keys: &["id"],
        vals: &["v", "n"],
    },
    Table {
        name: "docs",
        keys: &["k"],
        vals: &["body", "score"],
    },
    Table {
        name: "pairs",
        keys: &["a", "b"],
        vals: &["payload", "n"],
    },
];

pub const DDL: &str = "
PRAGMA journal_mode = WAL;
CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT NOT NULL, n INTEGER NOT NULL);
CREATE TABLE docs(k TEXT PRIMARY KEY, body TEXT NOT NULL, score REAL) WITHOUT ROWID;
CREATE TABLE pairs(a INTEGER NOT NULL, b TEXT NOT NULL, payload BLOB, n INTEGER,
                   PRIMARY KEY(a, b));
";

/// Keys every node writes: the contended rows.
pub const CONTENDED: u64 = 12;

/// Where a key comes from: the shared contended range, or a range only one node inserts into.
#[derive(Clone, Copy)]
pub enum KeySpace {
    Contended(u64),
    Private { node: usize, n: u64 },
}

impl Table {
    pub fn key(&self, space: KeySpace) -> Vec<Value> {
        match (self.name, space) {
            ("items", KeySpace::Contended(i)) => vec![Value::Integer(i as i64)],
            ("items", KeySpace::Private { node, n }) => {
                vec![Value::Integer((node as i64 + 1) * 1_000_000_000 + n as i64)]
            }
            ("docs", KeySpace::Contended(i)) => vec![Value::Text(format!("c{i}"))],
            ("docs", KeySpace::Private { node, n }) => vec![Value::Text(format!("p{node}-{n}"))],
            (_, KeySpace::Contended(i)) => {
                vec![Value::Integer((i % 4) as i64), Value::Text(format!("c{i}"))]
            }
            (_, KeySpace::Private { node, n }) => {
                vec![
                    Value::Integer(100 + node as i64),
                    Value::Text(format!("p{n}")),
                ]
            }
        }
    }

    /// The value columns of write number `seq` of node `node`: unique per write, so a row's
    /// content names the write it came from.
    pub fn vals(&self, node: usize, seq: u64) -> Vec<Value> {
        let tag = format!("n{node}s{seq}");
        match self.name {
            "items" => vec![Value::Text(tag), Value::Integer(seq as i64)],
            "docs" => vec![Value::Text(tag), Value::Real(seq as f64 / 8.0)],
            _ => vec![Value::Blob(tag.into_bytes()), Value::Integer(seq as i64)],
        }
    }

    pub fn clock(&self) -> String {
        format!("\"__harmonylite__{}_clock\"", self.name)
    }

    /// The capture log: changes the node's writer has not folded into the clock yet.
    pub fn capture_log(&self) -> String {
        format!("\"__harmonylite__{}_changes\"", self.name)
    }

    /// `"id" = ?1 AND …` for the key columns, parameters from `first`.
    pub fn key_where(&self, first: usize) -> String {
        cond(self.keys, first)
    }

    /// The clock table's key columns are `k0`, `k1`, … (src/cdc/triggers.rs `key_col`).
    pub fn clock_where(&self) -> String {
        let names: Vec<String> = (0..self.keys.len()).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        cond(&refs, 1)
    }
}

fn cond(cols: &[&str], first: usize) -> String {
    cols.iter()
        .enumerate()
        .map(|(i, c)| format!("\"{c}\" = ?{}", first + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// One value, exactly (type and bytes), so `1`, `1.0` and `'1'` never compare equal.
pub fn fmt_value(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(i) => format!("i{i}"),
        ValueRef::Real(r) => format!("r{r}#{:x}", r.to_bits()),
        ValueRef::Text(t) => format!("t{:?}", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!("b{:?}", String::from_utf8_lossy(b)),
    }
}

pub fn fmt_values(vals: &[Value]) -> String {
    vals.iter()
        .map(|v| fmt_value(v.into()))
        .collect::<Vec<_>>()
        .join(",")
}
