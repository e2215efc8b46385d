//! Where a captured write's time goes: the real capture triggers against plain SQLite and
//! against the same triggers with parts of their work taken out, written the way an application
//! writes (a file in WAL mode, `synchronous = NORMAL`, one prepared insert, 1-row and 1000-row
//! transactions). No replicator runs beside it, so the figures are the trigger's own cost:
//! `cargo test --release --lib capture_cost -- --ignored --nocapture`.
//!
//! The variants:
//! - `capture`: the triggers as installed;
//! - `no clock read`: the version reads the log's newest record and the wall clock, not the
//!   clock's `MAX(ver)`;
//! - `no reads`: the version is the wall clock alone;
//! - `no version`: the version is a constant (the record, the guard and the append remain);
//! - `bare append`: a constant version and no guard: the append alone.

use std::path::Path;
use std::time::Instant;

use rusqlite::Connection;

use crate::catalog::discover::captured_tables;
use crate::cdc::triggers::{clock_table, log_table, triggers_sql, version_expr};
use crate::ids::NodeId;
use crate::sql::internal::GUARD;
use crate::sql::quote_ident;

/// Rows the clock holds before the measurement, so its `MAX(ver)` descends a real index.
const CLOCK_ROWS: i64 = 100_000;
/// Alternating rounds; each variant keeps its best (the machine is shared).
const ROUNDS: usize = 7;

const WALL_CLOCK: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) * 65536";

/// Replacements in the installed trigger text; `None`: no capture at all.
type Edits = Option<Vec<(String, String)>>;

/// The variants: a name and how to change the installed trigger text.
fn variants(table: &str) -> Vec<(&'static str, Edits)> {
    let version = version_expr(table);
    let guard = format!("NOT EXISTS (SELECT 1 FROM {})", quote_ident(GUARD));
    let log_newest = format!(
        "MAX(COALESCE((SELECT ver FROM {} ORDER BY seq DESC LIMIT 1), 0) + 1, {WALL_CLOCK})",
        quote_ident(&log_table(table))
    );
    vec![
        ("plain", None),
        ("capture", Some(vec![])),
        ("no clock read", Some(vec![(version.clone(), log_newest)])),
        (
            "no reads",
            Some(vec![(version.clone(), WALL_CLOCK.to_owned())]),
        ),
        ("no version", Some(vec![(version.clone(), "0".to_owned())])),
        (
            "bare append",
            Some(vec![(version, "0".to_owned()), (guard, "1".to_owned())]),
        ),
    ]
}

/// A database with `t`, `CLOCK_ROWS` rows stamped and folded, and capture's triggers changed
/// by `edits` (no capture at all for `None`), checkpointed into its main file.
fn set_up(path: &Path, edits: &Edits) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER);",
    )
    .unwrap();
    if let Some(edits) = edits {
        crate::sql::internal::create_internal(&conn).unwrap();
        crate::cdc::install(&conn, NodeId(7), &[]).unwrap();
        fill(&conn);
        edit_triggers(&conn, edits);
    } else {
        fill(&conn);
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
}

/// `CLOCK_ROWS` rows in `t` (stamped, where capture is installed).
fn fill(conn: &Connection) {
    conn.execute_batch(&format!(
        "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {CLOCK_ROWS}) \
         INSERT INTO t SELECT x, 'some name', x % 97 FROM s"
    ))
    .unwrap();
}

/// Folds what `fill` captured and replaces the triggers that `edits` change.
fn edit_triggers(conn: &Connection, edits: &[(String, String)]) {
    let (tables, _) = captured_tables(conn, &[]).unwrap();
    let meta = tables.iter().find(|m| m.name == "t").unwrap();
    crate::cdc::fold::fold_table(conn, meta).unwrap();
    let clock: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM {}", quote_ident(&clock_table("t"))),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(clock, CLOCK_ROWS);
    for (name, sql) in triggers_sql(meta, NodeId(7)) {
        let changed = edits
            .iter()
            .fold(sql.clone(), |text, (from, to)| text.replace(from, to));
        if changed != sql {
            conn.execute_batch(&format!("DROP TRIGGER {}; {changed};", quote_ident(&name)))
                .unwrap();
        }
    }
}

/// Rows a second for `txns` transactions of `per_txn` new rows, written through a fresh
/// application connection to a fresh copy of `template` (every round starts from the same
/// file, so no variant pays for a database the earlier rounds grew).
fn insert_rate(template: &Path, work: &Path, txns: usize, per_txn: usize) -> f64 {
    std::fs::copy(template, work).unwrap();
    let mut conn = Connection::open(work).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL")
        .unwrap();
    let mut next = CLOCK_ROWS;
    let started = Instant::now();
    for _ in 0..txns {
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO t(id, name, qty) VALUES (?1, 'some name', ?2)")
                .unwrap();
            for _ in 0..per_txn {
                next += 1;
                insert.execute(rusqlite::params![next, next % 97]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let rate = (txns * per_txn) as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let mut file = work.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    rate
}

#[test]
#[ignore = "measurement: cargo test --release --lib capture_cost -- --ignored --nocapture"]
fn capture_cost() {
    let dir = tempfile::tempdir().unwrap();
    let variants = variants("t");
    let templates: Vec<_> = variants
        .iter()
        .enumerate()
        .map(|(i, (_, edits))| {
            let path = dir.path().join(format!("v{i}.db"));
            set_up(&path, edits);
            path
        })
        .collect();
    let work = dir.path().join("work.db");
    for (txns, per_txn) in [(4_000, 1), (40, 1000)] {
        let mut best = vec![0f64; templates.len()];
        for _ in 0..ROUNDS {
            for (i, template) in templates.iter().enumerate() {
                best[i] = best[i].max(insert_rate(template, &work, txns, per_txn));
            }
        }
        println!("{per_txn}-row transactions (best of {ROUNDS} alternating rounds):");
        for (i, (name, _)) in variants.iter().enumerate() {
            println!(
                "  {name:14} {:>9.0} rows/s  {:.2}x plain  {:.3} µs a row over plain",
                best[i],
                best[0] / best[i],
                1e6 / best[i] - 1e6 / best[0]
            );
        }
    }
}
