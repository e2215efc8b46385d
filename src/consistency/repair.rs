//! Repairing, on this node, what the comparison of every node's digests shows differs
//! (`docs/decisions/015-consistency-digests.md`), after each digest round:
//! - rows written here with capture off are adopted as this node's writes (`apply::repair`);
//! - for each bucket that differs, the rows every peer holds in it are fetched (`rows`) and
//!   applied through the ordinary last-writer-wins apply (a newer version a peer holds comes
//!   in), then the equal-version rule runs: where this node held a key at the same
//!   `(version, node)` as others but other content, the content most of those nodes hold wins
//!   (live content before a tombstone, then the smaller content hash).
//!
//! Every node runs this for every differing bucket: a newer version must reach whoever lacks
//! it, and the rules give every node the same winner, so the nodes that hold it change
//! nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use async_nats::jetstream;
use tracing::{info, warn};

use super::compare::{NodeDigests, Settling, TableVerdict, Why, compare};
use super::publish::BUCKET;
use super::report::{fresh_summaries, read_summaries, read_tables};
use super::rows;
use crate::apply::ApplyWork;
use crate::cdc::digest::{KeyForm, bucket_range};
use crate::change::{ChangeBatch, RowChange, TableChanges};
use crate::config::Config;
use crate::db::writer::Repair;
use crate::db::{Reader, WriterHandle};
use crate::hlc::now_ms;
use crate::ids::NodeId;
use crate::metrics::Metrics;
use crate::status::{BucketConsistency, Consistency, NodeStatus, TableConsistency};

/// Compares every node's digests and repairs what this node holds differently; what it found
/// and repaired goes to `status` (the dashboard, `/health`) and `metrics`.
pub async fn round(
    cfg: &Config,
    js: &jetstream::Context,
    writer: &WriterHandle,
    (metrics, status): (&Metrics, &NodeStatus),
    mine: &NodeDigests,
    settling: &mut Settling,
) -> anyhow::Result<()> {
    let unclocked = cfg.consistency.repair
        && mine
            .tables
            .iter()
            .any(|t| t.buckets.iter().any(|b| b.unclocked > 0));
    let mut shown = status.consistency();
    if unclocked {
        let adopted = writer.repair(Repair::AdoptUnclocked).await?;
        metrics
            .repairs
            .with_label_values(&["adopted"])
            .inc_by(adopted);
        shown.adopted += adopted;
    }
    let verdicts = compare_all(cfg, js, &mut shown, settling).await;
    metrics.diverged_tables.set(shown.diverged() as i64);
    status.set_consistency(shown.clone());
    let Some(verdicts) = verdicts? else {
        return Ok(());
    };
    if !cfg.consistency.repair {
        return Ok(());
    }
    let peers: Vec<u64> = shown
        .nodes
        .iter()
        .copied()
        .filter(|n| *n != mine.round.node_id)
        .collect();
    for (table, verdict) in verdicts {
        let TableVerdict::Differ(diffs) = verdict else {
            continue;
        };
        // Every node repairs every differing bucket: the newer versions come in wherever they
        // are missing, and the equal-version rule gives every node the same winner, so the
        // nodes that already hold it change nothing.
        for d in diffs.iter().filter(|d| d.why != Why::Unclocked) {
            let fixed = match repair_bucket(cfg, js, writer, &peers, &table, d.bucket).await {
                Ok(fixed) => fixed,
                Err(error) => {
                    warn!(table, bucket = d.bucket, error = %format!("{error:#}"), "cannot repair a bucket");
                    continue;
                }
            };
            metrics
                .repairs
                .with_label_values(&["newer"])
                .inc_by(fixed.0);
            let equal = metrics.repairs.with_label_values(&["equal_version"]);
            equal.inc_by(fixed.1);
            (shown.newer, shown.equal_version) =
                (shown.newer + fixed.0, shown.equal_version + fixed.1);
            status.set_consistency(shown.clone());
            if fixed != (0, 0) {
                info!(table, bucket = d.bucket, why = %d.why, newer = fixed.0, equal_version = fixed.1, "repaired a bucket that differed between nodes");
            }
        }
    }
    Ok(())
}

