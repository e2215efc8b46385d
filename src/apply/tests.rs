//! Applier tests: two or three replicas exchanging real scanned, encoded and decoded batches.

use rusqlite::Connection;

use super::*;
use crate::cdc::install;
use crate::change::{self, Value};
use crate::db::Reader;
use crate::db::testutil::{TempDb, count};
use crate::ids::NodeId;
use crate::replication::wire;

/// One node: its database, the engine's connection (the applier's), the application's own
/// connection (local writes: the engine's never writes the application's rows outside the
/// capture guard, and runs no triggers while only capture's exist), applier and reader.
pub(crate) struct Replica {
    pub db: TempDb,
    pub conn: Connection,
    pub app: Connection,
    pub node: NodeId,
    pub applier: Applier,
    reader: Reader,
    seq: u64,
}

impl Replica {
    pub fn new(node: u64, schema: &str) -> Replica {
        let db = TempDb::new();
        let conn = db.open();
        conn.execute_batch(schema).unwrap();
        install(&conn, NodeId(node), &[]).unwrap();
        let reader = Reader::open(&db.path).unwrap();
        Replica {
            app: db.open(),
            db,
            conn,
            node: NodeId(node),
            applier: Applier::new(),
            reader,
            seq: 0,
        }
    }

    /// A replica over an existing database file (capture already installed).
    pub fn open(dir: tempfile::TempDir, path: std::path::PathBuf, node: u64) -> Replica {
        let db = TempDb { dir, path };
        let conn = db.open();
        let reader = Reader::open(&db.path).unwrap();
        Replica {
            app: db.open(),
            db,
            conn,
            node: NodeId(node),
            applier: Applier::new(),
            reader,
            seq: 0,
        }
    }

    pub fn exec(&self, sql: &str) {
        self.app
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Scans everything local into encoded messages (small scans, alternating compression) and
    /// records the watermarks.
    pub fn publish(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let scan = self.reader.scan(self.node, 7).unwrap();
            if scan.tables.is_empty() && scan.watermarks.is_empty() {
                assert_eq!(scan.pending, 0);
                return out;
            }
            let batch = change::ChangeBatch {
                origin: self.node,
                schema_hash: "test".into(),
                tables: scan.tables,
            };
            let compress = out.len() % 2 == 0;
            out.extend(wire::encode_within(batch, compress, 1 << 20).unwrap());
            crate::cdc::mark_published(&self.conn, &scan.watermarks, scan.schema_version).unwrap();
        }
    }

    pub fn receive(&mut self, msgs: &[Vec<u8>]) -> ApplyReport {
        let batches: Vec<ChangeBatch> = msgs.iter().map(|m| wire::decode(m).unwrap()).collect();
        self.seq += msgs.len() as u64;
        let work = ApplyWork {
            batches,
            positions: vec![StreamPosition {
                stream: "harmonylite-changes-0".into(),
                incarnation: "test".into(),
                position: crate::position::Position::at(self.seq),
            }],
            horizon_ms: None,
        };
        self.applier.apply(&self.conn, &work).unwrap()
    }

    /// `quote()` of every value of every row, sorted: a byte-exact content comparison.
    pub fn content(&self, table: &str) -> Vec<String> {
        let cols: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare(&format!("PRAGMA table_info({})", quote_ident(table)))
                .unwrap();
            stmt.query_map([], |r| r.get::<_, String>(1))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let expr: Vec<String> = cols
            .iter()
            .map(|c| format!("typeof({0}) || ':' || hex({0})", quote_ident(c)))
            .collect();
        let q = format!(
            "SELECT {} FROM {}",
            expr.join(" || '|' || "),
            quote_ident(table)
        );
        let mut stmt = self.conn.prepare(&q).unwrap();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        rows
    }

    pub fn conflicts(&self, kind: &str) -> i64 {
        self.conn
            .query_row(
                "SELECT count(*) FROM __harmonylite__conflicts WHERE kind = ?1",
                [kind],
                |r| r.get(0),
            )
            .unwrap()
    }
}

