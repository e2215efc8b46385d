//! Merging a snapshot into a database that holds data: the snapshot's rows go through the
//! ordinary last-writer-wins apply, and each stream's floor becomes the higher of the two.
//!
//! Why nothing is lost and nothing is skipped: apply is idempotent and keeps, per key, the
//! newer `(version, node)`, so the merged database holds, for every key, the newest state
//! either side had; it therefore holds everything the snapshot's floors promise, and everything
//! this database's floors promised. Raising each floor to the snapshot's is then true, and no
//! floor moves back. The database's own unpublished changes stay where they are (the publisher
//! still sends them); the snapshot's rows are stamped by other nodes and are never published
//! again from here. That is what lets any snapshot that covers a gap close it, whatever its
//! floors on other streams: a node never has to give up what it holds to get what it lacks
//! (`docs/decisions/014-restores-merge.md`).
//!
//! Content goes in chunks of `CHUNK` rows, each its own apply transaction: a crash in between
//! leaves a database that merged part of the snapshot under its old floors, which is true. The
//! floors move last, in their own transaction, after all content is in.

use std::path::Path;

use rusqlite::Connection;

use crate::apply::{Applier, ApplyWork};
use crate::cdc::scan::{Budget, clock_rows, tracked_tables};
use crate::change::ChangeBatch;
use crate::db::DbError;
use crate::ids::{NodeId, StreamSeq};
use crate::position::StreamPosition;
use crate::sql::internal::read_positions;

/// Clock rows, and bytes of their values, read and applied per transaction: a table of big
/// rows is merged a few rows at a time.
const CHUNK: Budget = Budget {
    rows: 5_000,
    bytes: 32 * 1024 * 1024,
};

/// What a merge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Snapshot rows newer than this database's, written.
    pub applied: u64,
    /// Snapshot rows not newer than this database's, left alone.
    pub stale: u64,
    /// Snapshot rows stamped beyond the clock-skew horizon: held in the quarantine for an
    /// operator, as the consumer holds such a change (its floor moves on likewise).
    pub quarantined: u64,
    /// Changes the snapshot held in its quarantine that this database now holds too.
    pub held: u64,
    /// Streams whose floor the snapshot raised: (stream, from, to).
    pub raised: Vec<(String, StreamSeq, StreamSeq)>,
}

/// Merges the snapshot copy `copy` (read with the same schema as `conn`) into `conn`, the
/// writer's connection to `db_path`. `taker` names the snapshot's node in journal entries;
/// changes beyond `horizon_ms` are quarantined as any remote change would be.
pub fn merge_snapshot(
    conn: &Connection,
    db_path: &Path,
    copy: &Connection,
    taker: NodeId,
    horizon_ms: Option<u64>,
) -> Result<MergeReport, DbError> {
    let capture = |source| DbError::capture(db_path, source);
    let apply = |source| DbError::apply(db_path, source);
    let mut applier = Applier::new();
    let mut report = MergeReport::default();
    for meta in tracked_tables(copy).map_err(capture)? {
        let mut after = 0_i64;
        loop {
            let (changes, next) = clock_rows(copy, &meta, after, CHUNK).map_err(capture)?;
            if !changes.rows.is_empty() {
                let rows = changes.rows.len();
                let work = ApplyWork {
                    batches: vec![ChangeBatch {
                        origin: taker,
                        schema_hash: String::new(),
                        tables: vec![changes],
                    }],
                    positions: Vec::new(),
                    horizon_ms,
                };
                let applied = applier.apply(conn, &work).map_err(apply)?;
                // The floors may rise only over content that is all in: a row the apply could
                // not place (a table capture does not know here, a row SQLite refused) fails
                // the merge, loudly, with the floors where they were.
                let unplaced = applied.missing_table + applied.errors;
                if unplaced > 0 {
                    return Err(DbError::RestoreRefused {
                        reason: format!(
                            "{unplaced} of {rows} rows of table {} could not be merged (see the \
                             conflict journal)",
                            meta.name
                        ),
                    });
                }
                report.applied += applied.applied;
                report.stale += applied.stale;
                report.quarantined += applied.quarantined;
            }
            match next {
                Some(v) => after = v,
                None => break,
            }
        }
    }
    // The changes the snapshot holds lie below its floors: held here too, committed before the
    // floors rise (a crash in between holds them under the old floors, which is true).
    let held_err = sqlite_err(db_path, "holding the snapshot's held changes");
    let tx = conn.unchecked_transaction().map_err(&held_err)?;
    report.held = crate::apply::quarantine::adopt(&tx, copy)
        .map_err(apply)?
        .added;
    tx.commit().map_err(&held_err)?;
    let raised = raised_floors(conn, copy, db_path, &mut report)?;
    applier
        .apply(conn, &ApplyWork::positions(raised))
        .map_err(apply)?;
    Ok(report)
}

