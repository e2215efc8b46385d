//! Our own tables inside the application's database, and their format version.
//!
//! Everything we create is named with `PREFIX`; the version lives in our `state` table, never in
//! `PRAGMA user_version` (that belongs to the application).

use rusqlite::{Connection, OptionalExtension};

/// Prefix of every object we create. Matched exactly (`substr(name, 1, 15)`), never with `LIKE`.
pub const PREFIX: &str = "__harmonylite__";
/// `key TEXT PRIMARY KEY, value`: the format version and other small facts.
pub const STATE: &str = "__harmonylite__state";
/// Holds a row only inside the applier's uncommitted transaction; triggers skip while it does.
pub const GUARD: &str = "__harmonylite__guard";
/// Publisher watermark per table: the highest clock version already scanned.
pub const PUBLISHED: &str = "__harmonylite__published";
/// Last applied JetStream sequence per stream, committed with the applied rows.
pub const APPLIED: &str = "__harmonylite__applied";
/// The conflict journal.
pub const CONFLICTS: &str = "__harmonylite__conflicts";
/// Captured tables: their key columns and the shape of their shadow table.
pub const TRACKED: &str = "__harmonylite__tracked";
/// `STATE` key set when this node went on past a gap in a stream that no snapshot closed: its
/// content may miss changes, so it must not be the source of a snapshot. A restore clears it
/// (the snapshot's state table replaces ours).
pub const STATE_GAP_ACCEPTED: &str = "gap_accepted";
/// Tables that are ours but not per-table shadows.
pub const INTERNAL_TABLES: [&str; 6] = [STATE, GUARD, PUBLISHED, APPLIED, CONFLICTS, TRACKED];
/// The format of our tables this build writes.
pub const FORMAT_VERSION: i64 = 1;

const CREATE: &str = r#"
CREATE TABLE IF NOT EXISTS "__harmonylite__state"(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS "__harmonylite__guard"(x);
CREATE TABLE IF NOT EXISTS "__harmonylite__published"(tbl TEXT PRIMARY KEY, ver INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS "__harmonylite__applied"(stream TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS "__harmonylite__conflicts"(
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT,
    winner_node INTEGER,
    winner_ver INTEGER,
    loser_node INTEGER,
    loser_ver INTEGER,
    winner_row TEXT,
    loser_row TEXT,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS "__harmonylite__tracked"(
    tbl TEXT PRIMARY KEY,
    key_columns TEXT NOT NULL,
    signature TEXT NOT NULL
);
INSERT INTO "__harmonylite__state"(key, value) VALUES('format', 1) ON CONFLICT(key) DO NOTHING;
"#;

/// Creates our tables if missing (no schema change when they exist) and returns the format
/// version found in the database.
pub fn create_internal(conn: &Connection) -> rusqlite::Result<i64> {
    conn.execute_batch(CREATE)?;
    let found: Option<i64> = conn
        .query_row(
            r#"SELECT value FROM "__harmonylite__state" WHERE key = 'format'"#,
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(found.unwrap_or(FORMAT_VERSION))
}

/// Whether `name` is one of our objects.
pub fn is_internal_name(name: &str) -> bool {
    name.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_without_schema_change() {
        let conn = Connection::open_in_memory().unwrap();
        assert_eq!(create_internal(&conn).unwrap(), FORMAT_VERSION);
        let v1: i64 = conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(create_internal(&conn).unwrap(), FORMAT_VERSION);
        let v2: i64 = conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v1, v2);
        let user_version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(user_version, 0);
    }

    #[test]
    fn prefix_is_exact() {
        assert!(is_internal_name("__harmonylite__x_clock"));
        assert!(!is_internal_name("__harmonyliteX_x"));
        assert!(!is_internal_name("__HARMONYLITE__x"));
    }
}
