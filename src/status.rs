//! Live state of a running node, shared read-only with health, metrics, the dashboard and tests.
//!
//! Writers are the subsystems that own each fact (publisher, consumers, node); everything is an
//! atomic or a short-held std mutex, never held across `.await`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::ids::NodeId;
use crate::nats::client::ConnectionState;
use crate::nats::server::ServerState;

/// Counters and facts about this node.
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
    pub published_changes: AtomicU64,
    pub published_batches: AtomicU64,
    pub publish_failures: AtomicU64,
    pub applied_changes: AtomicU64,
    pub applied_batches: AtomicU64,
    pub stale_changes: AtomicU64,
    pub conflicts: AtomicU64,
    pub malformed_messages: AtomicU64,
    pub pending_local: AtomicU64,
    pub ready: AtomicBool,
    inner: Mutex<Shared>,
}

#[derive(Debug, Default, Clone)]
struct Shared {
    schema_hash: String,
    nats_urls: Vec<String>,
    connection: Option<Arc<ConnectionState>>,
    server: Option<Arc<ServerState>>,
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
            published_changes: AtomicU64::new(0),
            published_batches: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            applied_changes: AtomicU64::new(0),
            applied_batches: AtomicU64::new(0),
            stale_changes: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            malformed_messages: AtomicU64::new(0),
            pending_local: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            inner: Mutex::new(Shared::default()),
        })
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A poisoned lock only means a panic elsewhere while holding plain data; keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_schema_hash(&self, hash: String) {
        self.shared().schema_hash = hash;
    }
    pub fn schema_hash(&self) -> String {
        self.shared().schema_hash.clone()
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

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