/// Reads every fresh node's digests and compares them, recording the outcome in `shown`;
/// `None` when they cannot tell.
async fn compare_all(
    cfg: &Config,
    js: &jetstream::Context,
    shown: &mut Consistency,
    settling: &mut Settling,
) -> anyhow::Result<Option<BTreeMap<String, TableVerdict>>> {
    let store = js.get_key_value(BUCKET).await?;
    let summaries = read_summaries(&store).await?;
    shown.compared_at_ms = Some(now_ms());
    shown.nodes = summaries.iter().map(|s| s.round.node_id).collect();
    let (fresh, why) = fresh_summaries(cfg, summaries, now_ms());
    if let Some(why) = why {
        shown.cannot_tell = Some(why);
        shown.tables.clear();
        return Ok(None);
    }
    let nodes = read_tables(&store, &fresh).await?;
    let mut verdicts = compare(&nodes);
    settling.settle(&nodes, &mut verdicts, now_ms(), cfg.consistency.settle_ms);
    shown.cannot_tell = None;
    shown.nodes = fresh.iter().map(|s| s.round.node_id).collect();
    shown.tables = shown_tables(&fresh, &verdicts);
    Ok(Some(verdicts))
}

/// Every table of the comparison, as the dashboard and `/health` show it.
fn shown_tables(
    summaries: &[super::publish::Summary],
    verdicts: &BTreeMap<String, TableVerdict>,
) -> Vec<TableConsistency> {
    let mut names: Vec<&String> = summaries.iter().flat_map(|s| s.tables.keys()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let (state, buckets) = match verdicts.get(name) {
                None | Some(TableVerdict::Agree) => ("agree", Vec::new()),
                Some(TableVerdict::InFlight(buckets)) => (
                    "in flight",
                    buckets
                        .iter()
                        .map(|&b| BucketConsistency {
                            bucket: b,
                            range: bucket_range(b),
                            nodes: Vec::new(),
                            why: "changes in flight".to_owned(),
                        })
                        .collect(),
                ),
                Some(TableVerdict::Differ(diffs)) => (
                    "differ",
                    diffs
                        .iter()
                        .map(|d| BucketConsistency {
                            bucket: d.bucket,
                            range: bucket_range(d.bucket),
                            nodes: d.nodes.clone(),
                            why: d.why.to_string(),
                        })
                        .collect(),
                ),
            };
            TableConsistency {
                table: name.clone(),
                state,
                buckets,
            }
        })
        .collect()
}

/// Fetches every peer's rows of one bucket, applies the newer ones, then settles equal
/// versions; returns (newer applied, equal versions settled). This node's own rows are read
/// before the newer ones come in: a row it only just copied from a peer is not a vote.
async fn repair_bucket(
    cfg: &Config,
    js: &jetstream::Context,
    writer: &WriterHandle,
    peers: &[u64],
    table: &str,
    bucket: usize,
) -> anyhow::Result<(u64, u64)> {
    let db = cfg.db_path.clone();
    let name = table.to_owned();
    let (mine, form) =
        tokio::task::spawn_blocking(move || local_bucket(&db, &name, bucket)).await??;
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
    let theirs: Vec<TableChanges> = theirs.into_iter().map(|(_, rows)| rows).collect();
    let winners = equal_version_winners(&form, &mine, &theirs);
    let settled = if winners.rows.is_empty() {
        0
    } else {
        writer.repair(Repair::EqualVersions(winners)).await?
    };
    Ok((newer, settled))
}

