//! Live state of a running node, shared read-only with health, metrics, the dashboard and tests:
//! facts that are true now (ready, connected, paused, lag), not counts (those are the counters
//! of `metrics::Metrics`).
//!
//! Writers are the subsystems that own each fact (publisher, consumers, node); everything is an
//! atomic or a short-held std mutex, never held across `.await`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::ids::{Lane, NodeId};
use crate::metrics::{Gauges, ShardLag};
use crate::nats::client::ConnectionState;
use crate::nats::server::ServerState;

/// Facts about this node.
#[derive(Debug)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub started: Instant,
    pub cdc_installed: AtomicBool,
    pub tables_tracked: AtomicU64,
    /// Wall-clock ms of the last batch JetStream acknowledged from us (0 = none yet).
    pub last_published_ms: AtomicU64,
    /// Wall-clock ms of the last remote batch committed here (0 = none yet).
    pub last_applied_ms: AtomicU64,
    pub pending_local: AtomicU64,
    pub ready: AtomicBool,
    /// Set while a snapshot is being restored into the database (readiness fails meanwhile).
    pub restoring: AtomicBool,
    /// Whether this node holds the snapshot leader lease.
    pub snapshot_leader: AtomicBool,
    /// Whether the last JetStream round trip of the web sampler succeeded: a frozen server keeps
    /// the TCP connection (and `nats_connected`) up long after it stopped answering.
    pub nats_responsive: AtomicBool,
    /// Shards paused by a schema mismatch right now (0 = replicating normally).
    pub schema_paused_shards: AtomicU64,
    /// The highest version applied from a Go HarmonyLite message carrying this node's own id
    /// (written by the Go node this one replaced): such rows look local, but the Go peers had
    /// them first, so the publisher sends no Go-format copy of them (`replication::publisher`).
    pub go_own_replayed: AtomicU64,
    /// What this node lacks and how it gets it back (gaps, a snapshot it waits for).
    pub recovery: Recovery,
    /// What the liveness probe reads.
    pub liveness: Liveness,
    inner: Mutex<Shared>,
}

/// Signs of life: the runtime's heartbeat and whether the database writer is stuck in one
/// command. Nothing here depends on NATS: a node keeps capturing writes through an outage.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Wall-clock ms of the heartbeat task's last beat (0 = not started).
    pub heartbeat_ms: AtomicU64,
    writer_busy_since_ms: std::sync::OnceLock<Arc<AtomicU64>>,
}

impl Liveness {
    /// Lets the probe see the writer (`db::WriterHandle::busy_since`).
    pub fn attach_writer(&self, busy_since_ms: Arc<AtomicU64>) {
        let _ = self.writer_busy_since_ms.set(busy_since_ms);
    }

    /// When the writer started its current command (ms since the epoch), if it is busy.
    pub fn writer_busy_since_ms(&self) -> Option<u64> {
        let since = self.writer_busy_since_ms.get()?.load(Ordering::Relaxed);
        (since > 0).then_some(since)
    }
}

/// A stream range this node needs and the stream no longer holds: history was trimmed (or
/// deleted) past its floor. Only a snapshot that covers it, or an operator, closes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OpenGap {
    pub stream: String,
    /// The stream's incarnation the range belongs to.
    pub incarnation: String,
    pub first_missing: u64,
    pub last_missing: u64,
    /// When it was found (ms since the epoch).
    pub since_ms: u64,
}

/// The recovery facts, with a notification for the task that acts on them.
#[derive(Debug, Default)]
pub struct Recovery {
    facts: Mutex<RecoveryFacts>,
    changed: tokio::sync::Notify,
}

/// The last comparison of every node's content digests, as this node made it
/// (`consistency::repair`): shown on `/health`, the Consistency page and `/api/consistency`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Consistency {
    /// When, ms since the epoch (none yet: `None`).
    pub compared_at_ms: Option<u64>,
    /// The nodes whose digests were compared.
    pub nodes: Vec<u64>,
    /// Why the digests could not be compared, when they could not.
    pub cannot_tell: Option<String>,
    pub tables: Vec<TableConsistency>,
    /// Rows this node repaired since it started, by kind.
    pub adopted: u64,
    pub newer: u64,
    pub equal_version: u64,
}

