//! The schema hash: SHA-256 over the captured tables' normalised shape.
//!
//! Per table (sorted by name): the name, then per column in table order its name, its type
//! affinity (so `INT` and `integer`, `varchar(10)` and `TEXT` hash alike), its NOT NULL flag and
//! its primary-key position. Names are ASCII-lowercased because SQLite matches them that way.
//! Internal, ignored, virtual and `sqlite_*` tables are not part of it.

use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cdc::CdcError;
use crate::cdc::discover::{TableMeta, captured_tables};

/// Hex SHA-256 of the replicated schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct SchemaHash(pub String);

impl std::fmt::Display for SchemaHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The hash of the tables `conn` would capture with `ignore`.
pub fn schema_hash(conn: &Connection, ignore: &[String]) -> Result<SchemaHash, CdcError> {
    let (tables, _) = captured_tables(conn, ignore)?;
    Ok(hash_tables(&tables))
}

/// The hash of already discovered tables.
pub fn hash_tables(tables: &[TableMeta]) -> SchemaHash {
    let mut sorted: Vec<&TableMeta> = tables.iter().collect();
    sorted.sort_by_key(|t| t.name.to_ascii_lowercase());
    let mut h = Sha256::new();
    // Length prefixes keep the encoding unambiguous whatever the names contain.
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(b"harmonylite-schema-v1");
    for t in sorted {
        field(b"table");
        field(t.name.to_ascii_lowercase().as_bytes());
        for c in &t.columns {
            field(c.name.to_ascii_lowercase().as_bytes());
            field(c.affinity.as_str().as_bytes());
            field(&[u8::from(c.not_null)]);
            field(&c.pk.to_be_bytes());
        }
    }
    let digest = h.finalize();
    SchemaHash(digest.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(sql: &str, ignore: &[&str]) -> SchemaHash {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(sql).unwrap();
        let ignore: Vec<String> = ignore.iter().map(|s| s.to_string()).collect();
        schema_hash(&conn, &ignore).unwrap()
    }

    #[test]
    fn equivalent_declarations_hash_alike() {
        let a = hash("create table t(a INT primary key, b varchar(10))", &[]);
        let b = hash(
            r#"CREATE TABLE "t" ( a integer PRIMARY KEY , b TEXT )"#,
            &[],
        );
        assert_eq!(a, b);
        assert_eq!(a.0.len(), 64);
    }

    #[test]
    fn differences_that_matter_change_the_hash() {
        let base = hash("create table t(a int primary key, b text)", &[]);
        for other in [
            "create table t(a int primary key, b blob)",
            "create table t(a int primary key, b text not null)",
            "create table t(a int, b text primary key)",
            "create table t(a int primary key, c text)",
            "create table t(a int primary key, b text, c)",
            "create table u(a int primary key, b text)",
        ] {
            assert_ne!(base, hash(other, &[]), "{other}");
        }
    }

    #[test]
    fn ignores_internal_ignored_and_virtual_tables() {
        let base = hash("create table t(a int primary key)", &[]);
        let noisy = hash(
            r#"create table t(a int primary key);
               create table "__harmonylite__t_clock"(k0);
               create table skipme(x);
               create virtual table f using fts5(body);"#,
            &["skipme"],
        );
        assert_eq!(base, noisy);
    }
}
