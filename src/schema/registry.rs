//! The cluster-wide schema registry: JetStream KV bucket `harmonylite-schema-registry`, one key
//! per node (`node-<id>`), each value a plain JSON object, so `nats kv get
//! harmonylite-schema-registry node-1` shows it.
//!
//! A node writes its entry at start, on every change of its schema versions or paused shards,
//! and every `schema.registry_refresh_ms` (so `updated_at` says the node is alive). The bucket
//! has no TTL: an entry of a stopped node stays, with its last `updated_at`, instead of silently
//! disappearing. Registry failures never stop replication: they are logged and retried.
//!
//! The entry also names the node's instance (host and data directory, `instance::Instance`):
//! the registry is where a node id is claimed. At start a node refuses to run when a live
//! instance elsewhere (its entry written within 3 × `registry_refresh_ms`) holds its id
//! (`claim`); while running, a node that finds its key taken over by another live instance
//! stops writing it and says so on `/health/ready` and in the log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::gate::{Gate, GateState};
use super::identity;
use super::store::rfc3339;
use crate::config::Config;
use crate::error::Chain;
use crate::hlc::now_ms;
use crate::ids::NodeId;
use crate::instance::Instance;
use crate::retry::Backoff;
use crate::status::NodeStatus;

/// The bucket's name (DESIGN §1: the HarmonyLite name).
pub const BUCKET: &str = "harmonylite-schema-registry";
/// Waits between attempts to write this node's entry while NATS or the bucket fails.
const REGISTRY_RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// One node's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub node_id: u64,
    pub schema_hash: String,
    /// Empty when the node has not changed its schema since it started tracking it.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub previous_hash: String,
    #[serde(default)]
    pub harmonylite_version: String,
    /// RFC 3339, UTC.
    #[serde(default)]
    pub updated_at: String,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub paused_shards: Vec<u32>,
    /// Kernel host name of the instance holding the id (empty in entries of older versions).
    #[serde(default)]
    pub host: String,
    /// Its data directory.
    #[serde(default)]
    pub data_dir: String,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl RegistryEntry {
    /// The entry describing `state` of node `node` running as `instance`, stamped now.
    pub fn of(node: NodeId, state: &GateState, instance: &Instance) -> RegistryEntry {
        RegistryEntry {
            node_id: node.0,
            schema_hash: state.versions.current.to_string(),
            previous_hash: state
                .versions
                .previous
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            harmonylite_version: crate::VERSION.to_owned(),
            updated_at: rfc3339(now_ms()),
            paused: !state.paused.is_empty(),
            paused_shards: state.paused_shards(),
            host: instance.host.clone(),
            data_dir: instance.data_dir.clone(),
        }
    }

    /// The instance this entry names, when it names one.
    pub fn instance(&self) -> Option<Instance> {
        (!self.host.is_empty() || !self.data_dir.is_empty()).then(|| Instance {
            host: self.host.clone(),
            data_dir: self.data_dir.clone(),
        })
    }
}

/// Key of a node's entry.
pub fn key(node: NodeId) -> String {
    format!("node-{node}")
}

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot create the schema registry bucket {BUCKET}: {reason}")]
    Create { reason: String },
    #[error("the schema registry bucket {BUCKET} does not exist")]
    Missing,
    #[error("cannot {what} the schema registry bucket {BUCKET}: {reason}")]
    Access { what: &'static str, reason: String },
    #[error(
        "node id {node} is held by a live node on {holder} (registered {age_s} s ago); two \
         nodes with one id take each other's changes for their own. Give this node another \
         node_id, or stop the other one and wait {wait_s} s"
    )]
    Held {
        node: u64,
        holder: Instance,
        age_s: u64,
        wait_s: u64,
    },
}

/// The bucket's configuration with `replicas` copies.
fn bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: BUCKET.to_owned(),
        description: "harmonylite: schema hash of every node".to_owned(),
        history: 1,
        // No TTL: a silent node keeps its last entry, and its age shows it.
        max_age: Duration::ZERO,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// Opens the bucket, creating it when missing with `replicas` copies (`nats::kv::ensure`).
pub async fn ensure_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, RegistryError> {
    crate::nats::kv::ensure(js, bucket_config(replicas))
        .await
        .map_err(|reason| RegistryError::Create { reason })
}

/// Writes `entry` under its node's key.
pub async fn put(store: &kv::Store, entry: &RegistryEntry) -> Result<(), RegistryError> {
    let json = serde_json::to_vec(entry).map_err(|e| RegistryError::Access {
        what: "encode an entry for",
        reason: e.to_string(),
    })?;
    store
        .put(key(NodeId(entry.node_id)), json.into())
        .await
        .map_err(|e| RegistryError::Access {
            what: "write to",
            reason: e.to_string(),
        })?;
    Ok(())
}

/// Every `node-*` entry, by key; values that are not entries come back as the error text.
pub async fn list(
    js: &jetstream::Context,
) -> Result<BTreeMap<String, Result<RegistryEntry, String>>, RegistryError> {
    let store = js
        .get_key_value(BUCKET)
        .await
        .map_err(|_| RegistryError::Missing)?;
    let mut keys = store.keys().await.map_err(|e| access("list", e))?;
    let mut names = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| access("list", e))?;
        if k.starts_with("node-") {
            names.push(k);
        }
    }
    let mut out = BTreeMap::new();
    for k in names {
        let Some(bytes) = store.get(&k).await.map_err(|e| access("read", e))? else {
            continue;
        };
        let entry = serde_json::from_slice(&bytes).map_err(|e| format!("not an entry: {e}"));
        out.insert(k, entry);
    }
    Ok(out)
}

