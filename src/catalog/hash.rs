//! The schema hash: SHA-256 over the captured tables' normalised shape.
//!
//! Per table (sorted by name): the name, then per column (sorted by name) its name, its type
//! affinity (so `INT` and `integer`, `varchar(10)` and `TEXT` hash alike), its NOT NULL flag and
//! its primary-key position. Names are ASCII-lowercased because SQLite matches them that way.
//! Columns are sorted because rows travel with column names and are applied by name: a table
//! created with `email` in the middle and one that got it through `ADD COLUMN` are compatible.
//! Internal, ignored, virtual and `sqlite_*` tables, defaults, CHECKs and indexes are not part
//! of it: none of them changes what a message must carry.

use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalog::discover::{ColumnMeta, TableMeta, captured_tables};
use crate::sql::SqlError;

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
pub fn schema_hash(conn: &Connection, ignore: &[String]) -> Result<SchemaHash, SqlError> {
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
        let mut columns: Vec<(String, &ColumnMeta)> = t
            .columns
            .iter()
            .map(|c| (c.name.to_ascii_lowercase(), c))
            .collect();
        columns.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, c) in columns {
            field(name.as_bytes());
            field(c.affinity.as_str().as_bytes());
            field(&[u8::from(c.not_null)]);
            field(&c.pk.to_be_bytes());
        }
    }
    let digest = h.finalize();
    SchemaHash(hex::encode(digest))
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
        // Column order, case, whitespace, defaults, CHECKs, indexes and the order tables were
        // created in do not matter.
        let c = hash(
            "create table u(x); create table T(B Text default 'x' check (length(b) < 99), \
             A int primary key); create index i on t(b);",
            &[],
        );
        let d = hash(
            "create table t(a int primary key, b text); create table u(x);",
            &[],
        );
        assert_eq!(c, d);
    }

    const EXPECTED_FIXED: &str = "db342d20b0a4ededd4c27e2e5a8fe9ef377374de1b8ad85ed71225e88039e983";

    #[test]
    fn hash_is_stable_across_runs() {
        // A fixed value: a change of the encoding changes every node's hash at upgrade time,
        // which pauses mixed clusters; it must be deliberate.
        let h = hash(
            "create table t(a integer primary key, b text not null)",
            &[],
        );
        assert_eq!(
            h,
            hash(
                "CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT NOT NULL)",
                &[]
            )
        );
        assert_eq!(h.0, EXPECTED_FIXED);
    }

    #[test]
    fn added_column_matches_a_table_created_with_it() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("create table t(id integer primary key, name text)")
            .unwrap();
        let before = schema_hash(&conn, &[]).unwrap();
        conn.execute_batch("alter table t add column email text")
            .unwrap();
        let after = schema_hash(&conn, &[]).unwrap();
        assert_ne!(before, after);
        assert_eq!(
            after,
            hash(
                "create table t(id integer primary key, email text, name text)",
                &[]
            )
        );
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
            "create table t(a int, b text, primary key (a, b))",
            "create table t(a int primary key, b text); create table v(x)",
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
