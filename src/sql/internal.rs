//! Our own tables inside the application's database, and their format version.
//!
//! Everything we create is named with `PREFIX`; the version lives in our `state` table, never in
//! `PRAGMA user_version` (that belongs to the application).

use rusqlite::{Connection, OptionalExtension};

use crate::position::{Position, StreamPosition};

/// Prefix of every object we create. Matched exactly (`substr(name, 1, 15)`), never with `LIKE`.
pub const PREFIX: &str = "__harmonylite__";
/// `key TEXT PRIMARY KEY, value`: the format version and other small facts.
pub const STATE: &str = "__harmonylite__state";
/// Holds a row only inside the applier's uncommitted transaction; triggers skip while it does.
pub const GUARD: &str = "__harmonylite__guard";
/// Publisher watermark per table: the highest clock version already scanned.
pub const PUBLISHED: &str = "__harmonylite__published";
/// Per stream: its incarnation and this node's position in it (contiguous applied floor and the
/// sequences applied above it), committed with the applied rows (`crate::position`).
pub const FLOORS: &str = "__harmonylite__floors";
/// Format 1's per-stream highest applied sequence; migrated into `FLOORS` and dropped.
pub const LEGACY_APPLIED: &str = "__harmonylite__applied";
/// Remote row changes held back because their version is too far in the future.
pub const QUARANTINE: &str = "__harmonylite__quarantine";
/// Gaps an operator accepted: what was given up, when and how.
pub const ACCEPTED_GAPS: &str = "__harmonylite__accepted_gaps";
/// The conflict journal.
pub const CONFLICTS: &str = "__harmonylite__conflicts";
/// Captured tables: their key columns and the shape of their shadow table.
pub const TRACKED: &str = "__harmonylite__tracked";
/// `STATE` key set when this node went on past a gap in a stream that no snapshot closed: its
/// content may miss changes, so it must not be the source of a snapshot. A restore clears it
/// (the snapshot's state table replaces ours).
pub const STATE_GAP_ACCEPTED: &str = "gap_accepted";
/// Tables that are ours but not per-table shadows.
pub const INTERNAL_TABLES: [&str; 8] = [
    STATE,
    GUARD,
    PUBLISHED,
    FLOORS,
    CONFLICTS,
    TRACKED,
    QUARANTINE,
    ACCEPTED_GAPS,
];
/// The format of our tables this build writes. 2: stream floors replace the highest applied
/// sequence; quarantine and accepted gaps. 3: capture triggers append to per-table capture logs
/// that the engine folds into the clocks (`cdc::fold`); an older build would strand unfolded
/// records, so it must refuse the database.
pub const FORMAT_VERSION: i64 = 3;

const CREATE: &str = r#"
CREATE TABLE IF NOT EXISTS "__harmonylite__state"(key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS "__harmonylite__guard"(x);
CREATE TABLE IF NOT EXISTS "__harmonylite__published"(tbl TEXT PRIMARY KEY, ver INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS "__harmonylite__floors"(
    stream TEXT PRIMARY KEY,
    incarnation TEXT NOT NULL,
    floor INTEGER NOT NULL,
    above TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS "__harmonylite__quarantine"(
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    node INTEGER NOT NULL,
    change BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS "__harmonylite__accepted_gaps"(
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    stream TEXT NOT NULL,
    first_missing INTEGER NOT NULL,
    last_missing INTEGER NOT NULL,
    how TEXT NOT NULL
);
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
INSERT INTO "__harmonylite__state"(key, value) VALUES('format', 3) ON CONFLICT(key) DO NOTHING;
"#;

/// Format 1 → 2: the highest applied sequence becomes the floor, conservatively: the consumer
/// caps it at its ack floor when it next sees the stream (the incarnation is unknown until then).
const MIGRATE_1_TO_2: &str = r#"
INSERT INTO "__harmonylite__floors"(stream, incarnation, floor, above)
    SELECT stream, '', seq, '' FROM "__harmonylite__applied" WHERE true
    ON CONFLICT(stream) DO NOTHING;
DROP TABLE "__harmonylite__applied";
UPDATE "__harmonylite__state" SET value = 2 WHERE key = 'format';
"#;

/// Format 2 → 3: nothing to move; the capture install that follows every start creates the
/// capture logs and replaces the triggers, and unpublished changes stay in the clocks.
const MIGRATE_2_TO_3: &str =
    r#"UPDATE "__harmonylite__state" SET value = 3 WHERE key = 'format' AND value = 2;"#;

/// Creates our tables if missing (no schema change when they exist), migrates an older format,
/// and returns the format version found in the database (a newer one is left alone).
pub fn create_internal(conn: &Connection) -> rusqlite::Result<i64> {
    let before = format_of(conn)?;
    conn.execute_batch(CREATE)?;
    let mut found = format_of(conn)?.unwrap_or(FORMAT_VERSION);
    if found == 1 && table_exists(conn, LEGACY_APPLIED)? {
        conn.execute_batch(MIGRATE_1_TO_2)?;
        tracing::info!("internal tables migrated to format 2 (stream floors)");
        found = 2;
    }
    if found == 2 {
        conn.execute_batch(MIGRATE_2_TO_3)?;
        tracing::info!("internal tables migrated to format 3 (capture logs)");
        return Ok(before.unwrap_or(found).max(FORMAT_VERSION));
    }
    Ok(found)
}

/// The format version recorded in the database, if our state table exists.
fn format_of(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    if !table_exists(conn, STATE)? {
        return Ok(None);
    }
    conn.query_row(
        r#"SELECT value FROM "__harmonylite__state" WHERE key = 'format'"#,
        [],
        |r| r.get(0),
    )
    .optional()
}

/// Whether `conn`'s database has the table `name`.
pub fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)",
        [name],
        |r| r.get(0),
    )
}

/// Whether the schema holds a trigger that is not ours (the application's).
pub fn has_app_triggers(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema \
         WHERE type = 'trigger' AND substr(name, 1, ?1) <> ?2)",
        rusqlite::params![PREFIX.len() as i64, PREFIX],
        |r| r.get(0),
    )
}

