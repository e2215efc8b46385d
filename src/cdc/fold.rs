//! Folding the capture logs into the clock tables.
//!
//! A capture trigger only appends a record `(seq, ver, node, kind, key)` to the table's log
//! (`cdc::triggers`); the keyed clock row, which the publisher's scan, the applier's
//! last-writer-wins, conflict settling, the baseline and snapshots read, is written here, off the
//! application's commit path. A fold takes each key's newest record (highest `seq`) and upserts
//! it as the trigger used to:
//! - `ver` and `node` of that record, `deleted` when it is a delete, `parked` cleared;
//! - the origin becomes the writing node when any of the key's records is an insert (a new row),
//!   else it stays (an update of a row someone else created); a key new to the clock gets the
//!   writer as origin;
//! - under a non-binary collation, a live key keeps the spelling of its newest record.
//!
//! Then the log is emptied. Every version in the log is above every version its clock held when
//! the record was written (`triggers::version_expr` reads both), and the fold moves all of a
//! table's log at once, so after a fold the clock is what the old in-trigger upsert would have
//! left, and a local clock row never sits above an unfolded record.
//!
//! The caller owns the transaction: the writer folds inside `BEGIN IMMEDIATE` (its own fold
//! command, the apply transaction, the install), a snapshot folds in its private copy.

use rusqlite::Connection;

use crate::catalog::discover::TableMeta;
use crate::cdc::scan::tracked_tables;
use crate::cdc::triggers::{
    FOLDED_ORIGIN, LogKind, aliased_key_cols, clock_table, key_col, key_col_list, log_table,
    newest_logged_records,
};
use crate::sql::{SqlError, is_missing_table, quote_ident, table_err};

/// Folds `meta`'s capture log into its clock; returns the records folded (0 without a log).
pub fn fold_table(conn: &Connection, meta: &TableMeta) -> Result<u64, SqlError> {
    if !has_records(conn, &meta.name)? {
        return Ok(0);
    }
    let fail = table_err("folding the capture log", &meta.name);
    conn.prepare_cached(&fold_sql(meta))
        .and_then(|mut s| s.execute([]))
        .map_err(&fail)?;
    // The records deleted are the records folded: no separate count.
    let records = conn
        .prepare_cached(&format!(
            "DELETE FROM {}",
            quote_ident(&log_table(&meta.name))
        ))
        .and_then(|mut s| s.execute([]))
        .map_err(&fail)?;
    Ok(records as u64)
}

/// Folds the logs of every tracked table; returns the records folded.
pub fn fold_tracked(conn: &Connection) -> Result<u64, SqlError> {
    let mut folded = 0;
    for meta in tracked_tables(conn)? {
        folded += fold_table(conn, &meta)?;
    }
    Ok(folded)
}

/// Whether the log holds records, without counting them.
pub fn has_records(conn: &Connection, table: &str) -> Result<bool, SqlError> {
    conn.prepare_cached(&format!(
        "SELECT EXISTS (SELECT 1 FROM {})",
        quote_ident(&log_table(table))
    ))
    .and_then(|mut s| s.query_row([], |r| r.get(0)))
    .or_else(|e| {
        if is_missing_table(&e) {
            Ok(false)
        } else {
            Err(e)
        }
    })
    .map_err(table_err("reading the capture log", table))
}

