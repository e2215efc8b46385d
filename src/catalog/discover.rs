//! Which tables are captured, and what we need to know about each (columns, key, unique
//! indexes). Reads `sqlite_schema` and `PRAGMA table_info`/`index_list`/`index_xinfo` as
//! statements (never the `pragma_*` table-valued functions, which old engines lack).

use rusqlite::Connection;

use crate::sql::internal::is_internal_name;
use crate::sql::quote_ident;
use crate::sql::{SqlError, table_err};

/// SQLite type affinity (datatype3 §3.1), the normal form of a declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    /// The affinity SQLite derives from a declared column type.
    pub fn of_declared(decl: &str) -> Affinity {
        let d = decl.to_ascii_uppercase();
        if d.contains("INT") {
            Affinity::Integer
        } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
            Affinity::Text
        } else if d.contains("BLOB") || d.trim().is_empty() {
            Affinity::Blob
        } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }

    /// A declared type that has exactly this affinity.
    pub fn as_str(self) -> &'static str {
        match self {
            Affinity::Integer => "INTEGER",
            Affinity::Text => "TEXT",
            Affinity::Blob => "BLOB",
            Affinity::Real => "REAL",
            Affinity::Numeric => "NUMERIC",
        }
    }
}

/// One column of a captured table (generated columns are not listed: they are never written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMeta {
    pub name: String,
    pub affinity: Affinity,
    pub not_null: bool,
    /// 1-based position in the primary key, 0 when not part of it.
    pub pk: u32,
}

/// One key column as the shadow table mirrors it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    /// The table's column, or the rowid alias (`rowid`, `_rowid_` or `oid`) for rowid keys.
    pub name: String,
    pub affinity: Affinity,
    /// Built-in collation of the key (BINARY, NOCASE or RTRIM).
    pub collation: String,
    pub nullable: bool,
}

/// A UNIQUE index other than the primary key, on plain columns, not partial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueIndex {
    pub name: String,
    /// (column, collation) in index order.
    pub columns: Vec<(String, String)>,
}

/// A captured table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    pub name: String,
    pub columns: Vec<ColumnMeta>,
    pub key: Vec<KeyColumn>,
    /// Keyed by rowid (no explicit PRIMARY KEY): `key` is the single rowid alias.
    pub rowid_key: bool,
    pub unique_indexes: Vec<UniqueIndex>,
}

impl TableMeta {
    /// Key column names as they travel on the wire (empty for rowid keys).
    pub fn wire_key_columns(&self) -> Vec<String> {
        if self.rowid_key {
            Vec::new()
        } else {
            self.key.iter().map(|k| k.name.clone()).collect()
        }
    }

    /// Column names in table order.
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// Index of a column, matched case-insensitively as SQLite does.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
    }
}

/// A table we saw but do not capture, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedTable {
    pub name: String,
    pub reason: String,
}

/// Captured tables sorted by name, plus ordinary tables we had to skip.
pub fn captured_tables(
    conn: &Connection,
    ignore: &[String],
) -> Result<(Vec<TableMeta>, Vec<SkippedTable>), SqlError> {
    let all = schema_tables(conn)?;
    let virtuals: Vec<&str> = all
        .iter()
        .filter(|(_, sql)| is_virtual(sql))
        .map(|(name, _)| name.as_str())
        .collect();
    let mut tables = Vec::new();
    let mut skipped = Vec::new();
    for (name, sql) in &all {
        if name
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("sqlite_"))
            || is_internal_name(name)
            || is_virtual(sql)
            || virtuals.iter().any(|v| is_shadow_of(name, v))
            || ignore.iter().any(|i| i.eq_ignore_ascii_case(name))
        {
            continue;
        }
        match table_meta(conn, name)? {
            Ok(meta) => tables.push(meta),
            Err(reason) => skipped.push(SkippedTable {
                name: name.clone(),
                reason,
            }),
        }
    }
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((tables, skipped))
}

/// `(name, sql)` of every table in the main schema.
fn schema_tables(conn: &Connection) -> Result<Vec<(String, String)>, SqlError> {
    let sql =
        "SELECT name, COALESCE(sql, '') FROM sqlite_schema WHERE type = 'table' ORDER BY name";
    let fail = |source| SqlError::Sqlite {
        what: "listing tables",
        source,
    };
    let mut stmt = conn.prepare(sql).map_err(fail)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(fail)?;
    rows.collect::<Result<_, _>>().map_err(fail)
}

