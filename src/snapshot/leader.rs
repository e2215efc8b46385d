//! The snapshot leader lease: one node at a time takes snapshots.
//!
//! The lease is key `snapshot` in KV bucket `harmonylite-snapshot-leader`, whose entries live
//! `leader_ttl` after their last write (the bucket's `max_age`). Taking it is a `create`, which
//! only succeeds when the key is absent (expired or released); renewing is an `update` against
//! the revision we wrote, which fails the moment someone else holds it. The holder renews every
//! third of the TTL. It counts itself leader only while its last renewal is younger than the
//! TTL, so on NATS loss it gives up before anyone else can take over.
//!
//! A node that needs a snapshot and finds none that covers it asks for one: key `request` in
//! the same bucket, rewritten while it waits (an entry lives `leader_ttl`). The leader takes a
//! snapshot at once when a request is newer than its newest snapshot. The request names what
//! it must cover, so that with no leader at all a node with a gap elsewhere can answer it
//! (`snapshot::service`).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use tracing::{debug, info, warn};

use crate::error::Chain;
use crate::ids::NodeId;

pub const BUCKET: &str = "harmonylite-snapshot-leader";
const KEY: &str = "snapshot";
const REQUEST_KEY: &str = "request";

/// A node's request for a snapshot now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotRequest {
    pub node_id: u64,
    pub reason: String,
    /// When it was (re)made, ms since the epoch.
    pub at_ms: u64,
    /// Per stream, the last sequence the snapshot's floor must reach (the requester's gaps;
    /// empty: any snapshot, for a new database). Absent in requests of older builds.
    #[serde(default)]
    pub covers: Vec<(String, u64)>,
}

pub struct Lease {
    js: jetstream::Context,
    store: Option<kv::Store>,
    node: NodeId,
    ttl: Duration,
    replicas: usize,
    /// Revision of our entry and when we wrote it, while we hold the lease.
    held: Option<(u64, Instant)>,
}

impl Lease {
    pub fn new(js: jetstream::Context, node: NodeId, ttl: Duration, replicas: usize) -> Lease {
        Lease {
            js,
            store: None,
            node,
            ttl,
            replicas,
            held: None,
        }
    }

    /// How often `tick` should run: a third of the TTL while leading (the renewal), more often
    /// while not, so an expired lease is taken soon after it expires.
    pub fn tick_interval(&self) -> Duration {
        if self.is_leader() {
            self.ttl / 3
        } else {
            (self.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
        }
    }

    /// Whether this node holds the lease right now.
    pub fn is_leader(&self) -> bool {
        self.held.is_some_and(|(_, at)| at.elapsed() < self.ttl)
    }

    /// Takes or renews the lease; returns whether this node leads.
    pub async fn tick(&mut self) -> bool {
        let store = match self.bucket().await {
            Ok(store) => store,
            Err(error) => {
                debug!(error = %format!("{error:#}"), "snapshot leader bucket unavailable");
                return self.lost("the leader bucket is unavailable");
            }
        };
        let value = self.node.0.to_string().into_bytes();
        match self.held {
            Some((revision, _)) => match store.update(KEY, value.into(), revision).await {
                Ok(revision) => {
                    self.held = Some((revision, Instant::now()));
                    true
                }
                Err(error) => {
                    warn!(error = %Chain(&error), "cannot renew the snapshot leader lease");
                    self.lost("renewal failed")
                }
            },
            None => match store.create(KEY, value.into()).await {
                Ok(revision) => {
                    info!(node_id = %self.node, "became the snapshot leader");
                    self.held = Some((revision, Instant::now()));
                    true
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => false,
                Err(error) => {
                    debug!(error = %Chain(&error), "cannot take the snapshot leader lease");
                    false
                }
            },
        }
    }

    /// Asks the leader for a snapshot now, one that covers `covers`.
    pub async fn request(
        &mut self,
        reason: &str,
        covers: Vec<(String, u64)>,
    ) -> anyhow::Result<()> {
        let store = self.bucket().await?;
        let request = SnapshotRequest {
            node_id: self.node.0,
            reason: reason.to_owned(),
            at_ms: crate::hlc::now_ms(),
            covers,
        };
        store
            .put(REQUEST_KEY, serde_json::to_vec(&request)?.into())
            .await?;
        Ok(())
    }

    /// The standing request for a snapshot, if a node made one within `leader_ttl`.
    pub async fn requested(&mut self) -> Option<SnapshotRequest> {
        let store = self.bucket().await.ok()?;
        let bytes = store.get(REQUEST_KEY).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether some node holds the lease now (`None`: the bucket cannot be read).
    pub async fn leader_present(&mut self) -> Option<bool> {
        let store = self.bucket().await.ok()?;
        store.get(KEY).await.ok().map(|entry| entry.is_some())
    }

    /// Gives the lease up (at shutdown), so another node takes over at once.
    pub async fn release(&mut self) {
        if self.held.take().is_some()
            && let Some(store) = &self.store
            && let Err(error) = store.purge(KEY).await
        {
            debug!(error = %Chain(&error), "cannot release the snapshot leader lease");
        }
    }

    fn lost(&mut self, why: &str) -> bool {
        if self.held.take().is_some() {
            warn!(reason = why, "no longer the snapshot leader");
        }
        false
    }

    async fn bucket(&mut self) -> anyhow::Result<kv::Store> {
        if let Some(store) = &self.store {
            return Ok(store.clone());
        }
        let store = match self.js.get_key_value(BUCKET).await {
            Ok(store) => store,
            Err(_) => self.create_bucket().await?,
        };
        self.store = Some(store.clone());
        Ok(store)
    }

    /// Creates the bucket with as many replicas as the cluster allows, up to `replicas`.
    async fn create_bucket(&self) -> anyhow::Result<kv::Store> {
        let mut last = String::new();
        for replicas in (1..=self.replicas.max(1)).rev() {
            let config = kv::Config {
                bucket: BUCKET.to_owned(),
                description: "harmonylite: the snapshot leader lease".to_owned(),
                history: 1,
                max_age: self.ttl,
                num_replicas: replicas,
                ..Default::default()
            };
            match self.js.create_key_value(config).await {
                Ok(store) => return Ok(store),
                Err(error) => {
                    if let Ok(store) = self.js.get_key_value(BUCKET).await {
                        return Ok(store);
                    }
                    last = error.to_string();
                }
            }
        }
        anyhow::bail!("cannot create KV bucket {BUCKET}: {last}")
    }
}