/// Every stream position recorded in the database.
pub fn read_positions(conn: &Connection) -> rusqlite::Result<Vec<StreamPosition>> {
    if !table_exists(conn, FLOORS)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(
        r#"SELECT stream, incarnation, floor, above FROM "__harmonylite__floors" ORDER BY stream"#,
    )?;
    let rows = stmt.query_map([], |r| {
        let floor: i64 = r.get(2)?;
        let above: String = r.get(3)?;
        Ok(StreamPosition {
            stream: r.get(0)?,
            incarnation: r.get(1)?,
            position: Position::from_parts(floor.max(0) as u64, &above),
        })
    })?;
    rows.collect()
}

/// Records a stream position (in the caller's transaction).
pub fn write_position(conn: &Connection, p: &StreamPosition) -> rusqlite::Result<()> {
    let floor = i64::try_from(p.position.floor()).unwrap_or(i64::MAX);
    conn.prepare_cached(
        r#"INSERT INTO "__harmonylite__floors"(stream, incarnation, floor, above)
           VALUES(?1, ?2, ?3, ?4)
           ON CONFLICT(stream) DO UPDATE SET incarnation = excluded.incarnation,
               floor = excluded.floor, above = excluded.above"#,
    )?
    .execute(rusqlite::params![
        p.stream,
        p.incarnation,
        floor,
        p.position.above_text()
    ])?;
    Ok(())
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
    fn format_1_migrates_to_floors() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            r#"CREATE TABLE "__harmonylite__state"(key TEXT PRIMARY KEY, value);
               INSERT INTO "__harmonylite__state" VALUES('format', 1);
               CREATE TABLE "__harmonylite__applied"(stream TEXT PRIMARY KEY, seq INTEGER NOT NULL);
               INSERT INTO "__harmonylite__applied" VALUES('s-0', 42), ('s-1', 7);"#,
        )
        .unwrap();
        assert_eq!(create_internal(&conn).unwrap(), FORMAT_VERSION);
        let positions = read_positions(&conn).unwrap();
        assert_eq!(positions.len(), 2);
        assert_eq!(positions[0].stream, "s-0");
        assert_eq!(positions[0].position.floor(), 42);
        assert_eq!(
            positions[0].incarnation, "",
            "unknown until the stream is seen"
        );
        assert!(!table_exists(&conn, LEGACY_APPLIED).unwrap());
        assert_eq!(format_of(&conn).unwrap(), Some(FORMAT_VERSION));
        assert_eq!(
            create_internal(&conn).unwrap(),
            FORMAT_VERSION,
            "idempotent"
        );

        let mut p = positions[1].clone();
        p.incarnation = "2026-12-01T00:00:00Z".into();
        p.position.mark_range(9, 10);
        write_position(&conn, &p).unwrap();
        assert_eq!(read_positions(&conn).unwrap()[1], p);
    }

    #[test]
    fn prefix_is_exact() {
        assert!(is_internal_name("__harmonylite__x_clock"));
        assert!(!is_internal_name("__harmonyliteX_x"));
        assert!(!is_internal_name("__HARMONYLITE__x"));
    }
}