fn is_virtual(sql: &str) -> bool {
    let words: Vec<&str> = sql.split_whitespace().take(3).collect();
    words.len() == 3
        && words[0].eq_ignore_ascii_case("CREATE")
        && words[1].eq_ignore_ascii_case("VIRTUAL")
        && words[2].eq_ignore_ascii_case("TABLE")
}

/// FTS and R-tree keep their data in ordinary tables named `<vtab>_<suffix>`.
fn is_shadow_of(name: &str, vtab: &str) -> bool {
    name.len() > vtab.len() + 1
        && name.is_char_boundary(vtab.len())
        && name[..vtab.len()].eq_ignore_ascii_case(vtab)
        && name.as_bytes()[vtab.len()] == b'_'
}

/// Reads one table's shape. The inner `Err` is a reason to skip the table.
pub fn table_meta(conn: &Connection, table: &str) -> Result<Result<TableMeta, String>, SqlError> {
    let columns = table_columns(conn, table)?;
    if columns.is_empty() {
        return Ok(Err("table has no columns we can read".into()));
    }
    let indexes = index_list(conn, table)?;
    let (key, rowid_key) = match primary_key(conn, table, &columns, &indexes)? {
        Ok(key) => key,
        Err(reason) => return Ok(Err(reason)),
    };
    let mut unique_indexes = Vec::new();
    for idx in indexes
        .iter()
        .filter(|i| i.unique && !i.partial && i.origin != "pk")
    {
        let cols = index_columns(conn, table, &idx.name)?;
        // Expression columns (cid -2) read back with an empty name; we cannot evaluate them.
        if cols.iter().all(|(name, _)| !name.is_empty()) {
            unique_indexes.push(UniqueIndex {
                name: idx.name.clone(),
                columns: cols,
            });
        }
    }
    Ok(Ok(TableMeta {
        name: table.into(),
        columns,
        key,
        rowid_key,
        unique_indexes,
    }))
}

/// `PRAGMA table_info` of the table.
fn table_columns(conn: &Connection, table: &str) -> Result<Vec<ColumnMeta>, SqlError> {
    let fail = table_err("reading columns", table);
    let mut stmt = conn
        .prepare(&format!("PRAGMA table_info({})", quote_ident(table)))
        .map_err(&fail)?;
    let columns = stmt
        .query_map([], |r| {
            let decl: Option<String> = r.get(2)?;
            Ok(ColumnMeta {
                name: r.get(1)?,
                affinity: Affinity::of_declared(decl.as_deref().unwrap_or("")),
                not_null: r.get::<_, i64>(3)? != 0,
                pk: r.get::<_, u32>(5)?,
            })
        })
        .map_err(&fail)?
        .collect::<Result<_, _>>()
        .map_err(&fail)?;
    Ok(columns)
}

/// The key columns and whether they are the rowid; the inner `Err` is a reason to skip the
/// table (no primary key and no free rowid alias).
fn primary_key(
    conn: &Connection,
    table: &str,
    columns: &[ColumnMeta],
    indexes: &[IndexInfo],
) -> Result<Result<(Vec<KeyColumn>, bool), String>, SqlError> {
    let mut key_cols: Vec<&ColumnMeta> = columns.iter().filter(|c| c.pk > 0).collect();
    key_cols.sort_by_key(|c| c.pk);
    if key_cols.is_empty() {
        let shadowed = |alias: &str| columns.iter().any(|c| c.name.eq_ignore_ascii_case(alias));
        let Some(alias) = ["rowid", "_rowid_", "oid"]
            .into_iter()
            .find(|a| !shadowed(a))
        else {
            return Ok(Err(
                "no primary key and every rowid alias is a column name".into()
            ));
        };
        let key = KeyColumn {
            name: alias.into(),
            affinity: Affinity::Integer,
            collation: "BINARY".into(),
            nullable: false,
        };
        return Ok(Ok((vec![key], true)));
    }
    let pk_columns = match indexes.iter().find(|i| i.origin == "pk") {
        Some(i) => index_columns(conn, table, &i.name)?,
        None => Vec::new(),
    };
    let key = key_cols
        .into_iter()
        .map(|c| KeyColumn {
            name: c.name.clone(),
            affinity: c.affinity,
            collation: pk_columns
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(&c.name))
                .map(|(_, coll)| builtin_collation(coll))
                .unwrap_or_else(|| "BINARY".into()),
            nullable: !c.not_null,
        })
        .collect();
    Ok(Ok((key, false)))
}

struct IndexInfo {
    name: String,
    unique: bool,
    origin: String,
    partial: bool,
}

