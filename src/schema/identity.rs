//! Claiming this node's id in the registry (`registry`): one live instance per node id.
//!
//! An entry is live when the server stored it within `live_within` (3 × `registry_refresh_ms`:
//! a running node rewrites it every refresh). A live entry naming another instance (host and
//! data directory) means another process runs with this id: at start that refuses the start
//! (`claim`); while running it is reported (`holder_elsewhere`). Entries without an instance
//! (written by older versions) and stale ones are taken over. Creation is compare-and-set, so of
//! two nodes starting with one id at the same moment, one wins and the other sees it.

use std::time::Duration;

use async_nats::jetstream::kv;

use super::registry::{RegistryEntry, RegistryError, key};
use crate::hlc::now_ms;
use crate::ids::NodeId;
use crate::instance::Instance;

/// Another live instance holding the id, and how long ago it wrote, if the stored `entry`
/// says so.
pub fn holder_elsewhere(
    entry: &kv::Entry,
    me: &Instance,
    live_within: Duration,
) -> Option<(Instance, Duration)> {
    if !matches!(entry.operation, kv::Operation::Put) {
        return None;
    }
    let holder = serde_json::from_slice::<RegistryEntry>(&entry.value)
        .ok()?
        .instance()?;
    let age = age_of(entry);
    (holder != *me && age < live_within).then_some((holder, age))
}

/// How long ago the server stored `entry`.
fn age_of(entry: &kv::Entry) -> Duration {
    let stored_ms = (entry.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    Duration::from_millis(now_ms().saturating_sub(stored_ms))
}

/// Writes `entry` as this node's, unless another live instance holds the id.
pub async fn claim(
    store: &kv::Store,
    entry: &RegistryEntry,
    me: &Instance,
    live_within: Duration,
) -> Result<(), RegistryError> {
    let node = NodeId(entry.node_id);
    let json = serde_json::to_vec(entry).map_err(|e| access("encode an entry for", e))?;
    loop {
        let current = store
            .entry(key(node))
            .await
            .map_err(|e| access("read", e))?;
        // `Ok(false)`: someone wrote the key between our read and our write; read it again.
        let written = match current {
            Some(current) => {
                if let Some((holder, age)) = holder_elsewhere(&current, me, live_within) {
                    return Err(RegistryError::Held {
                        node: node.0,
                        holder,
                        age_s: age.as_secs(),
                        wait_s: live_within.saturating_sub(age).as_secs() + 1,
                    });
                }
                match store
                    .update(key(node), json.clone().into(), current.revision)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                    Err(e) => Err(access("write to", e)),
                }
            }
            None => match store.create(key(node), json.clone().into()).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(access("write to", e)),
            },
        };
        if written? {
            return Ok(());
        }
    }
}

fn access(what: &'static str, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Access {
        what,
        reason: e.to_string(),
    }
}
