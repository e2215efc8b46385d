//! Messages larger than the server's payload limit: split into chunks on publish, reassembled on
//! consume (pure, no I/O).
//!
//! Only an encoded batch holding a single row that does not fit is chunked; everything else is
//! split by rows (`wire::encode_fitting`). Chunks carry two headers: `Harmonylite-Chunk-Id` (the
//! message id of the whole payload, a digest of it) and `Harmonylite-Chunk` (`index/total`, from
//! 0). A set is known by its id and total: a payload republished under another payload limit
//! is split differently and makes another set, which does not mix with the first.
//!
//! What a consumer holds is bounded (`docs/decisions/012-resource-bounds.md`):
//! - each piece once: a chunk received again (a redelivery) is a `Duplicate`, neither held nor
//!   counted twice; one with other bytes at an index already held makes its set malformed;
//! - a set at most `MAX_SET_BYTES`, the largest payload any receiver decodes; a larger one is
//!   malformed, never completed;
//! - all sets together at most the budget's bytes and chunks. A chunk that does not fit is
//!   `Deferred` (handed back to JetStream for later), never dropped; a chunk of a held set may
//!   instead evict sets younger than its own, which come back later too. The oldest held set can
//!   thus always complete (the budget holds the largest set), so a legitimate set is delayed by a
//!   flood of bogus ones, never lost to it;
//! - sets incomplete after `MAX_AGE` expire: they can never complete.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::wire::MAX_DECODED_BYTES;

/// Header naming the chunk set.
pub const CHUNK_ID_HEADER: &str = "Harmonylite-Chunk-Id";
/// Header with `index/total`.
pub const CHUNK_HEADER: &str = "Harmonylite-Chunk";

/// Partial sets kept at most this long before they are dropped as incomplete.
pub const MAX_AGE: Duration = Duration::from_secs(600);
/// Bytes of partial sets one consumer (one shard) holds at most.
pub const MAX_BYTES: usize = 512 * 1024 * 1024;
/// Most chunks in one set. The publisher's chunks are as large as the payload limit (at least
/// 1 MiB), so a legitimate set has far fewer (`MAX_SET_BYTES` / 1 MiB); a header that claims more
/// is refused before a slot table is sized from it.
pub const MAX_CHUNKS: u32 = 4096;
/// Chunks one consumer holds at most. Held chunks are unacknowledged: kept well under the
/// consumer's `max_ack_pending`, which would otherwise stop all delivery to the shard, and large
/// enough for any set the header allows.
pub const MAX_HELD_CHUNKS: usize = MAX_CHUNKS as usize;
/// The largest payload a receiver decodes: `MAX_DECODED_BYTES` of CBOR, plus what zstd adds to
/// incompressible data (under 1/256) and the wire header. A larger set is refused as malformed
/// as soon as it grows past this, so it can neither complete nor occupy the budget for long.
pub const MAX_SET_BYTES: usize = MAX_DECODED_BYTES + MAX_DECODED_BYTES / 128;

// The oldest set evicts every younger one; it completes only if the largest set fits alone.
const _: () = assert!(MAX_BYTES >= MAX_SET_BYTES && MAX_HELD_CHUNKS >= MAX_CHUNKS as usize);

/// Splits `payload` into pieces of at most `max` bytes, sharing its memory.
pub fn split(payload: &Bytes, max: usize) -> Vec<Bytes> {
    let max = max.max(1);
    (0..payload.len())
        .step_by(max)
        .map(|start| payload.slice(start..(start + max).min(payload.len())))
        .collect()
}

/// The payload of a complete set. Each piece is released once copied, so when nothing else
/// holds the pieces (the consumer drops its messages' copies first) the set and its payload
/// are never in memory twice over.
pub fn join(pieces: Vec<Bytes>) -> Vec<u8> {
    let mut payload = Vec::with_capacity(pieces.iter().map(Bytes::len).sum());
    for piece in pieces {
        payload.extend_from_slice(&piece);
    }
    payload
}

/// Parses `index/total`; a total above `MAX_CHUNKS` is not a header this build sends.
pub fn parse_header(value: &str) -> Option<(u32, u32)> {
    let (i, n) = value.split_once('/')?;
    let (i, n) = (i.trim().parse().ok()?, n.trim().parse().ok()?);
    (n > 0 && n <= MAX_CHUNKS && i < n).then_some((i, n))
}

/// Memory a set's slot table takes before any data arrives; counted against the budget.
fn slots_bytes(total: u32) -> usize {
    total as usize * std::mem::size_of::<Option<Bytes>>()
}

/// One chunk set: the payload's id and how many chunks it was split into.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SetKey {
    pub id: String,
    pub total: u32,
}

impl std::fmt::Display for SetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} chunks)", self.id, self.total)
    }
}

/// What one consumer may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub bytes: usize,
    pub chunks: usize,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            bytes: MAX_BYTES,
            chunks: MAX_HELD_CHUNKS,
        }
    }
}

struct Partial {
    pieces: Vec<Option<Bytes>>,
    /// Slot table and pieces.
    bytes: usize,
    held: usize,
    first_seen: Instant,
    /// Admission order: lower is older (instants can tie).
    arrival: u64,
}

