//! `harmonylite -verify-cluster`: reads every node's digests from KV bucket
//! `harmonylite-digests` and says, per table, whether the nodes agree. Exit status: 0 every
//! table agrees, 1 some table differs (named with its buckets and nodes), 3 cannot tell (changes
//! in flight, fewer than two nodes' digests, a digest older than three rounds, or NATS
//! unreachable; 2 stays the configuration error's).

use std::collections::BTreeMap;

use async_nats::jetstream;
use futures::StreamExt;

use super::compare::{Difference, NodeDigests, TableVerdict, Why, compare, minority_by_versions};
use super::publish::{BUCKET, Summary, table_key};
use crate::cdc::digest::{TableDigest, bucket_range};
use crate::config::Config;
use crate::hlc::now_ms;
use crate::nats::command;

/// Exit status: every table agrees.
pub const AGREE: u8 = 0;
/// Exit status: some table differs.
pub const DIFFER: u8 = 1;
/// Exit status: cannot tell.
pub const UNKNOWN: u8 = 3;

/// Errors of the command, worded for the terminal (exit status 3).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Nats(#[from] command::CommandError),
    #[error("cannot read {BUCKET}: {0}")]
    Read(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(String),
}

/// Runs the comparison; returns its text and exit status.
pub fn run(cfg: &Config) -> Result<(String, u8), VerifyError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| VerifyError::Runtime(e.to_string()))?;
    runtime.block_on(verify(cfg))
}

async fn verify(cfg: &Config) -> Result<(String, u8), VerifyError> {
    let client = command::connect(cfg).await?;
    let js = crate::nats::client::jetstream(client, &cfg.nats);
    let Ok(store) = js.get_key_value(BUCKET).await else {
        return Ok((
            format!("cannot tell: no node has published digests yet (no bucket {BUCKET})\n"),
            UNKNOWN,
        ));
    };
    let summaries = read_summaries(&store).await?;
    let mut out = format!("content digests in {BUCKET}: {} nodes\n", summaries.len());
    let now = now_ms();
    for s in &summaries {
        out.push_str(&format!(
            "  node-{}: {} tables, {:.0} s old\n",
            s.round.node_id,
            s.tables.len(),
            now.saturating_sub(s.round.at_ms) as f64 / 1000.0
        ));
    }
    let (fresh, why) = fresh_summaries(cfg, summaries, now);
    if let Some(why) = why {
        out.push_str(&format!("cannot tell: {why}\n"));
        return Ok((out, UNKNOWN));
    }
    let nodes = read_tables(&store, &fresh).await?;
    let mut verdicts = compare(&nodes);
    settled_by_nodes(&fresh, &nodes, &mut verdicts);
    Ok(render(out, &fresh, &verdicts))
}

/// In-flight buckets that some node, watching them across rounds, found differing: they
/// outlived the settle time there (`compare::Settling`).
fn settled_by_nodes(
    fresh: &[Summary],
    nodes: &[NodeDigests],
    verdicts: &mut BTreeMap<String, TableVerdict>,
) {
    for (table, verdict) in verdicts.iter_mut() {
        let TableVerdict::InFlight(buckets) = verdict else {
            continue;
        };
        let settled: Vec<Difference> = buckets
            .iter()
            .filter(|&&b| {
                fresh
                    .iter()
                    .any(|s| s.differ.iter().any(|(t, x)| t == table && *x == b))
            })
            .map(|&b| Difference {
                bucket: b,
                nodes: minority_by_versions(nodes, table, b),
                why: Why::Unsettled,
            })
            .collect();
        if !settled.is_empty() {
            *verdict = TableVerdict::Differ(settled);
        }
    }
}

/// Beyond three rounds, what a round may take besides its scan (comparing, repairing, KV
/// writes) on a busy machine before its node counts as stale: a node flickering in and out of
/// the comparison would restart every settle time.
const MARGIN_MS: u64 = 5_000;

/// The summaries to compare: those younger than three rounds (plus twice the time their own
/// round took: pacing makes a round of a large database longer than the interval), and why the
/// digests cannot answer, if they cannot: fewer than two fresh nodes, or nodes on different
/// schemas (a rolling schema change). A node that stopped publishing (down, digests off, gone
/// for good) is left out rather than blocking every comparison.
pub(super) fn fresh_summaries(
    cfg: &Config,
    summaries: Vec<Summary>,
    now: u64,
) -> (Vec<Summary>, Option<String>) {
    let interval = match cfg.consistency.digest_interval_ms {
        0 => crate::config::ConsistencyConfig::default().digest_interval_ms,
        ms => ms,
    };
    let (fresh, stale): (Vec<Summary>, Vec<Summary>) = summaries.into_iter().partition(|s| {
        now.saturating_sub(s.round.at_ms) <= 3 * interval + 2 * s.took_ms + MARGIN_MS
    });
    if fresh.len() < 2 {
        let left_out: Vec<String> = stale
            .iter()
            .map(|s| format!("node-{}", s.round.node_id))
            .collect();
        return (
            fresh,
            Some(format!(
                "fewer than two nodes published digests in the last three rounds ({interval} ms \
                 each){}",
                if left_out.is_empty() {
                    String::new()
                } else {
                    format!("; older: {}", left_out.join(", "))
                }
            )),
        );
    }
    let schemas: std::collections::BTreeSet<&str> =
        fresh.iter().map(|s| s.schema_hash.as_str()).collect();
    if schemas.len() > 1 {
        let why = format!(
            "the nodes are on different schemas ({}): a schema change is rolling out",
            schemas.into_iter().collect::<Vec<_>>().join(", ")
        );
        return (fresh, Some(why));
    }
    (fresh, None)
}