/// The upsert of each key's newest log record into the clock (see the module docs).
fn fold_sql(meta: &TableMeta) -> String {
    let clock = quote_ident(&clock_table(&meta.name));
    let keys = key_col_list(meta);
    let l_keys = aliased_key_cols(meta, "l");
    let mut set = String::from(
        "ver = excluded.ver, node = excluded.node, origin = excluded.origin, \
         deleted = excluded.deleted, parked = NULL",
    );
    // Under NOCASE/RTRIM an equal key may be spelled differently; a live key keeps the table's
    // spelling, a tombstone the one it had.
    for (i, k) in meta.key.iter().enumerate() {
        if k.collation != "BINARY" {
            set.push_str(&format!(
                ", {0} = CASE WHEN excluded.deleted THEN {0} ELSE excluded.{0} END",
                quote_ident(&key_col(i))
            ));
        }
    }
    format!(
        "INSERT INTO {clock}({keys}, ver, node, origin, deleted) \
         SELECT {l_keys}, l.ver, l.node, {FOLDED_ORIGIN}, l.kind = {delete} {newest} \
         WHERE true \
         ON CONFLICT({keys}) DO UPDATE SET {set}",
        l_keys = l_keys.join(", "),
        newest = newest_logged_records(meta),
        delete = LogKind::Delete as i32,
    )
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::catalog::discover::captured_tables;
    use crate::cdc::triggers::install_script;
    use crate::ids::NodeId;

    fn setup(ddl: &str) -> (Connection, Vec<TableMeta>) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(ddl).unwrap();
        crate::sql::internal::create_internal(&conn).unwrap();
        let (tables, _) = captured_tables(&conn, &[]).unwrap();
        for t in &tables {
            conn.execute_batch(&install_script(t, NodeId(3))).unwrap();
        }
        (conn, tables)
    }

    /// `(key, ver, node, origin, deleted)` of the clock, by key.
    fn clock(conn: &Connection, table: &str) -> Vec<(String, i64, i64, i64, i64)> {
        let q = format!(
            "SELECT CAST(k0 AS TEXT), ver, node, origin, deleted FROM {} ORDER BY 1",
            quote_ident(&clock_table(table))
        );
        let mut stmt = conn.prepare(&q).unwrap();
        stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    fn log_len(conn: &Connection, table: &str) -> i64 {
        conn.query_row(
            &format!("SELECT count(*) FROM {}", quote_ident(&log_table(table))),
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// Each key's newest record wins; an insert among a key's records makes the writer its
    /// origin, an update alone keeps the origin; the log is empty afterwards and a second fold
    /// changes nothing.
    #[test]
    fn newest_record_per_key_with_origin_rules() {
        let (conn, tables) = setup("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
        let meta = &tables[0];
        // A row created elsewhere (node 9) and known to the clock.
        conn.execute_batch(
            r#"INSERT INTO "__harmonylite__guard" VALUES (1);
               INSERT INTO t VALUES (1, 'remote');
               INSERT INTO "__harmonylite__t_clock" VALUES (1, 100, 9, 9, 0, NULL);
               DELETE FROM "__harmonylite__guard";
               UPDATE t SET v = 'local' WHERE id = 1;
               INSERT INTO t VALUES (2, 'a');
               UPDATE t SET v = 'b' WHERE id = 2;
               INSERT INTO t VALUES (3, 'gone');
               DELETE FROM t WHERE id = 3;
               DELETE FROM t WHERE id = 1;
               INSERT INTO t VALUES (1, 'again');"#,
        )
        .unwrap();
        assert_eq!(log_len(&conn, "t"), 7);
        let versions: Vec<i64> = conn
            .prepare(r#"SELECT ver FROM "__harmonylite__t_changes" ORDER BY seq"#)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(fold_table(&conn, meta).unwrap(), 7);
        assert_eq!(log_len(&conn, "t"), 0);
        let got = clock(&conn, "t");
        let newest = |i: usize| versions[i];
        assert_eq!(
            got,
            vec![
                ("1".into(), newest(6), 3, 3, 0),
                ("2".into(), newest(2), 3, 3, 0),
                ("3".into(), newest(4), 3, 3, 1),
            ]
        );
        // An update alone keeps the creator.
        conn.execute_batch(r#"UPDATE t SET v = 'x' WHERE id = 1;"#)
            .unwrap();
        conn.execute_batch(
            r#"UPDATE "__harmonylite__t_clock" SET origin = 9 WHERE k0 = 1;
               UPDATE t SET v = 'y' WHERE id = 1;"#,
        )
        .unwrap();
        fold_table(&conn, meta).unwrap();
        assert_eq!(clock(&conn, "t")[0].3, 9);
        assert_eq!(fold_table(&conn, meta).unwrap(), 0);
    }

    /// A new local version is above the clock and the unfolded log: two writes of one key
    /// between folds never share a version, also after the clock learnt a remote version from
    /// the future.
    #[test]
    fn versions_rise_above_clock_and_log() {
        let (conn, tables) = setup("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
        let future = i64::MAX / 2;
        conn.execute_batch(&format!(
            r#"INSERT INTO "__harmonylite__t_clock" VALUES (5, {future}, 9, 9, 0, NULL);
               INSERT INTO t VALUES (1, 'a');
               UPDATE t SET v = 'b' WHERE id = 1;"#
        ))
        .unwrap();
        fold_table(&conn, &tables[0]).unwrap();
        let got = clock(&conn, "t");
        assert_eq!(got[0].1, future + 2, "{got:?}");
    }

    /// Under NOCASE a live key takes its newest spelling; one key spelled two ways is one key.
    #[test]
    fn nocase_keys_fold_as_one_key() {
        let (conn, tables) = setup("CREATE TABLE t(k TEXT COLLATE NOCASE PRIMARY KEY, v);");
        conn.execute_batch(
            r#"INSERT INTO t VALUES ('abc', 1);
               UPDATE t SET k = 'ABC';
               UPDATE t SET v = 2;"#,
        )
        .unwrap();
        fold_table(&conn, &tables[0]).unwrap();
        let got = clock(&conn, "t");
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "ABC");
        assert_eq!(got[0].4, 0);
    }
}
