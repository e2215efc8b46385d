//! The digest task: every `consistency.interval` seconds it folds the capture logs, digests
//! every captured table on its own read connection (paced to about a twentieth of one core:
//! after each chunk of rows it sleeps nineteen times as long as the chunk took) and publishes
//! the result to KV bucket `harmonylite-digests`: key `node-<id>` holds the summary (time,
//! floors, pending changes, each table's root), key `node-<id>.<table in hex>` each table's
//! buckets. Then it compares every node's digests and repairs what this node holds outside
//! the majority (`repair`). A failed round is logged and tried again next interval; it never
//! stops replication.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::compare::{NodeDigests, RoundFacts, Settling};
use crate::cdc::digest::TableDigest;
use crate::config::Config;
use crate::db::{Reader, WriterHandle};
use crate::error::Chain;
use crate::hlc::now_ms;
use crate::metrics::Metrics;
use crate::status::NodeStatus;

/// The bucket's name.
pub const BUCKET: &str = "harmonylite-digests";

/// A node's summary entry: its `NodeDigests` without the buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(flatten)]
    pub round: RoundFacts,
    /// How long the round took, ms (a round longer than the interval is not stale).
    #[serde(default)]
    pub took_ms: u64,
    /// The node's schema hash: digests of different schemas are not compared.
    #[serde(default)]
    pub schema_hash: String,
    /// Table name → root of its digest.
    pub tables: BTreeMap<String, u64>,
    /// The buckets this node's own last comparison found differing, as (table, bucket): it
    /// watched them across rounds (the settle time), which `-verify-cluster` cannot.
    #[serde(default)]
    pub differ: Vec<(String, usize)>,
}

/// The key of a node's summary.
pub fn summary_key(node_id: u64) -> String {
    format!("node-{node_id}")
}

/// The key of one table's digest (KV keys allow few characters: the name goes in hex).
pub fn table_key(node_id: u64, table: &str) -> String {
    format!("node-{node_id}.{}", hex::encode(table.as_bytes()))
}

pub fn bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: BUCKET.to_owned(),
        description: "harmonylite: every node's content digests".to_owned(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// Task body.
pub async fn run(
    cfg: Arc<Config>,
    js: jetstream::Context,
    writer: WriterHandle,
    status: Arc<NodeStatus>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Some(every) = cfg.consistency_interval() else {
        // Off: a task that ends would stop the node.
        cancel.cancelled().await;
        return Ok(());
    };
    let mut settling = Settling::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        let started = Instant::now();
        let digests = match round(&cfg, &js, &writer, &status).await {
            Ok(digests) => digests,
            Err(error) => {
                warn!(error = %format!("{error:#}"), "content digests not published");
                continue;
            }
        };
        debug!(
            tables = digests.tables.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "content digests published"
        );
        let watch = (metrics.as_ref(), status.as_ref());
        let repaired = super::repair::round(&cfg, &js, &writer, watch, &digests, &mut settling);
        if let Err(error) = repaired.await {
            warn!(error = %format!("{error:#}"), "the digests were not compared or repaired");
        }
        // The round read every row (its own connection, opened and closed for it): what that
        // parsed and buffered goes back to the system, once a round.
        crate::memory::return_free_memory();
    }
}

/// One round: digests every table and publishes them.
async fn round(
    cfg: &Config,
    js: &jetstream::Context,
    writer: &WriterHandle,
    status: &NodeStatus,
) -> anyhow::Result<NodeDigests> {
    let floors = |f: BTreeMap<String, crate::ids::StreamSeq>| {
        f.into_iter()
            .map(|(s, n)| (s, n.0))
            .collect::<BTreeMap<_, _>>()
    };
    let started = Instant::now();
    let floors_before = floors(writer.floors().await?);
    // Unfolded changes are counted as in flux; a fold that waits on the application's write
    // lock past the busy timeout only makes more of them.
    if let Err(error) = writer.fold().await {
        debug!(error = %Chain(&error), "capture logs not folded before the digests");
    }
    let db = cfg.db_path.clone();
    let local = status.node_id;
    let (tables, pending) = tokio::task::spawn_blocking(move || {
        let mut reader = Reader::open(&db)?;
        let tables = reader.digests(&mut crate::cdc::digest::pacer())?;
        // Counted after the scan: a local change it read that JetStream has not acknowledged
        // yet is a version the other nodes cannot have.
        anyhow::Ok((tables, reader.unpublished(local)?))
    })
    .await??;
    let floors_after = floors(writer.floors().await?);
    let at_ms = now_ms();
    let digests = NodeDigests {
        round: RoundFacts {
            node_id: status.node_id.0,
            at_ms,
            floors_before,
            floors_after,
            pending,
            streams_last: streams_last(cfg, js).await?,
        },
        tables: tables
            .into_iter()
            .map(|t| TableDigest { at_ms, ..t })
            .collect(),
        torn: false,
    };
    let store = crate::nats::kv::ensure(js, bucket_config(cfg.replicas()))
        .await
        .map_err(|reason| anyhow::anyhow!("cannot open bucket {BUCKET}: {reason}"))?;
    let took_ms = started.elapsed().as_millis() as u64;
    let differ = status
        .consistency()
        .tables
        .iter()
        .filter(|t| t.state == "differ")
        .flat_map(|t| t.buckets.iter().map(|b| (t.table.clone(), b.bucket)))
        .collect();
    publish(&store, &digests, took_ms, (status.schema_hash(), differ)).await?;
    Ok(digests)
}

/// Every shard stream's last sequence, as its leader answers.
async fn streams_last(
    cfg: &Config,
    js: &jetstream::Context,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for n in 0..cfg.replication_log.shards {
        let name = cfg.stream_name(crate::ids::ShardId(n));
        let mut stream = js.get_stream(&name).await?;
        out.insert(name, stream.info().await?.state.last_sequence);
    }
    Ok(out)
}

/// Writes the table entries, then the summary that names them.
pub async fn publish(
    store: &kv::Store,
    digests: &NodeDigests,
    took_ms: u64,
    (schema_hash, differ): (String, Vec<(String, usize)>),
) -> anyhow::Result<()> {
    for t in &digests.tables {
        let key = table_key(digests.round.node_id, &t.table);
        store
            .put(key, serde_json::to_vec(t)?.into())
            .await
            .map_err(|e| anyhow::anyhow!("cannot write {BUCKET}: {}", Chain(&e)))?;
    }
    let summary = Summary {
        round: digests.round.clone(),
        took_ms,
        schema_hash,
        differ,
        tables: digests
            .tables
            .iter()
            .map(|t| (t.table.clone(), t.root()))
            .collect(),
    };
    store
        .put(
            summary_key(digests.round.node_id),
            serde_json::to_vec(&summary)?.into(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot write {BUCKET}: {}", Chain(&e)))?;
    Ok(())
}