fn access(what: &'static str, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Access {
        what,
        reason: e.to_string(),
    }
}

/// How long a node's entry counts as written by a live node: three refreshes.
pub fn live_within(cfg: &Config) -> Duration {
    cfg.schema_registry_refresh() * 3
}

/// Writes `entry` unless another live instance took the key over: then that is recorded in
/// `status` (readiness fails, naming it) and the key left alone.
async fn write_unless_taken(
    store: &kv::Store,
    entry: &RegistryEntry,
    me: &Instance,
    live: Duration,
    status: &NodeStatus,
) -> Result<(), RegistryError> {
    let node = NodeId(entry.node_id);
    let current = store
        .entry(key(node))
        .await
        .map_err(|e| access("read", e))?;
    if let Some((holder, _)) = current.and_then(|c| identity::holder_elsewhere(&c, me, live)) {
        if status.identity_conflict().is_none() {
            tracing::error!(node_id = %node, other = %holder, "another live node now holds this node id");
        }
        status.set_identity_conflict(Some(holder.to_string()));
        return Ok(());
    }
    status.set_identity_conflict(None);
    put(store, entry).await
}

/// Task body: keeps this node's entry fresh until cancelled.
pub async fn run(
    cfg: Arc<Config>,
    js: jetstream::Context,
    gate: Gate,
    me: Instance,
    status: Arc<NodeStatus>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let live = live_within(&cfg);
    let replicas = cfg.replicas();
    let mut changes = gate.subscribe();
    let mut tick = tokio::time::interval(cfg.schema_registry_refresh());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut store: Option<kv::Store> = None;
    let mut failing_since: Option<u64> = None;
    let mut backoff = REGISTRY_RETRY;
    loop {
        let attempt = async {
            if store.is_none() {
                store = Some(ensure_bucket(&js, replicas).await?);
            }
            let entry = RegistryEntry::of(gate.local(), &changes.borrow_and_update(), &me);
            match &store {
                Some(s) => write_unless_taken(s, &entry, &me, live, &status).await,
                None => Ok(()),
            }
        };
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            outcome = attempt => outcome,
        };
        let retry = match outcome {
            Ok(()) => {
                if failing_since.take().is_some() {
                    info!("schema registry entry written again");
                }
                backoff.reset();
                None
            }
            Err(error) => {
                // Re-open the bucket next time: it may have been deleted.
                store = None;
                if failing_since.is_none() {
                    warn!(error = %Chain(&error), "cannot update the schema registry, retrying");
                    failing_since = Some(now_ms());
                }
                Some(backoff.next_delay())
            }
        };
        match retry {
            Some(wait) => {
                if !crate::retry::sleep(wait, &cancel).await {
                    return Ok(());
                }
            }
            None => tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() {
                        cancel.cancelled().await;
                        return Ok(());
                    }
                }
                _ = tick.tick() => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SchemaHash;
    use crate::ids::ShardId;
    use crate::schema::gate::{Pause, SchemaVersions};

    #[test]
    fn entry_is_plain_json_with_the_documented_fields() {
        let mut state = GateState {
            versions: SchemaVersions {
                current: SchemaHash("b".into()),
                previous: Some(SchemaHash("a".into())),
            },
            schema_version: 4,
            paused: BTreeMap::new(),
        };
        state.paused.insert(
            ShardId(2),
            Pause {
                received: "c".into(),
                origin: NodeId(3),
                seq: 9,
            },
        );
        let here = Instance {
            host: "h".into(),
            data_dir: "/d".into(),
        };
        let entry = RegistryEntry::of(NodeId(7), &state, &here);
        let json: serde_json::Value = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["node_id"], 7);
        assert_eq!(json["schema_hash"], "b");
        assert_eq!(json["previous_hash"], "a");
        assert_eq!(json["harmonylite_version"], crate::VERSION);
        assert_eq!(json["paused"], true);
        assert_eq!(json["paused_shards"], serde_json::json!([2]));
        assert_eq!(
            (&json["host"], &json["data_dir"]),
            (&"h".into(), &"/d".into())
        );
        assert_eq!(entry.instance(), Some(here));
        let at = json["updated_at"].as_str().unwrap();
        assert!(at.ends_with('Z') && at.len() == 24, "{at}");
        assert_eq!(key(NodeId(7)), "node-7");

        // Entries of other writers: missing fields and a null previous hash are fine.
        let other: RegistryEntry =
            serde_json::from_str(r#"{"node_id":1,"schema_hash":"x","previous_hash":null}"#)
                .unwrap();
        assert_eq!(other.previous_hash, "");
        assert!(!other.paused);
        assert_eq!(other.instance(), None);
    }

    #[test]
    fn bucket_has_no_ttl_and_one_revision() {
        let c = bucket_config(0);
        assert_eq!(c.bucket, BUCKET);
        assert_eq!(c.max_age, Duration::ZERO);
        assert_eq!(c.history, 1);
        assert_eq!(c.num_replicas, 1);
    }
}
