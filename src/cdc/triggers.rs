//! SQL text of the shadow (clock) tables, the capture logs and the capture triggers (pure).
//!
//! A trigger appends one record per row change to the table's capture log (a rowid table: one
//! b-tree append, no keyed lookup); the engine folds the log into the keyed clock table in its
//! own transactions (`cdc::fold`). Decision 013 explains the split.
//!
//! The text must run on the application's SQLite, which may be as old as 3.24 and may run with
//! `PRAGMA trusted_schema = OFF`: only built-in functions, no `unixepoch('subsec')`, no
//! `RETURNING`, no `pragma_*` functions, nothing application-defined. The local node id is a
//! literal in the text.

use crate::catalog::discover::{Affinity, TableMeta};
use crate::ids::NodeId;
use crate::sql::internal::{GUARD, PREFIX};
use crate::sql::quote_ident;

/// The clock (shadow) table of `table`.
pub fn clock_table(table: &str) -> String {
    format!("{PREFIX}{table}_clock")
}

/// The capture log of `table`: one record per captured row change, in commit order, until the
/// engine folds it into the clock. The name never ends in `_clock` or `_change_log` (the suffixes
/// the install sweeps as stale).
pub fn log_table(table: &str) -> String {
    format!("{PREFIX}{table}_changes")
}

/// What a capture log record says happened to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// A new row: its creator (`origin`) becomes the writing node.
    Insert = 0,
    /// A change of a live row; the origin stays.
    Update = 1,
    /// The key is gone (a delete, or the old key of a key move).
    Delete = 2,
}

/// Index on `(ver, node)`: `MAX(ver)` for new versions, the publisher's range scan and the
/// pending count.
pub fn clock_ver_index(table: &str) -> String {
    format!("{PREFIX}{table}_clock_ver")
}

/// Partial index over the (rare) parked rows, so finding them costs nothing when there are none.
pub fn clock_parked_index(table: &str) -> String {
    format!("{PREFIX}{table}_clock_parked")
}

/// The name of one of `table`'s triggers.
pub fn trigger_name(table: &str, kind: TriggerKind) -> String {
    format!("{PREFIX}{table}_{}", kind.suffix())
}

/// Our four triggers per table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    Insert,
    Update,
    KeyMove,
    Delete,
}

impl TriggerKind {
    pub const ALL: [TriggerKind; 4] = [
        TriggerKind::Insert,
        TriggerKind::Update,
        TriggerKind::KeyMove,
        TriggerKind::Delete,
    ];

    fn suffix(self) -> &'static str {
        match self {
            TriggerKind::Insert => "ins",
            TriggerKind::Update => "upd",
            TriggerKind::KeyMove => "updkey",
            TriggerKind::Delete => "del",
        }
    }
}

/// Name of the i-th key column of a clock table.
pub fn key_col(i: usize) -> String {
    format!("k{i}")
}