/// The positions of `conn` that the snapshot `copy` raises: a stream the database knows in the
/// same incarnation, or does not know at all, takes the snapshot's floor when it is higher. Any
/// other is left alone: a floor read in another incarnation means nothing for the stream this
/// database reads, and a position without an incarnation (on either side) is an older build's
/// highest applied sequence, not a contiguous floor.
fn raised_floors(
    conn: &Connection,
    copy: &Connection,
    db_path: &Path,
    report: &mut MergeReport,
) -> Result<Vec<StreamPosition>, DbError> {
    let ours =
        read_positions(conn).map_err(sqlite_err(db_path, "reading the database's floors"))?;
    let theirs =
        read_positions(copy).map_err(sqlite_err(db_path, "reading the snapshot's floors"))?;
    let mut raised = Vec::new();
    for snap in theirs {
        let mine = ours.iter().find(|p| p.stream == snap.stream);
        if snap.incarnation.is_empty() {
            tracing::warn!(
                stream = %snap.stream,
                "the snapshot's position on this stream has no incarnation (an older build's \
                 highest sequence, not a floor); its floor is not taken"
            );
            continue;
        }
        let mut position = match mine {
            // Ours without an incarnation is an older build's highest sequence, which the
            // consumer caps at its ack floor first; raising it now would skip that.
            Some(m) if m.incarnation != snap.incarnation => {
                tracing::warn!(
                    stream = %snap.stream,
                    "the snapshot and this database know different incarnations of this stream \
                     (or this one none yet); its floor is not taken"
                );
                continue;
            }
            Some(m) => m.clone(),
            None => StreamPosition {
                stream: snap.stream.clone(),
                incarnation: snap.incarnation.clone(),
                position: Default::default(),
            },
        };
        let before = position.position.floor();
        let floor = snap.position.floor();
        if floor <= before {
            continue;
        }
        position.position.mark_range(1, floor);
        report.raised.push((
            snap.stream.clone(),
            StreamSeq(before),
            StreamSeq(position.position.floor()),
        ));
        raised.push(position);
    }
    Ok(raised)
}

/// A SQLite error of `db_path` while doing `what`.
fn sqlite_err<'a>(
    db_path: &'a Path,
    what: &'static str,
) -> impl Fn(rusqlite::Error) -> DbError + 'a {
    move |source| DbError::Sqlite {
        what,
        path: db_path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Position;
    use crate::sql::internal::{create_internal, write_position};

    fn db(positions: &[(&str, &str, u64)]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        create_internal(&conn).unwrap();
        for (stream, incarnation, floor) in positions {
            let p = StreamPosition {
                stream: (*stream).into(),
                incarnation: (*incarnation).into(),
                position: Position::at(*floor),
            };
            write_position(&conn, &p).unwrap();
        }
        conn
    }

    #[test]
    fn only_a_higher_floor_of_the_same_incarnation_is_taken() {
        let ours = db(&[
            ("higher", "i", 10),
            ("lower", "i", 50),
            ("other", "i", 10),
            ("ours_unknown", "", 10),
            ("theirs_unknown", "i", 10),
        ]);
        let theirs = db(&[
            ("higher", "i", 40),
            ("lower", "i", 30),
            ("other", "j", 90),
            ("ours_unknown", "i", 90),
            ("theirs_unknown", "", 90),
            ("new", "k", 7),
        ]);
        let mut report = MergeReport::default();
        let raised = raised_floors(&ours, &theirs, Path::new("t"), &mut report).unwrap();
        let got: Vec<(String, String, u64)> = raised
            .iter()
            .map(|p| (p.stream.clone(), p.incarnation.clone(), p.position.floor()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("higher".into(), "i".into(), 40),
                ("new".into(), "k".into(), 7)
            ]
        );
        assert_eq!(
            report.raised,
            vec![
                ("higher".into(), StreamSeq(10), StreamSeq(40)),
                ("new".into(), StreamSeq(0), StreamSeq(7))
            ]
        );
    }
}