/// What adding a chunk did.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// The set is complete: its pieces in order (`join` makes the payload). `evicted` sets were
    /// dropped to make room.
    Complete {
        pieces: Vec<Bytes>,
        evicted: Vec<SetKey>,
    },
    /// Held; more chunks are needed. `evicted` sets were dropped to make room.
    Pending { evicted: Vec<SetKey> },
    /// The set already holds this piece with these bytes; nothing changed.
    Duplicate,
    /// Over the budget: not held; it must come again later.
    Deferred,
    /// This chunk alone is malformed (its position is outside its set); the set is untouched.
    Malformed(&'static str),
    /// The set is malformed: dropped, every chunk of it refused.
    SetRefused(&'static str),
}

/// Partial chunk sets of one consumer.
#[derive(Default)]
pub struct Reassembly {
    budget: Budget,
    sets: HashMap<SetKey, Partial>,
    bytes: usize,
    held: usize,
    arrivals: u64,
}

impl Reassembly {
    pub fn new(budget: Budget) -> Reassembly {
        Reassembly {
            budget,
            ..Reassembly::default()
        }
    }

    /// Adds chunk `index` of `total` for set `id`. `data` is shared, not copied, so the held
    /// message and its piece are one allocation.
    pub fn add(&mut self, id: &str, index: u32, total: u32, data: Bytes, now: Instant) -> Added {
        if total == 0 || total > MAX_CHUNKS || index >= total {
            return Added::Malformed("chunk position outside its set");
        }
        let key = SetKey {
            id: id.to_owned(),
            total,
        };
        let (held_bytes, arrival) = match self.sets.get(&key) {
            Some(set) => {
                match &set.pieces[index as usize] {
                    Some(piece) if *piece == data => return Added::Duplicate,
                    Some(_) => {
                        self.remove(&key);
                        return Added::SetRefused("a chunk arrived twice with different bytes");
                    }
                    None => {}
                }
                (set.bytes, Some(set.arrival))
            }
            None => (slots_bytes(total), None),
        };
        if held_bytes + data.len() > MAX_SET_BYTES {
            self.remove(&key);
            return Added::SetRefused("chunk set larger than any receiver decodes");
        }
        let cost = data.len() + if arrival.is_none() { held_bytes } else { 0 };
        let evicted = match arrival {
            _ if self.fits(cost) => Vec::new(),
            // A new set waits for room; it never pushes out sets that came first.
            None => return Added::Deferred,
            Some(arrival) => match self.make_room(arrival, cost) {
                Some(evicted) => evicted,
                None => return Added::Deferred,
            },
        };
        self.arrivals += 1;
        let next_arrival = self.arrivals;
        let set = self.sets.entry(key.clone()).or_insert_with(|| Partial {
            pieces: vec![None; total as usize],
            bytes: held_bytes,
            held: 0,
            first_seen: now,
            arrival: next_arrival,
        });
        set.bytes += data.len();
        set.held += 1;
        set.pieces[index as usize] = Some(data);
        self.bytes += cost;
        self.held += 1;
        if set.held < total as usize {
            return Added::Pending { evicted };
        }
        let set = self.remove(&key).expect("the set was just completed");
        let pieces = set.pieces.into_iter().flatten().collect();
        Added::Complete { pieces, evicted }
    }

    fn fits(&self, cost: usize) -> bool {
        self.bytes + cost <= self.budget.bytes && self.held < self.budget.chunks
    }

    /// Evicts the youngest sets admitted after `arrival` until `cost` fits; evicts nothing and
    /// returns `None` when even all of them would not make room.
    fn make_room(&mut self, arrival: u64, cost: usize) -> Option<Vec<SetKey>> {
        let mut younger: Vec<(u64, SetKey, usize, usize)> = self
            .sets
            .iter()
            .filter(|(_, p)| p.arrival > arrival)
            .map(|(k, p)| (p.arrival, k.clone(), p.bytes, p.held))
            .collect();
        younger.sort_unstable_by_key(|y| std::cmp::Reverse(y.0));
        let (mut bytes, mut held) = (self.bytes, self.held);
        let mut take = 0;
        while bytes + cost > self.budget.bytes || held >= self.budget.chunks {
            let (_, _, b, h) = younger.get(take)?;
            bytes -= b;
            held -= h;
            take += 1;
        }
        let evicted: Vec<SetKey> = younger.into_iter().take(take).map(|y| y.1).collect();
        for key in &evicted {
            self.remove(key);
        }
        Some(evicted)
    }

    fn remove(&mut self, key: &SetKey) -> Option<Partial> {
        let set = self.sets.remove(key)?;
        self.bytes -= set.bytes;
        self.held -= set.held;
        Some(set)
    }

    /// Drops sets older than `MAX_AGE`; returns their keys.
    pub fn expire(&mut self, now: Instant) -> Vec<SetKey> {
        let old: Vec<SetKey> = self
            .sets
            .iter()
            .filter(|(_, p)| now.duration_since(p.first_seen) > MAX_AGE)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &old {
            self.remove(key);
        }
        old
    }

    /// Forgets every set (their chunks are handed back by the caller).
    pub fn clear(&mut self) {
        self.sets.clear();
        self.bytes = 0;
        self.held = 0;
    }

    /// Number of incomplete sets held.
    pub fn pending_sets(&self) -> usize {
        self.sets.len()
    }

    /// Bytes held: pieces and slot tables.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// Chunks held.
    pub fn held_chunks(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests;