/// `"k0","k1",…`
pub fn key_col_list(meta: &TableMeta) -> String {
    (0..meta.key.len())
        .map(|i| quote_ident(&key_col(i)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `alias."k0"`, `alias."k1"`, …: the key columns of a clock or log row under `alias`.
pub fn aliased_key_cols(meta: &TableMeta, alias: &str) -> Vec<String> {
    (0..meta.key.len())
        .map(|i| format!("{alias}.{}", quote_ident(&key_col(i))))
        .collect()
}

/// `a."k0" = b."k0" AND …`: two clock or log rows of one key.
pub fn same_key(meta: &TableMeta, a: &str, b: &str) -> String {
    (0..meta.key.len())
        .map(|i| format!("{a}.{0} = {b}.{0}", quote_ident(&key_col(i))))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `c."k0" = t."id" AND …`: the clock or log row (`c`) of a live row (`t`; an alias or the
/// quoted table name).
pub fn row_key_matches(meta: &TableMeta, c: &str, t: &str) -> String {
    meta.key
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "{c}.{} = {t}.{}",
                quote_ident(&key_col(i)),
                quote_ident(&k.name)
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Each logged key's newest record (`l`, highest `seq`) with `g.inserted` (whether any of the
/// key's records is an insert) and its clock row (`c`, if any): the `FROM` of the fold and of
/// the scan of unfolded changes, which select `FOLDED_ORIGIN` from it.
pub fn newest_logged_records(meta: &TableMeta) -> String {
    let log = quote_ident(&log_table(&meta.name));
    format!(
        "FROM (SELECT MAX(seq) AS newest, MAX(kind = {insert}) AS inserted FROM {log} \
               GROUP BY {keys}) AS g \
         JOIN {log} AS l ON l.seq = g.newest \
         LEFT JOIN {clock} AS c ON {same}",
        insert = LogKind::Insert as i32,
        keys = key_col_list(meta),
        clock = quote_ident(&clock_table(&meta.name)),
        same = same_key(meta, "c", "l"),
    )
}

/// The origin a fold gives a key (over `newest_logged_records`): the writer when the key was
/// (re)inserted or is new to the clock, else the clock's origin (an update keeps the creator).
pub const FOLDED_ORIGIN: &str =
    "CASE WHEN g.inserted OR c.origin IS NULL THEN l.node ELSE c.origin END";

/// The key columns of a clock or log table: each with the table key's affinity and collation,
/// so a key compares and converts exactly as in the table.
fn key_columns_ddl(meta: &TableMeta) -> String {
    meta.key
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "{} {} COLLATE {}",
                quote_ident(&key_col(i)),
                k.affinity.as_str(),
                k.collation
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A new version for `table`: above everything its clock and its unfolded capture log hold, at
/// least the wall clock in milliseconds shifted past the 16-bit counter
/// (`crate::hlc::Hlc::next`). `MAX(ver)` is one read of the clock's ver index and the log's
/// newest record one read of its rowid b-tree (log versions never decrease along the rowid);
/// the trigger stays at one write per row.
///
/// The arithmetic cannot overflow: the highest version is capped one below `MAX_VERSION`
/// before the `+ 1`, so a version never leaves SQLite's integers (past `i64::MAX` it would turn
/// into a REAL and break every reader of the clock). A table at the cap stays there; the node
/// id breaks ties.
pub fn version_expr(table: &str) -> String {
    format!(
        "MAX(MIN(MAX(COALESCE((SELECT MAX(ver) FROM {}), 0), \
         COALESCE((SELECT ver FROM {} ORDER BY seq DESC LIMIT 1), 0)), {}) + 1, \
         CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) * 65536)",
        quote_ident(&clock_table(table)),
        quote_ident(&log_table(table)),
        MAX_VERSION - 1
    )
}

/// The largest version a clock holds (`i64::MAX`): trigger arithmetic saturates here.
pub const MAX_VERSION: i64 = i64::MAX;

/// Everything that fixes the clock table's shape; a change means rebuild.
pub fn clock_signature(meta: &TableMeta) -> String {
    let mut sig = String::from("clock-v1");
    for k in &meta.key {
        sig.push_str(&format!(
            "|{}:{}:{}",
            quote_ident(&k.name),
            k.affinity.as_str(),
            k.collation
        ));
    }
    if meta.rowid_key {
        sig.push_str("|rowid");
    }
    sig
}

/// `CREATE TABLE` of the clock table (key columns: `key_columns_ddl`). `parked` holds the values of a live row
/// kept out of the table by a UNIQUE conflict (see `apply::conflicts`).
pub fn create_clock_sql(meta: &TableMeta) -> String {
    format!(
        "CREATE TABLE {}({}, ver INTEGER NOT NULL, node INTEGER NOT NULL, \
         origin INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, parked BLOB, \
         PRIMARY KEY({})) WITHOUT ROWID",
        quote_ident(&clock_table(&meta.name)),
        key_columns_ddl(meta),
        key_col_list(meta)
    )
}

/// `CREATE TABLE` of the capture log. `seq` is the rowid (append order); key columns copy the
/// table key's affinity and collation like the clock's, so a fold groups and joins keys as the
/// table compares them.
pub fn create_log_sql(meta: &TableMeta) -> String {
    format!(
        "CREATE TABLE {}(seq INTEGER PRIMARY KEY, ver INTEGER NOT NULL, node INTEGER NOT NULL, \
         kind INTEGER NOT NULL, {})",
        quote_ident(&log_table(&meta.name)),
        key_columns_ddl(meta),
    )
}

/// The clock table's indexes.
pub fn create_clock_indexes_sql(meta: &TableMeta) -> [String; 2] {
    let clock = quote_ident(&clock_table(&meta.name));
    [
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {clock}(ver, node)",
            quote_ident(&clock_ver_index(&meta.name))
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {clock}(ver) WHERE parked IS NOT NULL",
            quote_ident(&clock_parked_index(&meta.name))
        ),
    ]
}

/// `(name, CREATE TRIGGER …)` of the table's four triggers, stamping versions as `node`.
pub fn triggers_sql(meta: &TableMeta, node: NodeId) -> Vec<(String, String)> {
    TriggerKind::ALL
        .iter()
        .map(|&kind| {
            (
                trigger_name(&meta.name, kind),
                trigger_sql(meta, node, kind),
            )
        })
        .collect()
}

fn trigger_sql(meta: &TableMeta, node: NodeId, kind: TriggerKind) -> String {
    // Node ids are u64; SQLite stores the same 64 bits as a signed integer.
    let node = node.0 as i64;
    let row = match kind {
        TriggerKind::Insert | TriggerKind::Update => "NEW",
        TriggerKind::KeyMove | TriggerKind::Delete => "OLD",
    };
    let key_values: Vec<String> = meta
        .key
        .iter()
        .map(|k| format!("{row}.{}", quote_ident(&k.name)))
        .collect();
    let mut when = format!("NOT EXISTS (SELECT 1 FROM {})", quote_ident(GUARD));
    // Rowid tables with a non-integer PRIMARY KEY accept NULL keys; such rows have no identity
    // to replicate and would break the clock's NOT NULL key.
    for (k, v) in meta.key.iter().zip(&key_values) {
        if k.nullable {
            when.push_str(&format!(" AND {v} IS NOT NULL"));
        }
    }
    if kind == TriggerKind::KeyMove {
        let moved: Vec<String> = meta
            .key
            .iter()
            .map(|k| format!("OLD.{0} IS NOT NEW.{0}", quote_ident(&k.name)))
            .collect();
        when.push_str(&format!(" AND ({})", moved.join(" OR ")));
    }
    let log_kind = match kind {
        TriggerKind::Insert => LogKind::Insert,
        TriggerKind::Update => LogKind::Update,
        TriggerKind::KeyMove | TriggerKind::Delete => LogKind::Delete,
    };
    let event = match kind {
        TriggerKind::Insert => "INSERT".to_owned(),
        TriggerKind::Update => "UPDATE".to_owned(),
        // SQLite codes an `UPDATE OF` trigger only into statements whose SET list names one
        // of the columns, so an update that leaves the key alone does not run this trigger
        // at all (a trigger whose WHEN is false still costs a sub-program call per row;
        // measured 12–15 % of a captured 1000-row update transaction). A key can change only
        // through its own columns (generated columns cannot be part of a PRIMARY KEY) or,
        // for a rowid key or an INTEGER PRIMARY KEY, through any rowid alias.
        TriggerKind::KeyMove => format!("UPDATE OF {}", key_move_columns(meta).join(",")),
        TriggerKind::Delete => "DELETE".to_owned(),
    };
    format!(
        "CREATE TRIGGER {name} AFTER {event} ON {table} WHEN {when} BEGIN \
         INSERT INTO {log}(ver, node, kind, {keys}) \
         VALUES({ver}, {node}, {kind}, {values}); END",
        name = quote_ident(&trigger_name(&meta.name, kind)),
        table = quote_ident(&meta.name),
        log = quote_ident(&log_table(&meta.name)),
        keys = key_col_list(meta),
        values = key_values.join(", "),
        ver = version_expr(&meta.name),
        kind = log_kind as i32,
    )
}

/// The SET-list names through which an UPDATE can change `meta`'s key: the key columns and,
/// when the key may be the rowid, the rowid aliases (an alias that is also a real column name
/// only makes the trigger run for nothing; its `WHEN` still compares the keys).
fn key_move_columns(meta: &TableMeta) -> Vec<String> {
    let mut cols: Vec<String> = meta.key.iter().map(|k| k.name.clone()).collect();
    let maybe_rowid =
        meta.rowid_key || (meta.key.len() == 1 && meta.key[0].affinity == Affinity::Integer);
    if maybe_rowid {
        for alias in ["rowid", "_rowid_", "oid"] {
            if !cols.iter().any(|c| c.eq_ignore_ascii_case(alias)) {
                cols.push(alias.to_owned());
            }
        }
    }
    cols.iter().map(|c| quote_ident(c)).collect()
}

/// The whole capture DDL of one table as a script (for tests and the `sqlite3` CLI check).
pub fn install_script(meta: &TableMeta, node: NodeId) -> String {
    let mut script = format!("{};\n{};\n", create_clock_sql(meta), create_log_sql(meta));
    for idx in create_clock_indexes_sql(meta) {
        script.push_str(&format!("{idx};\n"));
    }
    for (_, sql) in triggers_sql(meta, node) {
        script.push_str(&format!("{sql};\n"));
    }
    script
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::catalog::discover::captured_tables;

    /// `(key, deleted)` of every clock row of `table`, by key.
    fn clock(conn: &Connection, table: &str) -> Vec<(String, i64)> {
        crate::db::testutil::fold_all(conn);
        let mut stmt = conn
            .prepare(&format!(
                "SELECT CAST(k0 AS TEXT), deleted FROM {} ORDER BY 1",
                quote_ident(&clock_table(table))
            ))
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// The key-move trigger fires only for updates naming the key in SET; every spelling that
    /// can change a key must be covered: the key column, and for rowid keys or INTEGER
    /// PRIMARY KEY any rowid alias, in any case, also from an upsert's DO UPDATE.
    #[test]
    fn key_moves_through_every_alias_are_captured() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            r#"CREATE TABLE ipk(id INTEGER PRIMARY KEY, v TEXT);
               CREATE TABLE norowid(x, y);
               CREATE TABLE txt("K y" TEXT PRIMARY KEY, v TEXT);"#,
        )
        .unwrap();
        crate::sql::internal::create_internal(&conn).unwrap();
        let (tables, _) = captured_tables(&conn, &[]).unwrap();
        for t in &tables {
            conn.execute_batch(&install_script(t, NodeId(3))).unwrap();
        }
        conn.execute_batch(
            r#"INSERT INTO ipk VALUES (1,'a'),(2,'b'),(3,'c'),(4,'d'),(5,'e');
               UPDATE ipk SET v = 'x';
               UPDATE ipk SET rowid = 10 WHERE id = 1;
               UPDATE ipk SET OID = 20 WHERE id = 2;
               UPDATE ipk SET _ROWID_ = 30 WHERE id = 3;
               UPDATE ipk SET "ID" = 40 WHERE id = 4;
               INSERT INTO ipk VALUES (5, 'z') ON CONFLICT(id) DO UPDATE SET id = 50;
               INSERT INTO norowid VALUES (1, 1), (2, 2);
               UPDATE norowid SET x = 9;
               UPDATE norowid SET oid = 7 WHERE y = 1;
               INSERT INTO txt VALUES ('a', 1);
               UPDATE txt SET v = 2;
               UPDATE txt SET "k Y" = 'b';"#,
        )
        .unwrap();
        let live_dead = |keys: &[(&str, i64)]| -> Vec<(String, i64)> {
            let mut v: Vec<(String, i64)> =
                keys.iter().map(|(k, d)| ((*k).to_owned(), *d)).collect();
            v.sort();
            v
        };
        assert_eq!(
            clock(&conn, "ipk"),
            live_dead(&[
                ("1", 1),
                ("2", 1),
                ("3", 1),
                ("4", 1),
                ("5", 1),
                ("10", 0),
                ("20", 0),
                ("30", 0),
                ("40", 0),
                ("50", 0)
            ])
        );
        assert_eq!(
            clock(&conn, "norowid"),
            live_dead(&[("1", 1), ("2", 0), ("7", 0)])
        );
        assert_eq!(clock(&conn, "txt"), live_dead(&[("a", 1), ("b", 0)]));
    }

    /// Updates that leave the key alone do not even code the key-move trigger.
    #[test]
    fn key_move_trigger_names_only_key_spellings() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            r#"CREATE TABLE ipk(id INTEGER PRIMARY KEY, v TEXT);
               CREATE TABLE wr(a TEXT, b INT, PRIMARY KEY(a, b)) WITHOUT ROWID;"#,
        )
        .unwrap();
        let (tables, _) = captured_tables(&conn, &[]).unwrap();
        let sql = |name: &str| {
            let t = tables.iter().find(|t| t.name == name).unwrap();
            trigger_sql(t, NodeId(1), TriggerKind::KeyMove)
        };
        assert!(
            sql("ipk").contains(r#"AFTER UPDATE OF "id","rowid","_rowid_","oid" ON "ipk""#),
            "{}",
            sql("ipk")
        );
        assert!(
            sql("wr").contains(r#"AFTER UPDATE OF "a","b" ON "wr""#),
            "{}",
            sql("wr")
        );
    }
}
