//! Repairing, on this node, what the comparison of every node's digests shows differs
//! (`docs/decisions/015-consistency-digests.md`), after each digest round:
//! - rows written here with capture off are adopted as this node's writes (`apply::repair`);
//! - for each bucket where this node is outside the majority, the rows every peer holds in that
//!   bucket are fetched (`rows`) and applied through the ordinary last-writer-wins apply (a
//!   newer version a peer holds comes in), then the equal-version rule runs: where this node
//!   holds a key at the same `(version, node)` as others but other content, the content most of
//!   those nodes hold wins, a tie going to the smaller content hash.
//!
//! Every node decides from the same digests, so the nodes in the minority repair themselves
//! and the others leave the bucket alone.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use async_nats::jetstream;
use tracing::{info, warn};

use super::compare::{NodeDigests, TableVerdict, Why, compare};
use super::publish::BUCKET;
use super::report::{cannot_tell, read_summaries, read_tables};
use super::rows;
use crate::apply::ApplyWork;
use crate::cdc::digest::{key_bytes, row_hashes};
use crate::change::{ChangeBatch, RowChange, TableChanges};
use crate::config::Config;
use crate::db::writer::Repair;
use crate::db::{Reader, WriterHandle};
use crate::hlc::now_ms;
use crate::ids::NodeId;
use crate::metrics::Metrics;

/// What one round repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repaired {
    pub adopted: u64,
    pub newer: u64,
    pub equal_version: u64,
    /// Tables the comparison found differing (before the repairs).
    pub diverged_tables: usize,
}

/// Compares every node's digests and repairs what this node holds outside the majority.
pub async fn round(
    cfg: &Config,
    js: &jetstream::Context,
    writer: &WriterHandle,
    metrics: &Metrics,
    mine: &NodeDigests,
) -> anyhow::Result<Repaired> {
    let mut done = Repaired::default();
    let unclocked = cfg.consistency.repair
        && mine
            .tables
            .iter()
            .any(|t| t.buckets.iter().any(|b| b.unclocked > 0));
    if unclocked {
        done.adopted = writer.repair(Repair::AdoptUnclocked).await?;
        metrics
            .repairs
            .with_label_values(&["adopted"])
            .inc_by(done.adopted);
    }
    let store = js.get_key_value(BUCKET).await?;
    let summaries = read_summaries(&store).await?;
    if cannot_tell(cfg, &summaries, now_ms()).is_some() {
        return Ok(done);
    }
    let verdicts = compare(&read_tables(&store, &summaries).await?);
    done.diverged_tables = verdicts
        .values()
        .filter(|v| matches!(v, TableVerdict::Differ(_)))
        .count();
    metrics.diverged_tables.set(done.diverged_tables as i64);
    if !cfg.consistency.repair {
        return Ok(done);
    }
    let peers: Vec<u64> = summaries
        .iter()
        .map(|s| s.node_id)
        .filter(|n| *n != mine.node_id)
        .collect();
    for (table, verdict) in verdicts {
        let TableVerdict::Differ(diffs) = verdict else {
            continue;
        };
        for d in diffs
            .iter()
            .filter(|d| d.nodes.contains(&mine.node_id) && d.why != Why::Unclocked)
        {
            let fixed = repair_bucket(cfg, js, writer, &peers, &table, d.bucket).await?;
            metrics
                .repairs
                .with_label_values(&["newer"])
                .inc_by(fixed.0);
            metrics
                .repairs
                .with_label_values(&["equal_version"])
                .inc_by(fixed.1);
            done.newer += fixed.0;
            done.equal_version += fixed.1;
            info!(
                table,
                bucket = d.bucket,
                why = %d.why,
                newer = fixed.0,
                equal_version = fixed.1,
                "repaired a bucket this node held differently from the majority"
            );
        }
    }
    Ok(done)
}

/// Fetches every peer's rows of one bucket, applies the newer ones, then settles equal
/// versions; returns (newer applied, equal versions settled).
async fn repair_bucket(
    cfg: &Config,
    js: &jetstream::Context,
    writer: &WriterHandle,
    peers: &[u64],
    table: &str,
    bucket: usize,
) -> anyhow::Result<(u64, u64)> {
    let client = js.client();
    let mut theirs = Vec::new();
    for &peer in peers {
        match rows::fetch(&client, peer, table, bucket).await {
            Ok(rows) => theirs.push((peer, rows)),
            Err(error) => {
                warn!(peer, table, bucket, error = %format!("{error:#}"), "cannot fetch a peer's rows")
            }
        }
    }
    let mut newer = 0;
    for (peer, rows) in &theirs {
        let work = ApplyWork {
            batches: vec![ChangeBatch {
                origin: NodeId(*peer),
                schema_hash: String::new(),
                tables: vec![rows.clone()],
            }],
            positions: Vec::new(),
            horizon_ms: Some(now_ms().saturating_add(cfg.max_clock_skew_ms())),
        };
        newer += writer.apply(work).await?.applied;
    }
    let db = cfg.db_path.clone();
    let name = table.to_owned();
    let mine = tokio::task::spawn_blocking(move || local_bucket(&db, &name, bucket)).await??;
    let theirs: Vec<TableChanges> = theirs.into_iter().map(|(_, rows)| rows).collect();
    let winners = equal_version_winners(&mine, &theirs);
    let settled = if winners.rows.is_empty() {
        0
    } else {
        writer.repair(Repair::EqualVersions(winners)).await?
    };
    Ok((newer, settled))
}

