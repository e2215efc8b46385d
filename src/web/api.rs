//! The dashboard's data: one view per page, built from the node's handles, served as JSON under
//! `/api/` and rendered by the page templates. Raw values (numbers, booleans, RFC 3339 times,
//! `null` for never); URLs redacted.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::health::{self, HealthReport};
use super::{WebError, WebState, rfc3339, rfc3339_opt};
use crate::config::redact_url;
use crate::db::ConflictEntry;
use crate::ids::ShardId;
use crate::metrics::Metrics;
use crate::status::NodeStatus;

/// A JetStream request slower than this is shown as an error on the page.
const JS_TIMEOUT: Duration = Duration::from_secs(2);
/// The schema registry bucket (DESIGN §7).
pub const REGISTRY_BUCKET: &str = "harmonylite-schema-registry";
pub const CONFLICTS_PER_PAGE: u64 = 25;

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub node: NodeView,
    pub health: HealthReport,
    pub ready: bool,
    pub not_ready: Vec<String>,
    pub nats: NatsView,
    pub embedded: Option<EmbeddedView>,
    pub peers: Vec<PeerView>,
    pub shards: Vec<ShardView>,
    pub counters: Counters,
    pub last_published: Option<String>,
    pub last_applied: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub node_id: u64,
    pub version: &'static str,
    pub commit: &'static str,
    pub uptime_seconds: u64,
    pub uptime: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NatsView {
    /// `embedded` (bundled nats-server) or `external` (`nats.urls`).
    pub mode: &'static str,
    pub urls: Vec<String>,
    pub connected: bool,
    pub disconnects: u64,
    pub server_name: String,
    pub server_version: String,
    pub cluster: Option<String>,
    /// Client URLs the server advertises for its cluster.
    pub connect_urls: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbeddedView {
    pub pid: u32,
    pub client_port: u32,
    pub cluster_port: u32,
    pub restarts: u64,
    pub routes: Vec<String>,
    pub leaf_remotes: Vec<String>,
}

/// A JetStream server holding this node's streams.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    pub name: String,
    /// Shards whose stream this server leads.
    pub leads: Vec<u32>,
    pub current: bool,
    pub offline: bool,
    /// Operations behind the leader, worst over the streams.
    pub lag: u64,
    /// Milliseconds since the leader heard from it, worst over the streams.
    pub active_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardView {
    pub shard: u32,
    pub stream: String,
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_message_at: Option<String>,
    pub leader: Option<String>,
    pub lag_messages: u64,
    pub lag_seconds: f64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Counters {
    pub published_changes: u64,
    pub published_batches: u64,
    pub publish_failures: u64,
    pub pending_local: u64,
    pub applied_changes: u64,
    pub applied_batches: u64,
    pub stale_changes: u64,
    pub conflicts: u64,
    pub malformed_messages: u64,
}

pub async fn overview(state: &WebState) -> Overview {
    let s = state.status();
    let cfg = state.cfg();
    let health = health::report(state).await;
    let not_ready = health::not_ready_reasons(s, &cfg.health_check, &health);
    let (shards, peers) = shard_views(state).await;
    let client = state.0.js.client();
    let server = client.server_info();
    let redacted = |urls: &[String]| urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>();
    let embedded = s.server().map(|srv| EmbeddedView {
        pid: srv.pid(),
        client_port: srv.client_port(),
        cluster_port: srv.cluster_port(),
        restarts: srv.restarts(),
        routes: redacted(&state.0.embedded.cluster_peers),
        leaf_remotes: redacted(&state.0.embedded.leaf_servers),
    });
    let uptime_seconds = s.started.elapsed().as_secs();
    Overview {
        node: NodeView {
            node_id: s.node_id.0,
            version: crate::VERSION,
            commit: crate::GIT_COMMIT,
            uptime_seconds,
            uptime: human_duration(uptime_seconds),
        },
        ready: not_ready.is_empty(),
        not_ready,
        nats: NatsView {
            mode: if cfg.nats.urls.is_empty() {
                "embedded"
            } else {
                "external"
            },
            urls: redacted(&s.nats_urls()),
            connected: health.nats_connected,
            disconnects: state.metrics().nats_disconnects.get(),
            server_name: server.server_name.clone(),
            server_version: server.version.clone(),
            cluster: server.cluster.clone(),
            connect_urls: redacted(&server.connect_urls),
        },
        health,
        embedded,
        peers,
        shards,
        counters: counters(s, state.metrics()),
        last_published: rfc3339_opt(NodeStatus::get(&s.last_published_ms)),
        last_applied: rfc3339_opt(NodeStatus::get(&s.last_applied_ms)),
    }
}

/// Every shard's stream state and lag, and the cluster's servers as the streams see them.
async fn shard_views(state: &WebState) -> (Vec<ShardView>, Vec<PeerView>) {
    let cfg = state.cfg();
    let lag = state.status().shard_lag();
    let infos = futures::future::join_all(
        (0..cfg.replication_log.shards)
            .map(|n| stream_info(&state.0.js, cfg.stream_name(ShardId(n)))),
    )
    .await;
    let mut shards = Vec::with_capacity(infos.len());
    let mut peers: BTreeMap<String, PeerView> = BTreeMap::new();
    for (n, info) in infos.into_iter().enumerate() {
        let shard = n as u32;
        let mut view = ShardView {
            shard,
            stream: cfg.stream_name(ShardId(shard)),
            ..ShardView::default()
        };
        if let Some(l) = lag.iter().find(|l| l.shard == shard) {
            view.lag_messages = l.messages;
            view.lag_seconds = (l.seconds * 10.0).round() / 10.0;
        }
        match info {
            Ok(info) => {
                let st = &info.state;
                view.messages = st.messages;
                view.bytes = st.bytes;
                view.first_seq = st.first_sequence;
                view.last_seq = st.last_sequence;
                view.last_message_at = (st.last_sequence > 0).then(|| {
                    let ms = st.last_timestamp.unix_timestamp_nanos() / 1_000_000;
                    rfc3339(ms.max(0) as u64)
                });
                if let Some(cluster) = &info.cluster {
                    view.leader = cluster.leader.clone();
                    note_peers(&mut peers, cluster, shard);
                }
            }
            Err(e) => view.error = Some(e),
        }
        shards.push(view);
    }
    (shards, peers.into_values().collect())
}

async fn stream_info(
    js: &jetstream::Context,
    name: String,
) -> Result<jetstream::stream::Info, String> {
    match tokio::time::timeout(JS_TIMEOUT, js.get_stream(&name)).await {
        Ok(Ok(stream)) => Ok(stream.cached_info().clone()),
        Ok(Err(e)) => Err(format!("stream {name}: {e}")),
        Err(_) => Err(format!("stream {name}: JetStream did not answer")),
    }
}

fn note_peers(
    peers: &mut BTreeMap<String, PeerView>,
    cluster: &jetstream::stream::ClusterInfo,
    shard: u32,
) {
    fn entry<'a>(peers: &'a mut BTreeMap<String, PeerView>, name: &str) -> &'a mut PeerView {
        peers.entry(name.to_owned()).or_insert_with(|| PeerView {
            name: name.to_owned(),
            leads: Vec::new(),
            current: true,
            offline: false,
            lag: 0,
            active_ms: 0,
        })
    }
    if let Some(leader) = &cluster.leader {
        entry(peers, leader).leads.push(shard);
    }
    for r in &cluster.replicas {
        let p = entry(peers, &r.name);
        p.current &= r.current;
        p.offline |= r.offline;
        p.lag = p.lag.max(r.lag.unwrap_or(0));
        p.active_ms = p.active_ms.max(r.active.as_millis() as u64);
    }
}