/// This node's rows of one bucket, read page by page, and how the table's keys are read.
fn local_bucket(db: &Path, table: &str, bucket: usize) -> anyhow::Result<(TableChanges, KeyForm)> {
    let mut reader = Reader::open(db)?;
    let Some(form) = reader.key_form(table)? else {
        anyhow::bail!("table {table} is not captured here");
    };
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
    let all = all.ok_or_else(|| anyhow::anyhow!("no rows read"))?;
    Ok((all, form))
}

/// For every key `mine` holds, the content that wins among the nodes that hold it at the same
/// `(version, node)`: the content most of them hold; among equally many, live content before a
/// tombstone (a version is a write or a delete, never both, so one side is damaged, and keeping
/// data loses nothing anyone wrote); then the smaller content hash. Every node computes the
/// same winner from the same rows. Returns the winners that differ from `mine`.
pub fn equal_version_winners(
    form: &KeyForm,
    mine: &TableChanges,
    theirs: &[TableChanges],
) -> TableChanges {
    let indexed: Vec<HashMap<Vec<u8>, &RowChange>> = theirs
        .iter()
        .filter(|t| t.columns == mine.columns)
        .map(|t| t.rows.iter().map(|r| (form.bytes(&r.key), r)).collect())
        .collect();
    let mut winners = Vec::new();
    for row in &mine.rows {
        let key = form.bytes(&row.key);
        let (_, own) = form.row_hashes(&key, row);
        let mut groups: BTreeMap<u64, (usize, &RowChange)> = BTreeMap::new();
        groups.insert(own, (1, row));
        for peer in &indexed {
            let Some(other) = peer.get(&key) else {
                continue;
            };
            if (other.version, other.node) != (row.version, row.node) {
                continue;
            }
            let (_, hash) = form.row_hashes(&key, other);
            groups.entry(hash).or_insert((0, other)).0 += 1;
        }
        // BTreeMap order: among equals, the first is the smallest hash.
        let best = groups
            .iter()
            .max_by(|(ha, (na, ra)), (hb, (nb, rb))| {
                (na, !ra.deleted)
                    .cmp(&(nb, !rb.deleted))
                    .then_with(|| hb.cmp(ha))
            })
            .map(|(hash, (_, winner))| (*hash, *winner));
        if let Some((hash, winner)) = best
            && hash != own
        {
            winners.push(winner.clone());
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

    fn form() -> KeyForm {
        KeyForm::binary(&["id".to_owned(), "v".to_owned()], &["id"])
    }

    #[test]
    fn the_majority_at_the_same_version_wins_and_ties_are_order_independent() {
        let f = form();
        let mine = table(vec![row(1, 5, 1, "changed"), row(2, 5, 1, "same")]);
        let peer = table(vec![row(1, 5, 1, "written"), row(2, 5, 1, "same")]);
        let winners = equal_version_winners(&f, &mine, &[peer.clone(), peer.clone()]);
        assert_eq!(winners.rows, vec![row(1, 5, 1, "written")]);
        // Another version is not this rule's business (the ordinary apply decides it).
        let newer = table(vec![row(1, 6, 2, "newer")]);
        assert!(equal_version_winners(&f, &mine, &[newer]).rows.is_empty());
        // One against one: both sides pick the same content.
        let a = table(vec![row(1, 5, 1, "a")]);
        let b = table(vec![row(1, 5, 1, "b")]);
        let from_a = equal_version_winners(&f, &a, std::slice::from_ref(&b));
        let from_b = equal_version_winners(&f, &b, std::slice::from_ref(&a));
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

    #[test]
    fn a_tie_keeps_the_row_rather_than_a_tombstone() {
        let f = form();
        let live = table(vec![row(1, 5, 1, "kept")]);
        let gone = table(vec![RowChange {
            deleted: true,
            values: Vec::new(),
            ..row(1, 5, 1, "")
        }]);
        assert!(
            equal_version_winners(&f, &live, std::slice::from_ref(&gone))
                .rows
                .is_empty()
        );
        assert_eq!(
            equal_version_winners(&f, &gone, std::slice::from_ref(&live)).rows,
            live.rows
        );
    }
}