fn index_list(conn: &Connection, table: &str) -> Result<Vec<IndexInfo>, SqlError> {
    let fail = |source| SqlError::Table {
        what: "listing indexes",
        table: table.into(),
        source,
    };
    let mut stmt = conn
        .prepare(&format!("PRAGMA index_list({})", quote_ident(table)))
        .map_err(fail)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(IndexInfo {
                name: r.get(1)?,
                unique: r.get::<_, i64>(2)? != 0,
                origin: r.get(3)?,
                partial: r.get::<_, i64>(4)? != 0,
            })
        })
        .map_err(fail)?;
    rows.collect::<Result<_, _>>().map_err(fail)
}

/// Key columns of an index as (column name, collation); expression columns have an empty name.
fn index_columns(
    conn: &Connection,
    table: &str,
    index: &str,
) -> Result<Vec<(String, String)>, SqlError> {
    let fail = |source| SqlError::Table {
        what: "reading index columns",
        table: table.into(),
        source,
    };
    let mut stmt = conn
        .prepare(&format!("PRAGMA index_xinfo({})", quote_ident(index)))
        .map_err(fail)?;
    let rows = stmt
        .query_map([], |r| {
            let name: Option<String> = r.get(2)?;
            let coll: Option<String> = r.get(4)?;
            let key: i64 = r.get(5)?;
            Ok((
                key != 0,
                name.unwrap_or_default(),
                coll.unwrap_or_else(|| "BINARY".into()),
            ))
        })
        .map_err(fail)?;
    let all: Vec<(bool, String, String)> = rows.collect::<Result<_, _>>().map_err(fail)?;
    Ok(all
        .into_iter()
        .filter(|(key, _, _)| *key)
        .map(|(_, n, c)| (n, c))
        .collect())
}

/// Application-defined collations are not available on every connection; fall back to BINARY.
fn builtin_collation(coll: &str) -> String {
    ["BINARY", "NOCASE", "RTRIM"]
        .into_iter()
        .find(|b| b.eq_ignore_ascii_case(coll))
        .unwrap_or("BINARY")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(sql: &str) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(sql).unwrap();
        conn
    }

    #[test]
    fn affinity_rules() {
        use Affinity::*;
        for (decl, want) in [
            ("INT", Integer),
            ("bigint", Integer),
            ("varchar(10)", Text),
            ("CLOB", Text),
            ("", Blob),
            ("blob", Blob),
            ("double precision", Real),
            ("FLOAT", Real),
            ("decimal(10,2)", Numeric),
            ("boolean", Numeric),
            ("CHARINT", Integer),
        ] {
            assert_eq!(Affinity::of_declared(decl), want, "{decl}");
        }
    }

    #[test]
    fn discovers_keys_and_skips_what_it_must() {
        let conn = db(r#"
            CREATE TABLE "order"(id INTEGER PRIMARY KEY, "group" TEXT);
            CREATE TABLE "my table"(a TEXT COLLATE NOCASE, b INT NOT NULL, c, PRIMARY KEY(b, a));
            CREATE TABLE plain(x, y UNIQUE);
            CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
            CREATE TABLE odd(rowid, _rowid_, oid);
            CREATE TABLE ignored(x);
            CREATE VIRTUAL TABLE docs USING fts5(body);
            CREATE TABLE "__harmonylite__state"(key, value);
            CREATE UNIQUE INDEX plain_x ON plain(x) WHERE x > 0;
            CREATE UNIQUE INDEX plain_lx ON plain(lower(x));
        "#);
        let (tables, skipped) = captured_tables(&conn, &["IGNORED".into()]).unwrap();
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["my table", "order", "plain", "w"]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].name, "odd");

        let my = &tables[0];
        assert!(!my.rowid_key);
        let key: Vec<(&str, &str)> = my
            .key
            .iter()
            .map(|k| (k.name.as_str(), k.collation.as_str()))
            .collect();
        assert_eq!(key, [("b", "BINARY"), ("a", "NOCASE")]);
        assert!(!my.key[0].nullable && my.key[1].nullable);

        let order = &tables[1];
        assert_eq!(order.wire_key_columns(), ["id"]);
        assert_eq!(order.key[0].affinity, Affinity::Integer);

        let plain = &tables[2];
        assert!(plain.rowid_key);
        assert_eq!(plain.key[0].name, "rowid");
        assert!(plain.wire_key_columns().is_empty());
        let uniques: Vec<&str> = plain
            .unique_indexes
            .iter()
            .map(|u| u.name.as_str())
            .collect();
        assert_eq!(uniques, ["sqlite_autoindex_plain_1"]);
        assert_eq!(
            plain.unique_indexes[0].columns,
            [("y".to_string(), "BINARY".to_string())]
        );
    }
}