impl Consistency {
    /// Tables the comparison found differing.
    pub fn diverged(&self) -> usize {
        self.tables.iter().filter(|t| t.state == "differ").count()
    }
}

/// One table in the last comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableConsistency {
    pub table: String,
    /// `agree`, `differ` or `in flight`.
    pub state: &'static str,
    /// The buckets that differ or are in flight: key-hash ranges, nodes, why.
    pub buckets: Vec<BucketConsistency>,
}

/// One bucket that differs or is in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BucketConsistency {
    pub bucket: usize,
    /// The key-hash range, as hex prefixes (`0x00..0x03`).
    pub range: String,
    /// The nodes outside the majority (empty when in flight).
    pub nodes: Vec<u64>,
    pub why: String,
}

/// What the node lacks now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryFacts {
    /// Open gaps, one per stream at most.
    pub gaps: Vec<OpenGap>,
    /// Why the node waits for a snapshot besides its gaps (a new database without the
    /// application's tables while the streams hold changes).
    pub waiting_for_snapshot: Option<String>,
    /// Why the last attempt to get a snapshot did not succeed (retried with backoff).
    pub blocked: Option<String>,
}

impl RecoveryFacts {
    /// Whether the node lacks data it knows of.
    pub fn lacks_data(&self) -> bool {
        !self.gaps.is_empty() || self.waiting_for_snapshot.is_some()
    }
}

impl Recovery {
    fn update(&self, f: impl FnOnce(&mut RecoveryFacts)) {
        let changed = {
            let mut facts = self.facts.lock().unwrap_or_else(|p| p.into_inner());
            let before = facts.clone();
            f(&mut facts);
            *facts != before
        };
        if changed {
            self.changed.notify_one();
        }
    }

    /// The facts now.
    pub fn facts(&self) -> RecoveryFacts {
        self.facts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records `gap` as open (replacing an older one of its stream).
    pub fn open_gap(&self, gap: OpenGap) {
        self.update(|f| {
            match f.gaps.iter_mut().find(|g| g.stream == gap.stream) {
                // The same gap seen again (the stream trimmed further): it keeps its start time.
                Some(g) if g.first_missing == gap.first_missing => {
                    g.last_missing = gap.last_missing
                }
                Some(g) => *g = gap,
                None => f.gaps.push(gap),
            }
        });
    }

    /// Forgets `stream`'s gap (its consumer found none).
    pub fn close_gap(&self, stream: &str) {
        self.update(|f| f.gaps.retain(|g| g.stream != stream));
    }

    /// Forgets every gap and the wait for a snapshot (after a restore or an accepted gap: the
    /// consumers find out again what is still missing).
    pub fn clear(&self) {
        self.update(|f| *f = RecoveryFacts::default());
    }

    pub fn set_waiting_for_snapshot(&self, why: Option<String>) {
        self.update(|f| f.waiting_for_snapshot = why);
    }

    pub fn set_blocked(&self, why: Option<String>) {
        self.update(|f| f.blocked = why);
    }

    /// Resolves when the facts change.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Where the web servers listen (port 0 in the config resolves here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebAddrs {
    pub health: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Default, Clone)]
struct Shared {
    schema_hash: String,
    schema_previous_hash: Option<String>,
    nats_urls: Vec<String>,
    connection: Option<Arc<ConnectionState>>,
    server: Option<Arc<ServerState>>,
    shard_lag: Vec<ShardLag>,
    web: WebAddrs,
    /// The streams this node reads (for per-stream gauges).
    streams: Vec<String>,
    /// Changes held in the quarantine, as last counted.
    quarantine_held: u64,
    /// Another live instance registered this node's id after us (`schema::registry`).
    identity_conflict: Option<String>,
    /// The last comparison of every node's content digests (`consistency`).
    consistency: Consistency,
    /// Streams paused on a message in the Go HarmonyLite format (without
    /// `replication_log.go_compat`): stream → what was met.
    foreign_pauses: std::collections::BTreeMap<String, ForeignPause>,
    /// The consumers of this engine start, and whether each has compared its floor with its
    /// stream: until then the node cannot know it lacks nothing, so it is not ready.
    consumers: Vec<(Lane, bool)>,
    /// Insecure settings this node was allowed to start with (an existing installation,
    /// `node::start`), shown on `/health` and the dashboard.
    security_warnings: Vec<String>,
}

