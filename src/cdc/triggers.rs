//! SQL text of the shadow (clock) tables and capture triggers (pure).
//!
//! The text must run on the application's SQLite, which may be as old as 3.24 and may run with
//! `PRAGMA trusted_schema = OFF`: only built-in functions, no `unixepoch('subsec')`, no
//! `RETURNING`, no `pragma_*` functions, nothing application-defined. The local node id is a
//! literal in the text.

use crate::cdc::discover::TableMeta;
use crate::db::migrate::{GUARD, PREFIX};
use crate::db::quote_ident;
use crate::ids::NodeId;

/// The clock (shadow) table of `table`.
pub fn clock_table(table: &str) -> String {
    format!("{PREFIX}{table}_clock")
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

/// A new version for `clock`: above everything the table has seen, at least the wall clock in
/// milliseconds shifted past the 16-bit counter (`crate::hlc::Hlc::next`). `MAX(ver)` is one
/// read of the ver index; the trigger stays at one write per row.
pub fn version_expr(clock: &str) -> String {
    format!(
        "MAX(COALESCE((SELECT MAX(ver) FROM {}), 0) + 1, \
         CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) * 65536)",
        quote_ident(clock)
    )
}

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

/// `CREATE TABLE` of the clock table. Key columns copy the table key's affinity and collation so
/// a key compares and converts exactly as in the table. `parked` holds the values of a live row
/// kept out of the table by a UNIQUE conflict (see `apply::conflicts`).
pub fn create_clock_sql(meta: &TableMeta) -> String {
    let keys: Vec<String> = meta
        .key
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
        .collect();
    format!(
        "CREATE TABLE {}({}, ver INTEGER NOT NULL, node INTEGER NOT NULL, \
         origin INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, parked BLOB, \
         PRIMARY KEY({})) WITHOUT ROWID",
        quote_ident(&clock_table(&meta.name)),
        keys.join(", "),
        key_col_list(meta)
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
    let clock = clock_table(&meta.name);
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
    let deleted = matches!(kind, TriggerKind::KeyMove | TriggerKind::Delete);
    let mut set = String::from("ver=excluded.ver, node=excluded.node");
    match kind {
        // A fresh insert (also over a tombstone) is a new row: its creator is this node.
        TriggerKind::Insert => set.push_str(", origin=excluded.origin, deleted=0"),
        TriggerKind::Update => set.push_str(", deleted=0"),
        TriggerKind::KeyMove | TriggerKind::Delete => set.push_str(", deleted=1"),
    }
    set.push_str(", parked=NULL");
    // Under NOCASE/RTRIM an equal key may be spelled differently; keep the table's spelling.
    for (i, k) in meta.key.iter().enumerate() {
        if k.collation != "BINARY" && !deleted {
            set.push_str(&format!(", {0}=excluded.{0}", quote_ident(&key_col(i))));
        }
    }
    let event = match kind {
        TriggerKind::Insert => "INSERT",
        TriggerKind::Update | TriggerKind::KeyMove => "UPDATE",
        TriggerKind::Delete => "DELETE",
    };
    format!(
        "CREATE TRIGGER {name} AFTER {event} ON {table} WHEN {when} BEGIN \
         INSERT INTO {clock_q}({keys}, ver, node, origin, deleted) \
         VALUES({values}, {ver}, {node}, {node}, {deleted}) \
         ON CONFLICT({keys}) DO UPDATE SET {set}; END",
        name = quote_ident(&trigger_name(&meta.name, kind)),
        table = quote_ident(&meta.name),
        clock_q = quote_ident(&clock),
        keys = key_col_list(meta),
        values = key_values.join(", "),
        ver = version_expr(&clock),
        deleted = i32::from(deleted),
    )
}

/// The whole capture DDL of one table as a script (for tests and the `sqlite3` CLI check).
pub fn install_script(meta: &TableMeta, node: NodeId) -> String {
    let mut script = format!("{};\n", create_clock_sql(meta));
    for idx in create_clock_indexes_sql(meta) {
        script.push_str(&format!("{idx};\n"));
    }
    for (_, sql) in triggers_sql(meta, node) {
        script.push_str(&format!("{sql};\n"));
    }
    script
}