pub(super) async fn read_summaries(
    store: &jetstream::kv::Store,
) -> Result<Vec<Summary>, VerifyError> {
    let read = |e: &dyn std::fmt::Display| VerifyError::Read(e.to_string());
    let mut keys = store.keys().await.map_err(|e| read(&e))?;
    let mut names = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| read(&e))?;
        if k.starts_with("node-") && !k.contains('.') {
            names.push(k);
        }
    }
    let mut out = Vec::new();
    for k in names {
        let Some(bytes) = store.get(&k).await.map_err(|e| read(&e))? else {
            continue;
        };
        let summary: Summary =
            serde_json::from_slice(&bytes).map_err(|e| read(&format!("{k}: {e}")))?;
        out.push(summary);
    }
    out.sort_by_key(|s| s.round.node_id);
    Ok(out)
}

/// Every node's digests of the tables whose roots are not all equal.
pub(super) async fn read_tables(
    store: &jetstream::kv::Store,
    summaries: &[Summary],
) -> Result<Vec<NodeDigests>, VerifyError> {
    let mut tables: BTreeMap<&str, Vec<Option<u64>>> = BTreeMap::new();
    for (i, s) in summaries.iter().enumerate() {
        for (name, root) in &s.tables {
            tables
                .entry(name)
                .or_insert_with(|| vec![None; summaries.len()])[i] = Some(*root);
        }
    }
    let unequal: Vec<&str> = tables
        .iter()
        .filter(|(_, roots)| roots.windows(2).any(|w| w[0] != w[1]))
        .map(|(name, _)| *name)
        .collect();
    let mut nodes = Vec::new();
    for s in summaries {
        let mut digests = Vec::new();
        for name in &unequal {
            if !s.tables.contains_key(*name) {
                continue;
            }
            let key = table_key(s.round.node_id, name);
            let bytes = store
                .get(&key)
                .await
                .map_err(|e| VerifyError::Read(e.to_string()))?
                .ok_or_else(|| VerifyError::Read(format!("{key} is missing")))?;
            let digest: TableDigest = serde_json::from_slice(&bytes)
                .map_err(|e| VerifyError::Read(format!("{key}: {e}")))?;
            digests.push(digest);
        }
        nodes.push(NodeDigests {
            round: s.round.clone(),
            torn: digests.iter().any(|d| d.at_ms != s.round.at_ms),
            tables: digests,
        });
    }
    Ok(nodes)
}

fn render(
    mut out: String,
    summaries: &[Summary],
    verdicts: &BTreeMap<String, TableVerdict>,
) -> (String, u8) {
    let mut all: Vec<&str> = summaries
        .iter()
        .flat_map(|s| s.tables.keys().map(String::as_str))
        .collect();
    all.sort_unstable();
    all.dedup();
    let (mut differ, mut in_flight) = (0, 0);
    for table in all {
        match verdicts.get(table) {
            None | Some(TableVerdict::Agree) => out.push_str(&format!("{table}: agree\n")),
            Some(TableVerdict::InFlight(buckets)) => {
                in_flight += 1;
                out.push_str(&format!(
                    "{table}: changes in flight in buckets {buckets:?}; try again\n"
                ));
            }
            Some(TableVerdict::Differ(diffs)) => {
                differ += 1;
                out.push_str(&format!("{table}: DIFFERS\n"));
                for d in diffs {
                    let nodes: Vec<String> = d.nodes.iter().map(|n| format!("node-{n}")).collect();
                    out.push_str(&format!(
                        "  bucket {} (keys whose hash starts with {}): {} ({})\n",
                        d.bucket,
                        bucket_range(d.bucket),
                        nodes.join(", "),
                        d.why
                    ));
                }
            }
        }
    }
    let code = if differ > 0 {
        out.push_str(&format!("verdict: {differ} table(s) differ\n"));
        DIFFER
    } else if in_flight > 0 {
        out.push_str(&format!(
            "verdict: cannot tell yet, {in_flight} table(s) with changes in flight\n"
        ));
        UNKNOWN
    } else {
        out.push_str("verdict: every table agrees\n");
        AGREE
    };
    (out, code)
}
