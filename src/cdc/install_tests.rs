//! Tests of install/remove and of the triggers' behaviour (also through Debian's sqlite3 CLI).

use std::path::Path;
use std::process::Command;

use rusqlite::Connection;

use super::*;
use crate::catalog::discover::captured_tables;
use crate::cdc::triggers::install_script;
use crate::change::Value;
use crate::db::testutil::{TempDb, cache_misses, clock_rows, count, schema_memory};

const NODE: NodeId = NodeId(7);
const SQLITE_CLI: &str = "/usr/bin/sqlite3";

fn schema_version(conn: &Connection) -> i64 {
    count(conn, "PRAGMA schema_version")
}

fn objects(conn: &Connection) -> Vec<(String, String)> {
    let mut stmt = conn
        .prepare("SELECT type, name FROM sqlite_schema WHERE substr(name,1,15) != '__harmonylite__' ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

const APP: &str = r#"
    CREATE TABLE "order"(id INTEGER PRIMARY KEY, "group" TEXT, ver INT, node TEXT);
    CREATE TABLE "my table"(a TEXT, b INT, c, PRIMARY KEY(a, b)) WITHOUT ROWID;
    CREATE TABLE plain(x, y UNIQUE);
    CREATE INDEX plain_x ON plain(x);
    CREATE TRIGGER app_trigger AFTER INSERT ON plain BEGIN SELECT 1; END;
    CREATE VIEW app_view AS SELECT * FROM plain;
    CREATE VIRTUAL TABLE docs USING fts5(body);
    INSERT INTO "order" VALUES (1, 'a', 1, 'n'), (2, 'b', 2, 'm');
    INSERT INTO "my table" VALUES ('k', 1, x'00ff');
    INSERT INTO plain VALUES (1, 2), (3, 4), (5, 6);
    INSERT INTO docs VALUES ('hello');
"#;

#[test]
fn installs_baselines_and_is_idempotent() {
    let db = TempDb::new();
    let conn = db.open();
    conn.execute_batch(APP).unwrap();
    let info = install(&conn, NODE, &[]).unwrap();
    let names: Vec<&str> = info.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["my table", "order", "plain"]);
    assert_eq!(info.baselined, 6);
    assert!(info.changed);
    assert_eq!(info.tables[1].wire_key_columns(), ["id"]);
    assert!(info.tables[2].wire_key_columns().is_empty());

    // Distinct versions, all stamped by this node as origin.
    let clock = clock_rows(&conn, "plain");
    assert_eq!(clock.len(), 3);
    let vers: Vec<&Value> = clock.iter().map(|r| &r[1]).collect();
    assert!(vers.windows(2).all(|w| w[0] != w[1]));
    assert!(
        clock
            .iter()
            .all(|r| r[2] == Value::Integer(7) && r[3] == Value::Integer(7))
    );

    let v = schema_version(&conn);
    let again = install(&conn, NODE, &[]).unwrap();
    assert!(!again.changed);
    assert_eq!(again.baselined, 0);
    assert_eq!(again.schema_hash(), info.schema_hash());
    assert_eq!(
        schema_version(&conn),
        v,
        "re-install must not touch the schema"
    );
}

#[test]
fn triggers_stamp_one_clock_row_per_change() {
    let db = TempDb::new();
    let conn = db.open();
    conn.execute_batch(APP).unwrap();
    install(&conn, NODE, &[]).unwrap();
    conn.execute_batch(
        r#"INSERT INTO "order" VALUES (3, 'c', 0, '');
           UPDATE "order" SET "group" = 'z' WHERE id = 1;
           UPDATE "order" SET id = 10 WHERE id = 2;
           DELETE FROM "order" WHERE id = 3;"#,
    )
    .unwrap();
    let rows = clock_rows(&conn, "order");
    let state: Vec<(i64, i64)> = rows
        .iter()
        .map(|r| match (&r[0], &r[4]) {
            (Value::Integer(k), Value::Integer(d)) => (*k, *d),
            other => panic!("{other:?}"),
        })
        .collect();
    // Ordered by version: baseline of 1 and 2 was replaced by later stamps.
    assert_eq!(state, [(1, 0), (2, 1), (10, 0), (3, 1)]);

    // Guarded writes are not stamped.
    let before = clock_rows(&conn, "order");
    conn.execute_batch(
        r#"BEGIN; INSERT INTO "__harmonylite__guard" VALUES (1);
           INSERT INTO "order" VALUES (99, 'x', 0, '');
           DELETE FROM "order" WHERE id = 1;
           DELETE FROM "__harmonylite__guard"; COMMIT;"#,
    )
    .unwrap();
    assert_eq!(clock_rows(&conn, "order"), before);
}

#[test]
fn nocase_key_keeps_the_table_spelling() {
    let db = TempDb::new();
    let conn = db.open();
    conn.execute_batch("CREATE TABLE n(k TEXT PRIMARY KEY COLLATE NOCASE, v);")
        .unwrap();
    install(&conn, NODE, &[]).unwrap();
    conn.execute_batch("INSERT INTO n VALUES ('Abc', 1); UPDATE n SET k = 'ABC';")
        .unwrap();
    let rows = clock_rows(&conn, "n");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], Value::text("ABC"));
}