fn counters(s: &NodeStatus, m: &Metrics) -> Counters {
    Counters {
        published_changes: m.published_changes.get(),
        published_batches: m.published_batches.get(),
        publish_failures: m.publish_failures.get(),
        pending_local: NodeStatus::get(&s.pending_local),
        applied_changes: m.applied_changes.get(),
        applied_batches: m.applied_batches.get(),
        stale_changes: m.stale_changes.get(),
        conflicts: m.conflicts_total(),
        malformed_messages: m.malformed_messages.get(),
    }
}

/// `3d 4h`, `1h 2m`, `2m 3s`, `5s`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub node_id: u64,
    pub schema_hash: String,
    /// `None`: the registry bucket does not exist yet.
    pub registry: Option<Vec<RegistryEntry>>,
    pub note: Option<String>,
    /// Every registered node reports this node's schema hash.
    pub in_agreement: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegistryEntry {
    pub key: String,
    pub node_id: Option<u64>,
    pub schema_hash: Option<String>,
    pub previous_hash: Option<String>,
    pub harmonylite_version: Option<String>,
    pub updated_at: Option<String>,
    pub paused: Option<bool>,
    pub this_node: bool,
    pub matches_this_node: bool,
}

/// What a registry value may hold; every field optional so a newer writer never breaks us.
#[derive(Debug, Default, Deserialize)]
struct RegistryValue {
    node_id: Option<u64>,
    schema_hash: Option<String>,
    previous_hash: Option<String>,
    harmonylite_version: Option<String>,
    updated_at: Option<serde_json::Value>,
    paused: Option<bool>,
}