const ODD: &str = r#"
    CREATE TABLE "order"(id INTEGER PRIMARY KEY, "group" TEXT, ver INT, node TEXT, "we""ird" BLOB);
    CREATE TABLE "group"(a TEXT, b INT, c, PRIMARY KEY(a, b)) WITHOUT ROWID;
    CREATE TABLE "my table"(x, y);
    CREATE TABLE vals(k INTEGER PRIMARY KEY, v);
    CREATE TABLE "q""t"("node" TEXT, "ver" INT, "k""y", PRIMARY KEY("node", "ver", "k""y"));
"#;

fn pair(schema: &str) -> (Replica, Replica) {
    (Replica::new(1, schema), Replica::new(2, schema))
}

fn sync(from: &mut Replica, to: &mut Replica) -> ApplyReport {
    let msgs = from.publish();
    to.receive(&msgs)
}

fn assert_same(a: &Replica, b: &Replica, tables: &[&str]) {
    for t in tables {
        assert_eq!(a.content(t), b.content(t), "table {t} differs");
    }
}

#[test]
fn every_value_type_round_trips_byte_for_byte() {
    let (mut a, mut b) = pair(ODD);
    a.exec(
        r#"INSERT INTO vals VALUES
             (1, NULL), (2, -9223372036854775808), (3, 9223372036854775807), (4, 1.5), (5, -0.0),
             (6, 'nul' || char(0) || 'ctl' || char(1, 10, 13, 127) || '🦀'), (7, CAST(x'ff00fe' AS TEXT)),
             (8, x'00ff'), (9, ''), (10, x''), (11, 1e308), (12, 'plain');"#,
    );
    let report = sync(&mut a, &mut b);
    assert_eq!(report.applied, 12);
    assert_same(&a, &b, &["vals"]);
    assert!(b.content("vals").iter().any(|r| r.contains("text:FF00FE")));
}

#[test]
fn odd_identifiers_composite_and_rowid_keys() {
    let (mut a, mut b) = pair(ODD);
    a.exec(
        r#"INSERT INTO "order" VALUES (1, 'g', 5, 'n', x'01'), (2, 'h', 6, 'm', NULL);
           INSERT INTO "group" VALUES ('k', 1, 'v'), ('k', 2, 'w');
           INSERT INTO "my table" VALUES (1, 2), (3, 4);
           INSERT INTO "q""t" VALUES ('n', 1, 'z'), ('n', 2, x'00');"#,
    );
    sync(&mut a, &mut b);
    assert_same(&a, &b, &["order", "group", "my table", "q\"t"]);
    assert_eq!(
        count(
            &b.conn,
            r#"SELECT count(*) FROM "__harmonylite__my table_clock" WHERE node = 1"#
        ),
        2
    );
    a.exec(
        r#"UPDATE "order" SET "we""ird" = x'02', ver = 7 WHERE id = 1;
           DELETE FROM "group" WHERE b = 2;
           UPDATE "my table" SET y = 40 WHERE x = 3;
           DELETE FROM "my table" WHERE x = 1;
           UPDATE "q""t" SET "k""y" = 'moved' WHERE "ver" = 1;
           DELETE FROM "q""t" WHERE "ver" = 2;"#,
    );
    sync(&mut a, &mut b);
    assert_same(&a, &b, &["order", "group", "my table", "q\"t"]);
    assert_eq!(b.content("q\"t"), ["text:6E|integer:31|text:6D6F766564"]);
    // B's applied rows were not stamped as B's own.
    assert!(b.publish().is_empty());
}

