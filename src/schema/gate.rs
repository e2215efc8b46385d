//! The pause/resume gate: which incoming messages this node may apply, and which shards are
//! paused because a message's schema hash is unknown here.
//!
//! The decision (`decide`) is pure. `Gate` holds the node's schema versions and paused shards in
//! a `tokio::sync::watch` channel, so consumers waiting on a pause, the registry and the status
//! see every change without polling. Invariant: `previous` is never equal to `current`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::catalog::SchemaHash;
use crate::ids::{NodeId, ShardId};
use crate::status::NodeStatus;

/// The schema hashes a node accepts: its current one and the one it had before the last change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaVersions {
    pub current: SchemaHash,
    pub previous: Option<SchemaHash>,
}

impl SchemaVersions {
    /// The versions after the local schema was found to hash to `hash`: an unchanged hash keeps
    /// both, a new one pushes the current one to `previous`.
    pub fn advance(&self, hash: SchemaHash) -> SchemaVersions {
        if hash == self.current {
            return self.clone();
        }
        let previous = (!self.current.0.is_empty()).then(|| self.current.clone());
        SchemaVersions {
            current: hash,
            previous,
        }
    }

    /// Whether a message stamped with `hash` fits this node's schema.
    pub fn accepts(&self, hash: &str) -> bool {
        hash == self.current.0 || self.previous.as_ref().is_some_and(|p| p.0 == hash)
    }
}

/// What a consumer does with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Apply,
    /// The message was written on a schema this node does not have (yet): hold the shard.
    Pause,
}

/// Apply a message when its hash is the local current or previous one. Two kinds always pass:
/// this node's own messages (already in the database, so the applier finds them stale, and no
/// local DDL could ever make an old own hash acceptable again) and messages without a hash
/// (publishers that do not stamp one; they cannot be told apart from a match).
pub fn decide(local: NodeId, versions: &SchemaVersions, origin: NodeId, hash: &str) -> Decision {
    if origin == local || hash.is_empty() || versions.accepts(hash) {
        Decision::Apply
    } else {
        Decision::Pause
    }
}

/// Why a shard is paused: the first message it could not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pause {
    /// The hash that message carries.
    pub received: String,
    pub origin: NodeId,
    /// Its stream sequence.
    pub seq: u64,
}

/// Everything the gate knows; one `watch` value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateState {
    pub versions: SchemaVersions,
    /// `PRAGMA schema_version` the current hash was computed at (0 = not yet known).
    pub schema_version: i64,
    pub paused: BTreeMap<ShardId, Pause>,
}

impl GateState {
    pub fn paused_shards(&self) -> Vec<u32> {
        self.paused.keys().map(|s| s.0).collect()
    }
}

/// Shared handle to the gate. Cloning is cheap.
#[derive(Clone)]
pub struct Gate {
    local: NodeId,
    tx: Arc<watch::Sender<GateState>>,
    status: Arc<NodeStatus>,
    /// The node's `schema_pauses_total` counter.
    pauses: IntCounter,
}

impl Gate {
    /// A gate for `status.node_id` that accepts `versions`; every new pause counts on `pauses`.
    pub fn new(
        status: Arc<NodeStatus>,
        pauses: IntCounter,
        versions: SchemaVersions,
        schema_version: i64,
    ) -> Gate {
        let state = GateState {
            versions,
            schema_version,
            paused: BTreeMap::new(),
        };
        let gate = Gate {
            local: status.node_id,
            tx: Arc::new(watch::Sender::new(state)),
            status,
            pauses,
        };
        gate.publish_status();
        gate
    }

    pub fn local(&self) -> NodeId {
        self.local
    }

    /// A copy of the current state.
    pub fn state(&self) -> GateState {
        self.tx.borrow().clone()
    }

    pub fn versions(&self) -> SchemaVersions {
        self.tx.borrow().versions.clone()
    }