pub async fn cluster(state: &WebState) -> ClusterView {
    let s = state.status();
    let ours = health::schema_state(s).hash;
    let mut view = ClusterView {
        node_id: s.node_id.0,
        schema_hash: ours.clone(),
        registry: None,
        note: None,
        in_agreement: false,
    };
    match tokio::time::timeout(JS_TIMEOUT * 2, registry(&state.0.js, s.node_id.0, &ours)).await {
        Ok(Ok(entries)) => {
            view.in_agreement = entries.iter().all(|e| e.matches_this_node);
            view.registry = Some(entries);
        }
        Ok(Err(note)) => view.note = Some(note),
        Err(_) => view.note = Some("the schema registry did not answer".to_owned()),
    }
    view
}

async fn registry(
    js: &jetstream::Context,
    node_id: u64,
    ours: &str,
) -> Result<Vec<RegistryEntry>, String> {
    let kv = js
        .get_key_value(REGISTRY_BUCKET)
        .await
        .map_err(|e| format!("no registry yet ({e})"))?;
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| format!("cannot list the registry: {e}"))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        match key {
            Ok(k) if k.starts_with("node-") => names.push(k),
            Ok(_) => {}
            Err(e) => return Err(format!("cannot list the registry: {e}")),
        }
    }
    names.sort();
    let mut entries = Vec::with_capacity(names.len());
    for key in names {
        let Ok(Some(bytes)) = kv.get(&key).await else {
            continue;
        };
        let value: RegistryValue = serde_json::from_slice(&bytes).unwrap_or_default();
        let this_node = key == format!("node-{node_id}");
        let updated_at = value.updated_at.map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        });
        entries.push(RegistryEntry {
            matches_this_node: value.schema_hash.as_deref() == Some(ours),
            node_id: value.node_id,
            schema_hash: value.schema_hash,
            previous_hash: value.previous_hash,
            harmonylite_version: value.harmonylite_version,
            updated_at,
            paused: value.paused,
            this_node,
            key,
        });
    }
    Ok(entries)
}

#[derive(Debug, Clone, Serialize)]
pub struct TablesView {
    pub tables: Vec<TableView>,
    pub pending_total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableView {
    pub table: String,
    pub rows: u64,
    pub pending: u64,
    /// Entries of the conflict journal.
    pub conflicts: u64,
    /// Journal entries added since this node started.
    pub conflicts_since_start: u64,
}

pub async fn tables(state: &WebState) -> Result<TablesView, WebError> {
    let local = state.status().node_id;
    let stats = state.db(move |r| r.table_stats(local)).await?;
    let since_start = state.metrics().conflicts_by_table();
    let tables: Vec<TableView> = stats
        .into_iter()
        .map(|t| TableView {
            conflicts_since_start: since_start.get(&t.table).copied().unwrap_or(0),
            table: t.table,
            rows: t.rows,
            pending: t.pending,
            conflicts: t.conflicts,
        })
        .collect();
    Ok(TablesView {
        pending_total: tables.iter().map(|t| t.pending).sum(),
        tables,
    })
}

#[derive(Debug, Clone, Deserialize)]
pub struct PageQuery {
    pub page: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConflictsView {
    pub page: u64,
    pub pages: u64,
    pub per_page: u64,
    pub total: u64,
    pub entries: Vec<ConflictView>,
}

/// A journal entry as shown: the entry itself plus its time in RFC 3339.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictView {
    #[serde(flatten)]
    pub entry: ConflictEntry,
    pub at: String,
}

impl From<ConflictEntry> for ConflictView {
    fn from(entry: ConflictEntry) -> Self {
        let at = rfc3339(entry.at_ms.max(0) as u64);
        ConflictView { entry, at }
    }
}

/// Page `page` (1-based) of the conflict journal, newest first.
pub async fn conflicts(state: &WebState, page: u64) -> Result<ConflictsView, WebError> {
    let page = page.max(1);
    let offset = (page - 1).saturating_mul(CONFLICTS_PER_PAGE);
    let got = state
        .db(move |r| r.conflict_page(offset, CONFLICTS_PER_PAGE))
        .await?;
    Ok(ConflictsView {
        page,
        pages: got.total.div_ceil(CONFLICTS_PER_PAGE).max(1),
        per_page: CONFLICTS_PER_PAGE,
        total: got.total,
        entries: got.entries.into_iter().map(ConflictView::from).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m 5s");
        assert_eq!(human_duration(3720), "1h 2m");
        assert_eq!(human_duration(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
    }

    #[test]
    fn registry_values_parse_leniently() {
        let v: RegistryValue = serde_json::from_str(
            r#"{"node_id":2,"schema_hash":"ab","previous_hash":"","harmonylite_version":"0.1.0",
                "updated_at":"2025-01-01T00:00:00Z","paused":false,"extra":1}"#,
        )
        .unwrap();
        assert_eq!(v.node_id, Some(2));
        assert_eq!(v.paused, Some(false));
        let partial: RegistryValue = serde_json::from_str(r#"{"schema_hash":"x"}"#).unwrap();
        assert_eq!(partial.node_id, None);
    }
}