#[test]
fn key_change_moves_the_row() {
    let (mut a, mut b) = pair(ODD);
    a.exec(r#"INSERT INTO "group" VALUES ('k', 1, 'v'); INSERT INTO "my table" VALUES (1, 1);"#);
    sync(&mut a, &mut b);
    a.exec(r#"UPDATE "group" SET a = 'moved', b = 9; UPDATE "my table" SET rowid = 50;"#);
    sync(&mut a, &mut b);
    assert_same(&a, &b, &["group", "my table"]);
    assert_eq!(count(&b.conn, r#"SELECT count(*) FROM "group""#), 1);
    assert_eq!(count(&b.conn, r#"SELECT rowid FROM "my table""#), 50);
}

#[test]
fn redelivery_and_old_versions_are_stale() {
    let (mut a, mut b) = pair(ODD);
    a.exec("INSERT INTO vals VALUES (1, 'one');");
    let first = a.publish();
    a.exec("UPDATE vals SET v = 'two';");
    let second = a.publish();
    assert_eq!(b.receive(&second).applied, 1);
    let again = b.receive(&[first.clone(), second.clone()].concat());
    assert_eq!((again.applied, again.stale), (0, 2));
    assert_same(&a, &b, &["vals"]);
}

/// Applied rows run the application's own triggers, as the origin's write did, and no trigger
/// at all while capture's are the only ones; either way nothing applied is captured again.
#[test]
fn applied_rows_run_the_applications_triggers_and_are_never_captured() {
    use rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER as TRIGGERS;
    let (mut a, mut b) = pair("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
    let logged = |r: &Replica| {
        let log = crate::cdc::triggers::log_table("t");
        count(
            &r.conn,
            &format!("SELECT count(*) FROM {}", quote_ident(&log)),
        )
    };
    a.exec("INSERT INTO t VALUES (1, 'x')");
    assert_eq!(sync(&mut a, &mut b).applied, 1);
    assert!(
        !b.conn.db_config(TRIGGERS).unwrap(),
        "capture's triggers ran for applied rows"
    );
    assert_eq!(logged(&b), 0);

    b.exec(
        "CREATE TABLE audit(id INTEGER);
         CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN INSERT INTO audit VALUES (NEW.id); END;",
    );
    a.exec("INSERT INTO t VALUES (2, 'y')");
    assert_eq!(sync(&mut a, &mut b).applied, 1);
    assert!(b.conn.db_config(TRIGGERS).unwrap());
    assert_eq!(
        count(&b.conn, "SELECT count(*) FROM audit"),
        1,
        "the application's trigger did not run"
    );
    assert_eq!(logged(&b), 0, "an applied row was captured");
    // A local write (the application's connection) is captured as ever.
    b.exec("INSERT INTO t VALUES (3, 'z')");
    assert_eq!(logged(&b), 1);
    assert_eq!(count(&b.conn, "SELECT count(*) FROM audit"), 2);

    b.exec("DROP TRIGGER t_audit");
    a.exec("INSERT INTO t VALUES (4, 'w')");
    assert_eq!(sync(&mut a, &mut b).applied, 1);
    assert!(!b.conn.db_config(TRIGGERS).unwrap());
    // The one row b publishes as its own is its local write.
    let own = b.reader.scan(b.node, 100).unwrap();
    let keys: Vec<&Value> = own
        .tables
        .iter()
        .flat_map(|t| &t.rows)
        .map(|r| &r.key[0])
        .collect();
    assert_eq!(keys, [&Value::Integer(3)]);
}

#[test]
fn concurrent_writes_converge_on_the_higher_version() {
    let (mut a, mut b) = pair(ODD);
    a.exec("INSERT INTO vals VALUES (1, 'a'), (2, 'a');");
    sync(&mut a, &mut b);
    b.exec("UPDATE vals SET v = 'b' WHERE k = 1; DELETE FROM vals WHERE k = 2;");
    a.exec("UPDATE vals SET v = 'a2';");
    let from_a = a.publish();
    let from_b = b.publish();
    a.receive(&from_b);
    b.receive(&from_a);
    assert_same(&a, &b, &["vals"]);
}

const KV: &str = "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);";

/// Issue 19: `-cleanup` on a node that missed changes, then a restart (capture installed over
/// its rows). Its baselined rows fill keys the others lack but never override a newer change
/// or bring back a deleted row; replaying what it missed converges it.
#[test]
fn a_cleaned_lagging_node_never_wins_with_stale_rows() {
    let (mut a, mut b) = pair(KV);
    a.exec("INSERT INTO kv VALUES (1, 'a1'), (2, 'a2'), (3, 'a3');");
    sync(&mut a, &mut b);
    a.exec("UPDATE kv SET v = 'new' WHERE k = 1; DELETE FROM kv WHERE k = 2;");
    let missed_by_b = a.publish();
    crate::cdc::remove_all(&mut b.conn).unwrap();
    b.exec("INSERT INTO kv VALUES (4, 'b4');");
    let reinstalled = install(&b.conn, b.node, &[]).unwrap();
    assert_eq!(reinstalled.baselined, 4);

    let baseline = b.publish();
    assert!(!baseline.is_empty(), "baselined rows are published");
    a.receive(&baseline);
    assert_eq!(
        a.content("kv"),
        [
            "integer:31|text:6E6577",
            "integer:33|text:6133",
            "integer:34|text:6234"
        ],
        "b's stale 1 and deleted 2 lost; its new 4 arrived"
    );
    b.receive(&missed_by_b);
    assert_same(&a, &b, &["kv"]);
}

/// A table dropped and recreated while capture was off (triggers gone, clock kept): rows
/// without a clock row are baselined below the watermark the publisher already passed, and are
/// published all the same; vanished rows are deleted everywhere.
#[test]
fn a_reinstall_publishes_rows_baselined_below_the_watermark() {
    let (mut a, mut b) = pair(KV);
    a.exec("INSERT INTO kv VALUES (1, 'a1'), (2, 'a2'); UPDATE kv SET v = 'x' WHERE k = 2;");
    sync(&mut a, &mut b);
    a.exec("DROP TABLE kv; CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);");
    a.exec("INSERT INTO kv VALUES (1, 'a1'), (5, 'a5');");
    assert_eq!(install(&a.conn, a.node, &[]).unwrap().baselined, 1);
    sync(&mut a, &mut b);
    assert_same(&a, &b, &["kv"]);
    assert_eq!(b.content("kv").len(), 2);
}

/// The publisher records a scan's watermarks after publishing; a re-install in between may have
/// baselined rows below them, so those marks are dropped rather than recorded.
#[test]
fn marks_scanned_before_a_reinstall_are_not_recorded() {
    let (mut a, _) = pair(KV);
    a.exec("INSERT INTO kv VALUES (1, 'a1');");
    let scan = a.reader.scan(a.node, 100).unwrap();
    a.exec("DROP TABLE kv; CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);");
    a.exec("INSERT INTO kv VALUES (1, 'a1'), (7, 'a7');");
    install(&a.conn, a.node, &[]).unwrap();
    crate::cdc::mark_published(&a.conn, &scan.watermarks, scan.schema_version).unwrap();
    let rows: Vec<ChangeBatch> = a
        .publish()
        .iter()
        .map(|m| wire::decode(m).unwrap())
        .collect();
    let keys: Vec<&Value> = rows
        .iter()
        .flat_map(|b| &b.tables)
        .flat_map(|t| &t.rows)
        .map(|r| &r.key[0])
        .collect();
    assert!(keys.contains(&&Value::Integer(7)), "{keys:?}");
}

#[test]
fn missing_tables_and_schema_drift() {
    let mut a = Replica::new(
        1,
        "CREATE TABLE t(k INTEGER PRIMARY KEY, v, extra); CREATE TABLE only_a(x);",
    );
    let mut b = Replica::new(
        2,
        "CREATE TABLE t(k INTEGER PRIMARY KEY, v, newer DEFAULT 'd');",
    );
    a.exec("INSERT INTO t VALUES (1, 'x', 'e'); INSERT INTO only_a VALUES (1), (2);");
    let report = sync(&mut a, &mut b);
    assert_eq!(report.applied, 1);
    assert_eq!(report.missing_table, 2);
    assert_eq!(report.skipped_columns, 1);
    assert_eq!(b.conflicts("missing_table"), 1);
    assert_eq!(b.content("t"), ["integer:31|text:78|text:64"]);
}

#[test]
fn constraint_errors_skip_the_row_not_the_batch() {
    let mut a = Replica::new(1, "CREATE TABLE t(k INTEGER PRIMARY KEY, v);");
    let mut b = Replica::new(2, "CREATE TABLE t(k INTEGER PRIMARY KEY, v CHECK (v > 0));");
    a.exec("INSERT INTO t VALUES (1, 5), (2, -1), (3, 7);");
    let report = sync(&mut a, &mut b);
    assert_eq!((report.applied, report.errors), (2, 1));
    assert_eq!(b.conflicts("apply_error"), 1);
    assert_eq!(count(&b.conn, "SELECT count(*) FROM t"), 2);
}

#[test]
fn independent_inserts_of_one_rowid_are_journaled() {
    let schema = "CREATE TABLE log(msg);";
    let (mut a, mut b) = pair(schema);
    a.exec("INSERT INTO log VALUES ('from a');");
    b.exec("INSERT INTO log VALUES ('from b');");
    let from_a = a.publish();
    let from_b = b.publish();
    a.receive(&from_b);
    b.receive(&from_a);
    assert_same(&a, &b, &["log"]);
    // Exactly one side lost its row and journaled it.
    assert_eq!(
        a.conflicts("key_collision") + b.conflicts("key_collision"),
        1
    );
}

#[test]
fn unique_conflicts_park_the_older_row_and_restore_it() {
    let schema = "CREATE TABLE u(k INTEGER PRIMARY KEY, email TEXT UNIQUE COLLATE NOCASE, n);";
    let (mut a, mut b) = pair(schema);
    a.exec("INSERT INTO u VALUES (1, 'x@y', 'a');");
    b.exec("INSERT INTO u VALUES (2, 'X@Y', 'b');"); // newer: stamped after a's
    let from_a = a.publish();
    let from_b = b.publish();
    let ra = a.receive(&from_b);
    let rb = b.receive(&from_a);
    assert_eq!((ra.parked, rb.parked), (1, 1));
    assert_same(&a, &b, &["u"]);
    assert_eq!(count(&a.conn, "SELECT k FROM u"), 2);
    assert_eq!(a.conflicts("unique"), 1);
    // The winner moves away: the parked row comes back on both nodes.
    b.exec("UPDATE u SET email = 'other' WHERE k = 2;");
    let msgs = b.publish();
    let ra = a.receive(&msgs);
    assert_eq!(ra.restored, 1);
    let rb = b.receive(&[]);
    assert_eq!(
        rb.restored, 1,
        "local writes unblock parked rows at the next apply"
    );
    assert_same(&a, &b, &["u"]);
    assert_eq!(count(&a.conn, "SELECT count(*) FROM u"), 2);
    // Nothing is republished by restoring.
    assert!(a.publish().is_empty());
}

#[test]
fn records_positions_in_the_apply_transaction() {
    let (mut a, mut b) = pair(ODD);
    a.exec("INSERT INTO vals VALUES (1, 1);");
    let msg = a.publish().remove(0);
    let batch = wire::decode(&msg).unwrap();
    let at = |stream: &str, floor, above: &[(u64, u64)]| {
        let mut position = crate::position::Position::at(floor);
        for (from, to) in above {
            position.mark_range(*from, *to);
        }
        StreamPosition {
            stream: stream.into(),
            incarnation: "inc".into(),
            position,
        }
    };
    let work = ApplyWork {
        batches: vec![batch.clone()],
        positions: vec![at("s1", 4, &[(9, 9)]), at("s2", 1, &[])],
        horizon_ms: None,
    };
    b.applier.apply(&b.conn, &work).unwrap();
    let positions = crate::sql::internal::read_positions(&b.conn).unwrap();
    assert_eq!(positions, work.positions);
    // Positions alone (nothing to apply) are recorded too.
    b.applier
        .apply(&b.conn, &ApplyWork::positions(vec![at("s1", 9, &[])]))
        .unwrap();
    let positions = crate::sql::internal::read_positions(&b.conn).unwrap();
    assert_eq!(positions[0].position.floor(), 9);
    assert_eq!(
        count(&b.conn, "SELECT count(*) FROM __harmonylite__guard"),
        0
    );
}

#[test]
fn versions_from_the_future_wait_in_the_quarantine() {
    let (mut a, mut b) = pair(ODD);
    a.exec("INSERT INTO vals VALUES (1, 'now'), (2, 'now');");
    let mut batch = wire::decode(&a.publish().remove(0)).unwrap();
    // Row 2 comes from a node whose clock runs a year ahead.
    let year_ahead = crate::hlc::Hlc::from_parts(crate::hlc::now_ms() + 365 * 86_400_000, 0);
    batch.tables[0].rows[1].version = year_ahead.0;
    let work = ApplyWork {
        batches: vec![batch],
        positions: Vec::new(),
        horizon_ms: Some(crate::hlc::now_ms() + 60_000),
    };
    let report = b.applier.apply(&b.conn, &work).unwrap();
    assert_eq!((report.applied, report.quarantined), (1, 1));
    assert_eq!(b.content("vals").len(), 1, "the future row is not applied");
    let held = quarantine::list(&b.conn, 10).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].version, year_ahead.0);
    assert_eq!(held[0].key, "[2]");
    // Nothing is lost: the operator's decision applies it as it came.
    let changes = quarantine::load(&b.conn, held[0].id).unwrap().unwrap();
    let release = ApplyWork {
        batches: vec![ChangeBatch {
            origin: b.node,
            schema_hash: String::new(),
            tables: vec![changes],
        }],
        ..ApplyWork::default()
    };
    assert_eq!(b.applier.apply(&b.conn, &release).unwrap().applied, 1);
    assert!(quarantine::remove(&b.conn, held[0].id).unwrap());
    assert_eq!(b.content("vals").len(), 2);
    assert_eq!(quarantine::count(&b.conn).unwrap(), 0);
}

/// Rows of 1 MiB, five versions: a budget of 2 MiB reads two per scan, from the capture log
/// and from the clock alike, and a row larger than the whole budget is still read.
#[test]
fn scan_stops_at_its_byte_budget_between_versions() {
    let budget = crate::cdc::scan::Budget {
        rows: 100,
        bytes: 2 << 20,
    };
    for folded in [false, true] {
        let a = Replica::new(1, ODD);
        a.exec(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5)
             INSERT INTO vals SELECT i, hex(zeroblob(524288)) FROM n;",
        );
        if folded {
            crate::cdc::fold::fold_tracked(&a.conn).unwrap();
        }
        let mut reader = Reader::open(&a.db.path).unwrap();
        let mut sizes = Vec::new();
        loop {
            let scan = reader.scan(a.node, budget).unwrap();
            if scan.row_count() == 0 {
                break;
            }
            sizes.push((scan.row_count(), scan.pending));
            reader.advance(&scan.watermarks);
        }
        assert_eq!(sizes, [(2, 3), (2, 1), (1, 0)], "folded: {folded}");
    }
    let a = Replica::new(1, ODD);
    a.exec("INSERT INTO vals VALUES (1, hex(zeroblob(2097152)));");
    let mut reader = Reader::open(&a.db.path).unwrap();
    assert_eq!(reader.scan(a.node, budget).unwrap().row_count(), 1);
}

/// The merge's and the digests' reader pages by bytes the same way: 1 MiB rows, 2 MiB a page.
#[test]
fn clock_rows_page_by_bytes_between_versions() {
    let a = Replica::new(1, ODD);
    a.exec(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5)
         INSERT INTO vals SELECT i, hex(zeroblob(524288)) FROM n;",
    );
    crate::cdc::fold::fold_tracked(&a.conn).unwrap();
    let meta = crate::cdc::scan::tracked_tables(&a.conn)
        .unwrap()
        .into_iter()
        .find(|m| m.name == "vals")
        .unwrap();
    let budget = crate::cdc::scan::Budget {
        rows: 100,
        bytes: 2 << 20,
    };
    let (mut pages, mut after) = (Vec::new(), 0);
    loop {
        let (page, next) = crate::cdc::scan::clock_rows(&a.conn, &meta, after, budget).unwrap();
        pages.push(
            page.rows
                .iter()
                .map(|r| r.key[0].clone())
                .collect::<Vec<_>>(),
        );
        match next {
            Some(v) => after = v,
            None => break,
        }
    }
    let keys = |ks: &[i64]| ks.iter().map(|&k| Value::Integer(k)).collect::<Vec<_>>();
    assert_eq!(pages, [keys(&[1, 2]), keys(&[3, 4]), keys(&[5])]);
}

#[test]
fn scan_respects_limits_ties_and_pending() {
    let mut a = Replica::new(1, ODD);
    let values: Vec<String> = (0..50).map(|i| format!("({i}, {i})")).collect();
    a.exec(&format!("INSERT INTO vals VALUES {};", values.join(", ")));
    let mut reader = Reader::open(&a.db.path).unwrap();
    let first = reader.scan(a.node, 20).unwrap();
    assert_eq!(first.row_count(), 20);
    assert_eq!(first.pending, 30);
    // Without recording the watermark, the same rows come again; `advance` skips them.
    assert_eq!(reader.scan(a.node, 20).unwrap().row_count(), 20);
    reader.advance(&first.watermarks);
    assert_eq!(reader.scan(a.node, 100).unwrap().row_count(), 30);
    // A remote row stamped with exactly the version of a local row: a scan cut at that version
    // must take both, or the local row would fall under the watermark unpublished.
    a.exec("INSERT INTO vals VALUES (101, 'a');");
    // Up to here the rows came from the capture log; from here from the clock.
    crate::cdc::fold::fold_tracked(&a.conn).unwrap();
    let top = count(
        &a.conn,
        r#"SELECT MAX(ver) FROM "__harmonylite__vals_clock""#,
    ) as u64;
    let remote = change::ChangeBatch {
        origin: NodeId(0),
        schema_hash: "test".into(),
        tables: vec![change::TableChanges {
            table: "vals".into(),
            key_columns: vec!["k".into()],
            columns: vec!["k".into(), "v".into()],
            rows: vec![change::RowChange {
                version: top,
                node: NodeId(0),
                origin: NodeId(0),
                deleted: false,
                key: vec![Value::Integer(100)],
                values: vec![Value::Integer(100), Value::text("remote")],
            }],
        }],
    };
    let dv = reader.data_version().unwrap();
    a.applier
        .apply(
            &a.conn,
            &ApplyWork {
                batches: vec![remote],
                ..ApplyWork::default()
            },
        )
        .unwrap();
    assert_ne!(reader.data_version().unwrap(), dv);
    let mut reader = Reader::open(&a.db.path).unwrap();
    let mut seen = 0;
    loop {
        let s = reader.scan(a.node, 1).unwrap();
        if s.watermarks.is_empty() {
            break;
        }
        seen += s.row_count();
        reader.advance(&s.watermarks);
    }
    assert_eq!(seen, 51, "every local row exactly once, none of b's");
}

/// The applier's cost per row for new rows, with the capture triggers as installed and with
/// them dropped (what running them for every applied row costs, their `WHEN` finding the
/// guard): `cargo test --release --lib apply_cost -- --ignored --nocapture`.
#[test]
#[ignore = "measurement: cargo test --release --lib apply_cost -- --ignored --nocapture"]
fn apply_cost() {
    const ROWS: i64 = 200_000;
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, ts INTEGER)";
    let mut origin = Replica::new(2, schema);
    origin.exec(&format!(
        "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {ROWS}) \
         INSERT INTO t SELECT x, 'row ' || x, x % 97, x FROM s"
    ));
    let mut batches = Vec::new();
    loop {
        let scan = origin.reader.scan(origin.node, 512).unwrap();
        if scan.tables.is_empty() {
            break;
        }
        origin.reader.advance(&scan.watermarks);
        batches.push(ChangeBatch {
            origin: origin.node,
            schema_hash: "test".into(),
            tables: scan.tables,
        });
    }
    for triggers in [true, false, true, false] {
        let mut r = Replica::new(1, schema);
        if !triggers {
            let names: Vec<String> = r
                .conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
                .unwrap()
                .query_map([], |row| row.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for name in names {
                r.exec(&format!("DROP TRIGGER {}", quote_ident(&name)));
            }
        }
        let started = std::time::Instant::now();
        for group in batches.chunks(16) {
            let work = ApplyWork {
                batches: group.to_vec(),
                ..ApplyWork::default()
            };
            r.applier.apply(&r.conn, &work).unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(count(&r.conn, "SELECT count(*) FROM t"), ROWS);
        println!(
            "apply, {ROWS} new rows in messages of 512, 16 a transaction, triggers {}: {secs:.2} s = {:.0} rows/s",
            if triggers { "installed" } else { "dropped" },
            ROWS as f64 / secs
        );
    }
}