#[test]
fn nullable_keys_are_not_captured() {
    let db = TempDb::new();
    let conn = db.open();
    conn.execute_batch("CREATE TABLE n(k TEXT PRIMARY KEY, v); INSERT INTO n VALUES (NULL, 0);")
        .unwrap();
    install(&conn, NODE, &[]).unwrap();
    conn.execute_batch(
        "INSERT INTO n VALUES (NULL, 1); INSERT INTO n VALUES ('a', 2); DELETE FROM n WHERE v = 0;",
    )
    .unwrap();
    assert_eq!(clock_rows(&conn, "n").len(), 1);
}

#[test]
fn schema_changes_rebuild_what_they_must() {
    let db = TempDb::new();
    let conn = db.open();
    conn.execute_batch(
        "CREATE TABLE t(a INT PRIMARY KEY, b); INSERT INTO t VALUES (1, 1), (2, 2);",
    )
    .unwrap();
    let first = install(&conn, NODE, &[]).unwrap();
    // A new column: triggers and clock stay, the hash moves.
    conn.execute_batch("ALTER TABLE t ADD COLUMN c DEFAULT 5;")
        .unwrap();
    let v = schema_version(&conn);
    let added = install(&conn, NODE, &[]).unwrap();
    assert!(!added.changed);
    assert_ne!(added.schema_hash(), first.schema_hash());
    assert_eq!(schema_version(&conn), v);
    // The key moves to b: the clock is rebuilt and every row baselined again, below every
    // real write (crate::cdc::baseline).
    conn.execute_batch(
        "CREATE TABLE t2(a INT, b PRIMARY KEY, c); INSERT INTO t2 SELECT * FROM t; \
         DROP TABLE t; ALTER TABLE t2 RENAME TO t;",
    )
    .unwrap();
    let rebuilt = install(&conn, NODE, &[]).unwrap();
    assert!(rebuilt.changed);
    assert_eq!(rebuilt.baselined, 2);
    assert_eq!(rebuilt.tables[0].wire_key_columns(), ["b"]);
    assert_eq!(
        count(&conn, r#"SELECT MAX(ver) FROM "__harmonylite__t_clock""#),
        2
    );
    // Ignoring the table drops its capture.
    let ignored = install(&conn, NODE, &["T".into()]).unwrap();
    assert!(ignored.tables.is_empty());
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '%t_clock%' OR type = 'trigger'"
        ),
        0
    );
}