    /// `PRAGMA schema_version` the current hash belongs to.
    pub fn schema_version(&self) -> i64 {
        self.tx.borrow().schema_version
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<GateState> {
        self.tx.subscribe()
    }

    /// The decision for a message from `origin` stamped `hash`, against the current versions.
    pub fn decide(&self, origin: NodeId, hash: &str) -> Decision {
        decide(self.local, &self.tx.borrow().versions, origin, hash)
    }

    /// Records a (re)computed local schema; returns the versions now in force and whether the
    /// hash changed.
    pub fn set_schema(&self, hash: SchemaHash, schema_version: i64) -> (SchemaVersions, bool) {
        let mut changed = false;
        self.tx.send_if_modified(|s| {
            let next = s.versions.advance(hash);
            changed = next != s.versions;
            let modified = changed || s.schema_version != schema_version;
            s.versions = next;
            s.schema_version = schema_version;
            modified
        });
        self.publish_status();
        (self.versions(), changed)
    }

    /// Marks `shard` paused (counted once per pause).
    pub fn pause(&self, shard: ShardId, pause: Pause) {
        let mut fresh = false;
        self.tx.send_if_modified(|s| {
            fresh = s.paused.insert(shard, pause.clone()).is_none();
            fresh
        });
        if fresh {
            self.pauses.inc();
        }
        self.publish_status();
    }

    /// Clears `shard`'s pause.
    pub fn resume(&self, shard: ShardId) {
        self.tx
            .send_if_modified(|s| s.paused.remove(&shard).is_some());
        self.publish_status();
    }

    fn publish_status(&self) {
        let s = self.tx.borrow();
        self.status.set_schema(
            s.versions.current.to_string(),
            s.versions.previous.as_ref().map(|p| p.to_string()),
        );
        self.status
            .schema_paused_shards
            .store(s.paused.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> SchemaHash {
        SchemaHash(s.to_owned())
    }

    fn versions(current: &str, previous: Option<&str>) -> SchemaVersions {
        SchemaVersions {
            current: h(current),
            previous: previous.map(h),
        }
    }

    const ME: NodeId = NodeId(1);
    const PEER: NodeId = NodeId(2);

    #[test]
    fn applies_current_and_previous_pauses_anything_else() {
        let v = versions("b", Some("a"));
        assert_eq!(decide(ME, &v, PEER, "b"), Decision::Apply);
        assert_eq!(
            decide(ME, &v, PEER, "a"),
            Decision::Apply,
            "one version behind"
        );
        assert_eq!(decide(ME, &v, PEER, "c"), Decision::Pause, "ahead of us");
        assert_eq!(
            decide(ME, &v, PEER, "z"),
            Decision::Pause,
            "two versions behind"
        );
        let fresh = versions("b", None);
        assert_eq!(decide(ME, &fresh, PEER, "a"), Decision::Pause);
    }

    #[test]
    fn own_and_unstamped_messages_always_pass() {
        let v = versions("c", Some("b"));
        assert_eq!(decide(ME, &v, ME, "a"), Decision::Apply);
        assert_eq!(decide(ME, &v, PEER, ""), Decision::Apply);
    }

    #[test]
    fn advancing_keeps_one_previous_version() {
        let start = versions("a", None);
        assert_eq!(start.advance(h("a")), start, "same hash changes nothing");
        let b = start.advance(h("b"));
        assert_eq!(b, versions("b", Some("a")));
        assert_eq!(b.advance(h("b")), b);
        let c = b.advance(h("c"));
        assert_eq!(c, versions("c", Some("b")));
        assert!(!c.accepts("a"));
        // Back to an earlier schema (a DDL undone): the one just left is the previous one.
        assert_eq!(c.advance(h("b")), versions("b", Some("c")));
        // Nothing known yet: no previous.
        assert_eq!(
            SchemaVersions::default().advance(h("a")),
            versions("a", None)
        );
    }

    #[tokio::test]
    async fn pause_and_schema_changes_reach_subscribers_and_status() {
        let status = NodeStatus::new(ME);
        let pauses = IntCounter::new("pauses", "test").unwrap();
        let gate = Gate::new(status.clone(), pauses.clone(), versions("a", None), 1);
        let mut rx = gate.subscribe();
        assert_eq!(status.schema_hash(), "a");
        assert_eq!(gate.decide(PEER, "b"), Decision::Pause);

        let pause = Pause {
            received: "b".into(),
            origin: PEER,
            seq: 7,
        };
        gate.pause(ShardId(0), pause.clone());
        gate.pause(ShardId(0), pause);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert_eq!(NodeStatus::get(&status.schema_paused_shards), 1);
        assert_eq!(pauses.get(), 1, "counted once");
        assert_eq!(gate.state().paused_shards(), vec![0]);

        // Same hash at a new schema_version (an index was added): no new previous.
        let (v, changed) = gate.set_schema(h("a"), 2);
        assert!(!changed);
        assert_eq!(v, versions("a", None));
        rx.mark_unchanged();

        let (v, changed) = gate.set_schema(h("b"), 3);
        assert!(changed);
        assert_eq!(v, versions("b", Some("a")));
        assert!(rx.has_changed().unwrap());
        assert_eq!(gate.decide(PEER, "b"), Decision::Apply);
        assert_eq!(status.schema_previous_hash().as_deref(), Some("a"));

        gate.resume(ShardId(0));
        assert_eq!(NodeStatus::get(&status.schema_paused_shards), 0);
        assert!(gate.state().paused.is_empty());
    }
}