/// This node's rows of one bucket, read page by page.
fn local_bucket(db: &Path, table: &str, bucket: usize) -> anyhow::Result<TableChanges> {
    let mut reader = Reader::open(db)?;
    let mut all: Option<TableChanges> = None;
    let mut after = 0;
    loop {
        let Some((page, next)) = reader.bucket_rows(table, bucket, after, 50_000)? else {
            anyhow::bail!("table {table} is not captured here");
        };
        match &mut all {
            Some(all) => all.rows.extend(page.rows),
            None => all = Some(page),
        }
        match next {
            Some(v) => after = v,
            None => break,
        }
    }
    all.ok_or_else(|| anyhow::anyhow!("no rows read"))
}

/// For every key `mine` holds, the content that wins among the nodes that hold it at the same
/// `(version, node)`: the content most of them hold, a tie going to the smaller content hash.
/// Returns the winners that differ from `mine` (in `mine`'s columns).
pub fn equal_version_winners(mine: &TableChanges, theirs: &[TableChanges]) -> TableChanges {
    let indexed: Vec<HashMap<Vec<u8>, &RowChange>> = theirs
        .iter()
        .filter(|t| t.columns == mine.columns)
        .map(|t| t.rows.iter().map(|r| (key_bytes(&r.key), r)).collect())
        .collect();
    let mut winners = Vec::new();
    for row in &mine.rows {
        let key = key_bytes(&row.key);
        let (_, own) = row_hashes(&key, row);
        let mut groups: BTreeMap<u64, (usize, &RowChange)> = BTreeMap::new();
        groups.insert(own, (1, row));
        for peer in &indexed {
            let Some(other) = peer.get(&key) else {
                continue;
            };
            if (other.version, other.node) != (row.version, row.node) {
                continue;
            }
            let (_, hash) = row_hashes(&key, other);
            groups.entry(hash).or_insert((0, other)).0 += 1;
        }
        let most = groups.values().map(|(n, _)| *n).max().unwrap_or(0);
        // BTreeMap order: the first group with the most nodes has the smallest hash.
        if let Some((hash, (_, winner))) = groups.iter().find(|(_, (n, _))| *n == most)
            && *hash != own
        {
            winners.push((*winner).clone());
        }
    }
    TableChanges {
        table: mine.table.clone(),
        key_columns: mine.key_columns.clone(),
        columns: mine.columns.clone(),
        rows: winners,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Value;

    fn row(id: i64, version: u64, node: u64, v: &str) -> RowChange {
        RowChange {
            version,
            node: NodeId(node),
            origin: NodeId(node),
            deleted: false,
            key: vec![Value::Integer(id)],
            values: vec![Value::Integer(id), Value::text(v)],
        }
    }

    fn table(rows: Vec<RowChange>) -> TableChanges {
        TableChanges {
            table: "t".into(),
            key_columns: vec!["id".into()],
            columns: vec!["id".into(), "v".into()],
            rows,
        }
    }

    #[test]
    fn the_majority_at_the_same_version_wins_and_ties_are_order_independent() {
        let mine = table(vec![row(1, 5, 1, "changed"), row(2, 5, 1, "same")]);
        let peer = table(vec![row(1, 5, 1, "written"), row(2, 5, 1, "same")]);
        let winners = equal_version_winners(&mine, &[peer.clone(), peer.clone()]);
        assert_eq!(winners.rows, vec![row(1, 5, 1, "written")]);
        // Another version is not this rule's business (the ordinary apply decides it).
        let newer = table(vec![row(1, 6, 2, "newer")]);
        assert!(equal_version_winners(&mine, &[newer]).rows.is_empty());
        // One against one: both sides pick the same content.
        let a = table(vec![row(1, 5, 1, "a")]);
        let b = table(vec![row(1, 5, 1, "b")]);
        let from_a = equal_version_winners(&a, std::slice::from_ref(&b));
        let from_b = equal_version_winners(&b, std::slice::from_ref(&a));
        assert_eq!(
            from_a.rows.len() + from_b.rows.len(),
            1,
            "exactly one side changes"
        );
        let agreed = from_a.rows.first().or(from_b.rows.first()).unwrap();
        let winner = if from_a.rows.is_empty() { &a } else { &b };
        assert_eq!(
            agreed, &winner.rows[0],
            "the side that changes takes the winner's content"
        );
    }
}