/// A stream paused because it holds a message in the Go HarmonyLite format, which this node
/// does not apply without `replication_log.go_compat`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForeignPause {
    pub stream: String,
    /// The message's stream sequence.
    pub seq: u64,
    /// The Go node that published it.
    pub from_node: NodeId,
}

impl std::fmt::Display for ForeignPause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stream {} is paused at sequence {}: a Go HarmonyLite change from node {}; set \
             replication_log.go_compat = true to apply such changes, or give this cluster its \
             own nats.stream_prefix and nats.subject_prefix (docs/migrating-from-go.md)",
            self.stream, self.seq, self.from_node
        )
    }
}

impl NodeStatus {
    pub fn new(node_id: NodeId) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            started: Instant::now(),
            cdc_installed: AtomicBool::new(false),
            tables_tracked: AtomicU64::new(0),
            last_published_ms: AtomicU64::new(0),
            last_applied_ms: AtomicU64::new(0),
            pending_local: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            restoring: AtomicBool::new(false),
            snapshot_leader: AtomicBool::new(false),
            nats_responsive: AtomicBool::new(true),
            schema_paused_shards: AtomicU64::new(0),
            go_own_replayed: AtomicU64::new(0),
            recovery: Recovery::default(),
            liveness: Liveness::default(),
            inner: Mutex::new(Shared::default()),
        })
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A poisoned lock only means a panic elsewhere while holding plain data; keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine starts consumers for `lanes` (none: empty); none has checked its position yet.
    pub fn expect_consumers(&self, lanes: &[Lane]) {
        self.shared().consumers = lanes.iter().map(|lane| (*lane, false)).collect();
    }

    /// `lane`'s consumer compared its floor with the stream (a gap, if any, is open now).
    pub fn set_position_checked(&self, lane: Lane) {
        for (expected, checked) in &mut self.shared().consumers {
            if *expected == lane {
                *checked = true;
            }
        }
    }

    /// Lanes whose consumer runs but has not yet checked its position.
    pub fn unchecked_lanes(&self) -> Vec<Lane> {
        let consumers = &self.shared().consumers;
        consumers
            .iter()
            .filter(|(_, checked)| !checked)
            .map(|(lane, _)| *lane)
            .collect()
    }

    /// Records (or clears) another live instance holding this node's id.
    pub fn set_identity_conflict(&self, conflict: Option<String>) {
        self.shared().identity_conflict = conflict;
    }

    pub fn identity_conflict(&self) -> Option<String> {
        self.shared().identity_conflict.clone()
    }

    /// Records a stream paused on a Go HarmonyLite message; true when it was not paused yet.
    pub fn pause_foreign(&self, pause: ForeignPause) -> bool {
        let mut shared = self.shared();
        let fresh = shared.foreign_pauses.get(&pause.stream) != Some(&pause);
        shared.foreign_pauses.insert(pause.stream.clone(), pause);
        fresh
    }

    /// Clears `stream`'s pause on a Go HarmonyLite message.
    pub fn resume_foreign(&self, stream: &str) {
        self.shared().foreign_pauses.remove(stream);
    }

    /// Streams paused on Go HarmonyLite messages.
    pub fn foreign_pauses(&self) -> Vec<ForeignPause> {
        self.shared().foreign_pauses.values().cloned().collect()
    }

    /// Records an insecure setting the node runs with despite the secure defaults.
    pub fn add_security_warning(&self, warning: String) {
        self.shared().security_warnings.push(warning);
    }

    /// Records the last comparison of the content digests.
    pub fn set_consistency(&self, consistency: Consistency) {
        self.shared().consistency = consistency;
    }

    /// The last comparison of the content digests (default: none yet).
    pub fn consistency(&self) -> Consistency {
        self.shared().consistency.clone()
    }

    pub fn security_warnings(&self) -> Vec<String> {
        self.shared().security_warnings.clone()
    }

    pub fn set_schema_hash(&self, hash: String) {
        self.shared().schema_hash = hash;
    }
    pub fn schema_hash(&self) -> String {
        self.shared().schema_hash.clone()
    }
    /// Sets the current schema hash and the one before it (`schema::gate` owns both).
    pub fn set_schema(&self, hash: String, previous: Option<String>) {
        let mut s = self.shared();
        s.schema_hash = hash;
        s.schema_previous_hash = previous;
    }
    /// The schema hash this node had before its last schema change, still accepted.
    pub fn schema_previous_hash(&self) -> Option<String> {
        self.shared().schema_previous_hash.clone()
    }
    /// Whether any shard is paused by a schema mismatch.
    pub fn schema_paused(&self) -> bool {
        self.schema_paused_shards.load(Ordering::Relaxed) > 0
    }
    pub fn set_nats(&self, urls: Vec<String>, connection: Arc<ConnectionState>) {
        let mut s = self.shared();
        s.nats_urls = urls;
        s.connection = Some(connection);
    }
    pub fn nats_urls(&self) -> Vec<String> {
        self.shared().nats_urls.clone()
    }
    pub fn nats_connected(&self) -> bool {
        self.shared()
            .connection
            .as_ref()
            .is_some_and(|c| c.is_connected())
    }
    pub fn set_server(&self, server: Arc<ServerState>) {
        self.shared().server = Some(server);
    }
    /// The bundled server's state, when this node runs one.
    pub fn server(&self) -> Option<Arc<ServerState>> {
        self.shared().server.clone()
    }

    pub fn set_shard_lag(&self, lag: Vec<ShardLag>) {
        self.shared().shard_lag = lag;
    }
    /// Per-shard consumer lag as last sampled (empty before the first sample).
    pub fn shard_lag(&self) -> Vec<ShardLag> {
        self.shared().shard_lag.clone()
    }
    pub fn set_web_addrs(&self, addrs: WebAddrs) {
        self.shared().web = addrs;
    }
    pub fn web_addrs(&self) -> WebAddrs {
        self.shared().web
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn set_streams(&self, streams: Vec<String>) {
        self.shared().streams = streams;
    }
    pub fn set_quarantine_held(&self, held: u64) {
        self.shared().quarantine_held = held;
    }
    /// Changes held in the quarantine, as last counted.
    pub fn quarantine_held(&self) -> u64 {
        self.shared().quarantine_held
    }

    /// The state the Prometheus gauges show.
    pub fn gauges(&self) -> Gauges {
        let relaxed = Ordering::Relaxed;
        let recovery = self.recovery.facts();
        let (streams, quarantine_held) = {
            let s = self.shared();
            (s.streams.clone(), s.quarantine_held)
        };
        let gap_missing = streams
            .into_iter()
            .map(|stream| {
                let missing = recovery
                    .gaps
                    .iter()
                    .find(|g| g.stream == stream)
                    .map_or(0, |g| g.last_missing + 1 - g.first_missing);
                (stream, missing)
            })
            .collect();
        Gauges {
            gap_missing,
            waiting_for_snapshot: recovery.lacks_data(),
            quarantine_held,
            pending_changes: self.pending_local.load(relaxed),
            tables_tracked: self.tables_tracked.load(relaxed),
            cdc_installed: self.cdc_installed.load(relaxed),
            ready: self.ready.load(relaxed),
            schema_paused: self.schema_paused(),
            nats_connected: self.nats_connected() && self.nats_responsive.load(relaxed),
            shard_lag: self.shard_lag(),
        }
    }
}