/// Versions the capture log holds for `table`, in append order.
fn logged_versions(conn: &Connection, table: &str) -> Vec<i64> {
    let q = format!(
        "SELECT ver FROM {} ORDER BY seq",
        crate::sql::quote_ident(&crate::cdc::triggers::log_table(table))
    );
    let mut stmt = conn.prepare(&q).unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The install folds what the triggers logged before anything reads the clock: a re-install
/// after `ALTER TABLE … ADD COLUMN` keeps the logged versions (no new baseline), and a start on
/// a format-2 database (no logs; unpublished changes are clock rows) keeps every unpublished
/// change pending for the publisher.
#[test]
fn reinstall_and_migration_keep_unfolded_and_unpublished_changes() {
    let db = TempDb::new();
    let conn = db.open();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    install(&conn, NODE, &[]).unwrap();
    conn.execute_batch("INSERT INTO t VALUES (1, 'a'), (2, 'b');")
        .unwrap();
    let logged = logged_versions(&conn, "t");
    assert_eq!(logged.len(), 2);

    conn.execute_batch("ALTER TABLE t ADD COLUMN w DEFAULT 0;")
        .unwrap();
    let info = install(&conn, NODE, &[]).unwrap();
    assert_eq!(info.baselined, 0);
    assert!(
        logged_versions(&conn, "t").is_empty(),
        "folded by the install"
    );
    let clock: Vec<i64> = clock_rows(&conn, "t")
        .iter()
        .map(|r| match r[1] {
            Value::Integer(v) => v,
            ref other => panic!("version {other:?}"),
        })
        .collect();
    assert_eq!(clock, logged);

    // What a format-2 database looks like: unpublished changes are clock rows, there is no
    // log table, and the triggers (format 2's wrote the clock) are replaced by the install.
    conn.execute_batch("INSERT INTO t(id, v) VALUES (3, 'c');")
        .unwrap();
    crate::db::testutil::fold_all(&conn);
    for kind in crate::cdc::triggers::TriggerKind::ALL {
        conn.execute_batch(&format!(
            "DROP TRIGGER {}",
            crate::sql::quote_ident(&crate::cdc::triggers::trigger_name("t", kind))
        ))
        .unwrap();
    }
    conn.execute_batch(
        r#"DROP TABLE "__harmonylite__t_changes";
           UPDATE "__harmonylite__state" SET value = 2 WHERE key = 'format';"#,
    )
    .unwrap();
    install(&conn, NODE, &[]).unwrap();
    assert_eq!(
        count(
            &conn,
            r#"SELECT value FROM "__harmonylite__state" WHERE key = 'format'"#
        ),
        crate::sql::internal::FORMAT_VERSION
    );
    // Nothing was published yet: the publisher's scan finds all three rows, and a new write
    // goes through the new log.
    conn.execute_batch("INSERT INTO t(id, v) VALUES (4, 'd');")
        .unwrap();
    assert_eq!(logged_versions(&conn, "t").len(), 1);
    let mut reader = crate::db::Reader::open(&db.path).unwrap();
    assert_eq!(reader.scan(NODE, 100).unwrap().row_count(), 4);
}

#[test]
fn recreated_table_is_reconciled() {
    let db = TempDb::new();
    let conn = db.open();
    conn.execute_batch(
        "CREATE TABLE t(a INT PRIMARY KEY, b); INSERT INTO t VALUES (1, 1), (2, 2);",
    )
    .unwrap();
    install(&conn, NODE, &[]).unwrap();
    conn.execute_batch(
        "DROP TABLE t; CREATE TABLE t(a INT PRIMARY KEY, b); INSERT INTO t VALUES (2, 2), (3, 3);",
    )
    .unwrap();
    let info = install(&conn, NODE, &[]).unwrap();
    assert_eq!(info.baselined, 1);
    let state: Vec<(Value, Value)> = clock_rows(&conn, "t")
        .into_iter()
        .map(|r| (r[0].clone(), r[4].clone()))
        .collect();
    // 2 kept its stamp; 3 stamped; 1 vanished and is tombstoned with the newest version.
    assert_eq!(
        state,
        [
            (Value::Integer(2), Value::Integer(0)),
            (Value::Integer(3), Value::Integer(0)),
            (Value::Integer(1), Value::Integer(1)),
        ]
    );
}

#[test]
fn takes_over_a_go_database() {
    let db = TempDb::new();
    let conn = db.open();
    conn.execute_batch(
        r#"CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
           INSERT INTO t VALUES (1, 'a'), (2, 'b');
           CREATE TABLE "__harmonylite__t_change_log"(id INTEGER PRIMARY KEY, val_id, val_v, type TEXT, state INT);
           CREATE TABLE "__harmonylite___change_log_global"(id INTEGER PRIMARY KEY, change_table_id INT, table_name TEXT);
           CREATE TRIGGER "__harmonylite__t_change_log_on_insert" AFTER INSERT ON t BEGIN
               INSERT INTO "__harmonylite__t_change_log"(val_id, val_v, type, state) VALUES (NEW.id, NEW.v, 'insert', 0);
           END;"#,
    )
    .unwrap();
    let info = install(&conn, NODE, &[]).unwrap();
    assert_eq!(info.baselined, 2);
    let left = count(
        &conn,
        "SELECT count(*) FROM sqlite_schema WHERE name IN ('__harmonylite__t_change_log', \
         '__harmonylite___change_log_global', '__harmonylite__t_change_log_on_insert')",
    );
    assert_eq!(left, 0);
    conn.execute("INSERT INTO t VALUES (3, 'c')", []).unwrap();
    assert_eq!(clock_rows(&conn, "t").len(), 3);
}

#[test]
fn remove_all_leaves_the_application_alone() {
    let db = TempDb::new();
    let mut conn = db.open();
    conn.execute_batch(APP).unwrap();
    let before = objects(&conn);
    install(&conn, NODE, &[]).unwrap();
    let report = remove_all(&mut conn).unwrap();
    assert_eq!(report.triggers, 12);
    assert_eq!(
        report.tables,
        3 + 3 + crate::sql::internal::INTERNAL_TABLES.len(),
        "three clocks, three capture logs and ours"
    );
    assert_eq!(objects(&conn), before);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM sqlite_schema WHERE substr(name,1,15) = '__harmonylite__'"
        ),
        0
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM plain"), 3);
}

