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
use crate::cdc::scan::{clock_rows, tracked_tables};
use crate::change::ChangeBatch;
use crate::db::DbError;
use crate::ids::{NodeId, StreamSeq};
use crate::position::StreamPosition;
use crate::sql::internal::read_positions;

/// Clock rows read and applied per transaction.
const CHUNK: usize = 5_000;

/// What a merge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Snapshot rows newer than this database's, written.
    pub applied: u64,
    /// Snapshot rows not newer than this database's, left alone.
    pub stale: u64,
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
                report.applied += applied.applied;
                report.stale += applied.stale;
            }
            match next {
                Some(v) => after = v,
                None => break,
            }
        }
    }
    let raised = raised_floors(conn, copy, db_path, &mut report)?;
    applier
        .apply(conn, &ApplyWork::positions(raised))
        .map_err(apply)?;
    Ok(report)
}

/// The positions of `conn` that the snapshot `copy` raises: a stream the database has in the
/// same incarnation (or does not know yet) takes the snapshot's floor when it is higher. A
/// stream the snapshot knows in another incarnation is left alone: its floor means nothing for
/// the stream this database reads.
fn raised_floors(
    conn: &Connection,
    copy: &Connection,
    db_path: &Path,
    report: &mut MergeReport,
) -> Result<Vec<StreamPosition>, DbError> {
    let sqlite = |what: &'static str| {
        move |source| DbError::Sqlite {
            what,
            path: db_path.to_path_buf(),
            source,
        }
    };
    let ours = read_positions(conn).map_err(sqlite("reading the database's floors"))?;
    let theirs = read_positions(copy).map_err(sqlite("reading the snapshot's floors"))?;
    let mut raised = Vec::new();
    for snap in theirs {
        let mine = ours.iter().find(|p| p.stream == snap.stream);
        let mut position = match mine {
            Some(m)
                if !m.incarnation.is_empty()
                    && !snap.incarnation.is_empty()
                    && m.incarnation != snap.incarnation =>
            {
                tracing::warn!(
                    stream = %snap.stream,
                    "the snapshot read another incarnation of this stream; its floor is not taken"
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
        if position.incarnation.is_empty() {
            position.incarnation = snap.incarnation.clone();
        }
        report.raised.push((
            snap.stream.clone(),
            StreamSeq(before),
            StreamSeq(position.position.floor()),
        ));
        raised.push(position);
    }
    Ok(raised)
}