/// Runs the generated DDL and DML through Debian's sqlite3 (3.40) with `trusted_schema=OFF`,
/// as an application's own engine would.
#[test]
fn trigger_sql_runs_on_debian_sqlite3() {
    assert!(
        Path::new(SQLITE_CLI).exists(),
        "{SQLITE_CLI} is missing: install Debian's sqlite3 (scripts/test.sh does)"
    );
    let db = TempDb::new();
    let schema = r#"CREATE TABLE "order"(id INTEGER PRIMARY KEY, "group" TEXT, ver INT);
                    CREATE TABLE "my table"(a TEXT COLLATE NOCASE, b INT, c, PRIMARY KEY(a, b)) WITHOUT ROWID;
                    CREATE TABLE plain(x, y);
                    CREATE TABLE "q""t"("node" TEXT, "ver" INT, "k""y", PRIMARY KEY("node", "ver", "k""y"));"#;
    let scratch = Connection::open_in_memory().unwrap();
    scratch.execute_batch(schema).unwrap();
    crate::sql::internal::create_internal(&scratch).unwrap();
    let (tables, _) = captured_tables(&scratch, &[]).unwrap();
    let mut script = String::from("PRAGMA trusted_schema = OFF;\n.bail on\n");
    script.push_str(schema);
    script.push('\n');
    script.push_str(r#"CREATE TABLE "__harmonylite__guard"(x);"#);
    script.push('\n');
    for t in &tables {
        script.push_str(&install_script(t, NODE));
    }
    script.push_str(
        r#"INSERT INTO "order" VALUES (1, 'a', 0), (2, 'b', 0);
           UPDATE "order" SET "group" = 'c' WHERE id = 1;
           UPDATE "order" SET id = 20 WHERE id = 2;
           DELETE FROM "order" WHERE id = 1;
           INSERT INTO "my table" VALUES ('k', 1, 'v');
           UPDATE "my table" SET a = 'K2', b = 2;
           INSERT INTO plain VALUES (1, 2);
           UPDATE plain SET rowid = 5;
           BEGIN; INSERT INTO "__harmonylite__guard" VALUES (1);
           INSERT INTO plain VALUES (9, 9); UPDATE "order" SET "group" = 'g';
           DELETE FROM "__harmonylite__guard"; COMMIT;
           INSERT INTO "q""t" VALUES ('n', 1, 'z');
           UPDATE "q""t" SET "k""y" = 'moved';
           SELECT sqlite_version();"#,
    );
    let version = run_sqlite3_cli(&db.path, &script);
    println!("sqlite3 CLI version {version}");

    let conn = Connection::open(&db.path).unwrap();
    assert_eq!(
        clock_summary(&conn, "order"),
        [
            (Value::Integer(2), 1),
            (Value::Integer(20), 0),
            (Value::Integer(1), 1)
        ]
    );
    assert_eq!(
        clock_summary(&conn, "my table"),
        [(Value::text("k"), 1), (Value::text("K2"), 0)]
    );
    assert_eq!(
        clock_summary(&conn, "plain"),
        [(Value::Integer(1), 1), (Value::Integer(5), 0)]
    );
    // The versions came from the wall clock of the CLI's process.
    let ver = count(
        &conn,
        r#"SELECT MAX(ver) FROM "__harmonylite__order_clock""#,
    ) as u64;
    let age = crate::hlc::now_ms().abs_diff(crate::hlc::Hlc(ver).wall_ms());
    assert!(age < 60_000, "version {ver} is {age} ms away from now");
}

/// Runs `script` through Debian's sqlite3 shell on `path`; returns its standard output.
fn run_sqlite3_cli(path: &Path, script: &str) -> String {
    let out = Command::new(SQLITE_CLI)
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "sqlite3 failed: {stderr}"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `(first key value, deleted)` of every clock row of `table`, checking each was stamped by
/// the node id baked into the triggers.
fn clock_summary(conn: &Connection, table: &str) -> Vec<(Value, i64)> {
    clock_rows(conn, table)
        .into_iter()
        .map(|r| {
            let n = r.len();
            let Value::Integer(d) = r[n - 1] else {
                panic!("deleted flag")
            };
            assert_eq!(
                r[n - 3],
                Value::Integer(7),
                "stamped by the baked-in node id"
            );
            (r[0].clone(), d)
        })
        .collect()
}

/// Prints what capture costs the application's writes (no assertions: timing is noisy).
/// `cargo test --release --lib capture_overhead -- --ignored --nocapture`
#[test]
#[ignore = "measurement, prints numbers"]
fn capture_overhead() {
    use std::time::Instant;
    const ROWS: usize = 3000;
    let run = |variant: &str, per_tx: usize| -> (f64, f64) {
        let db = TempDb::new();
        let mut conn = db.open();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INT);")
            .unwrap();
        if variant != "plain" {
            install(&conn, NODE, &[]).unwrap();
        }
        let start = Instant::now();
        for chunk in 0..ROWS / per_tx {
            let tx = conn.transaction().unwrap();
            for i in 0..per_tx {
                let id = (chunk * per_tx + i) as i64;
                tx.prepare_cached("INSERT INTO t VALUES (?1, 'some text value', ?1)")
                    .unwrap()
                    .execute([id])
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        for chunk in 0..ROWS / per_tx {
            let tx = conn.transaction().unwrap();
            for i in 0..per_tx {
                let id = (chunk * per_tx + i) as i64;
                tx.prepare_cached("UPDATE t SET n = n + 1 WHERE id = ?1")
                    .unwrap()
                    .execute([id])
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let written = start.elapsed().as_secs_f64() * 1e6 / (2 * ROWS) as f64;
        // What the engine pays later, off the commit path: folding the log into the clock.
        let start = Instant::now();
        crate::db::testutil::fold_all(&conn);
        let folded = start.elapsed().as_secs_f64() * 1e6 / (2 * ROWS) as f64;
        (written, folded)
    };
    for per_tx in [1, 1000] {
        let (plain, _) = run("plain", per_tx);
        for variant in ["plain", "captured"] {
            let (us, fold) = run(variant, per_tx);
            println!(
                "{per_tx:>5} rows/tx  {variant:<10} {us:8.2} µs/write  {:.2}x   fold {fold:.2} µs/row",
                us / plain
            );
        }
    }
}

/// A version near `i64::MAX` (once applied from a hostile message) used to make the trigger's
/// `MAX(ver) + 1` overflow into a REAL, and every reader of the clock failed after.
#[test]
fn versions_saturate_instead_of_overflowing() {
    let db = TempDb::new();
    let conn = db.open();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    install(&conn, NODE, &[]).unwrap();
    conn.execute_batch(&format!(
        r#"INSERT INTO "__harmonylite__t_clock"(k0, ver, node, origin, deleted)
           VALUES (1, {}, 9, 9, 0);"#,
        i64::MAX - 1
    ))
    .unwrap();
    conn.execute_batch(
        "INSERT INTO t VALUES (2, 'a'); UPDATE t SET v = 'b' WHERE id = 2; \
         INSERT INTO t VALUES (3, 'c');",
    )
    .unwrap();
    // Readers work before the fold too: a scan returns the local rows from the capture log.
    let mut reader = crate::db::Reader::open(&db.path).unwrap();
    assert_eq!(reader.scan(NODE, 100).unwrap().row_count(), 2);
    crate::db::testutil::fold_all(&conn);
    let reals = count(
        &conn,
        r#"SELECT count(*) FROM "__harmonylite__t_clock" WHERE typeof(ver) <> 'integer'"#,
    );
    assert_eq!(reals, 0);
    let top = count(&conn, r#"SELECT MAX(ver) FROM "__harmonylite__t_clock""#);
    assert_eq!(top, i64::MAX, "saturated at the largest version");
    // Readers work: a scan returns the local rows.
    let mut reader = crate::db::Reader::open(&db.path).unwrap();
    assert_eq!(reader.scan(NODE, 100).unwrap().row_count(), 2);
}

/// A clock already poisoned by the old overflow (REAL versions) is repaired by the next install.
#[test]
fn a_clock_poisoned_by_the_old_overflow_is_repaired_on_install() {
    let db = TempDb::new();
    let conn = db.open();
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    )
    .unwrap();
    install(&conn, NODE, &[]).unwrap();
    conn.execute_batch(r#"UPDATE "__harmonylite__t_clock" SET ver = 9.3e18"#)
        .unwrap();
    let mut reader = crate::db::Reader::open(&db.path).unwrap();
    assert!(
        reader.scan(NODE, 100).is_ok(),
        "readers tolerate a REAL version"
    );
    install(&conn, NODE, &[]).unwrap();
    let kinds = count(
        &conn,
        r#"SELECT count(*) FROM "__harmonylite__t_clock" WHERE typeof(ver) = 'integer' AND ver = 9223372036854775807"#,
    );
    assert_eq!(kinds, 1);
}

/// Bytes of schema memory `conn` holds, after reading the schema.
fn schema_bytes(conn: &Connection) -> i64 {
    count(conn, "SELECT count(*) FROM sqlite_schema");
    schema_memory(conn)
}

#[test]
fn capture_keeps_the_schema_every_connection_holds_bounded() {
    // Every connection to the database parses its whole schema and keeps it: about 21.5 KB a
    // captured three-column table (four triggers, each with the version expression written
    // out), 21.5 MB a connection at 1,000 tables (issue 18). A change to the capture schema
    // that makes it larger fails here. Moving the expression into one view a table halved it
    // but cost 1000-row insert transactions about 40 % (docs/benchmarks.md, Scale).
    const TABLES: usize = 100;
    let db = TempDb::new();
    let conn = db.open();
    let ddl: String = (0..TABLES)
        .map(|i| format!("CREATE TABLE tab{i}(id INTEGER PRIMARY KEY, v TEXT, n INTEGER);"))
        .collect();
    conn.execute_batch(&ddl).unwrap();
    install(&conn, NODE, &[]).unwrap();
    let fresh = db.open();
    let per_table = schema_bytes(&fresh) / TABLES as i64;
    assert!(
        per_table < 24 * 1024,
        "{per_table} bytes of schema memory a captured table"
    );
}

/// Every `CREATE` scans `sqlite_schema`; a first install on many tables must not read the schema
/// table from the file again for each one (it did once the schema outgrew the page cache), and
/// gives the connection its own cache size back.
#[test]
fn a_first_install_on_many_tables_reads_the_schema_from_its_cache() {
    let db = TempDb::new();
    let conn = db.open();
    let tables: String = (0..300)
        .map(|i| format!("CREATE TABLE t{i}(id INTEGER PRIMARY KEY, v TEXT);"))
        .collect();
    conn.execute_batch(&tables).unwrap();
    // A cache far smaller than the schema will be (about 1 MB of capture SQL).
    conn.execute_batch("PRAGMA cache_size = -200").unwrap();
    cache_misses(&conn);
    install(&conn, NODE, &[]).unwrap();
    let misses = cache_misses(&conn);
    let pages = count(&conn, "PRAGMA page_count");
    // Each page read about once; with the small cache it was some 2,400 scans of ~300 pages.
    assert!(
        misses < 3 * pages,
        "{misses} pages read from the file for a database of {pages}"
    );
    assert_eq!(count(&conn, "PRAGMA cache_size"), -200);
}
