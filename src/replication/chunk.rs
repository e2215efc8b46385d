//! Messages larger than the server's payload limit: split into chunks on publish, reassembled on
//! consume (pure, no I/O).
//!
//! Only an encoded batch holding a single row that does not fit is chunked; everything else is
//! split by rows (`wire::encode_fitting`). Chunks carry two headers: `Harmonylite-Chunk-Id` (the
//! message id of the whole payload) and `Harmonylite-Chunk` (`index/total`, from 0). A consumer
//! keeps partial sets in memory, bounded in bytes and age, and hands out the payload when the
//! last chunk arrives; duplicates (redeliveries) are ignored.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Header naming the chunk set.
pub const CHUNK_ID_HEADER: &str = "Harmonylite-Chunk-Id";
/// Header with `index/total`.
pub const CHUNK_HEADER: &str = "Harmonylite-Chunk";

/// Partial sets kept at most this long before they are dropped as incomplete.
pub const MAX_AGE: Duration = Duration::from_secs(600);
/// Bytes of partial sets kept at most, so a stream of bogus chunks cannot exhaust memory.
pub const MAX_BYTES: usize = 512 * 1024 * 1024;
/// Most chunks in one set. The publisher's chunks are as large as the payload limit (at least
/// 1 MiB), so a set of more chunks would pass `MAX_BYTES` before it completes; a header that
/// claims more is refused before a slot table is sized from it.
pub const MAX_CHUNKS: u32 = 4096;

/// Splits `payload` into pieces of at most `max` bytes.
pub fn split(payload: &[u8], max: usize) -> Vec<&[u8]> {
    payload.chunks(max.max(1)).collect()
}

/// Parses `index/total`; a total above `MAX_CHUNKS` is not a header this build sends.
pub fn parse_header(value: &str) -> Option<(u32, u32)> {
    let (i, n) = value.split_once('/')?;
    let (i, n) = (i.trim().parse().ok()?, n.trim().parse().ok()?);
    (n > 0 && n <= MAX_CHUNKS && i < n).then_some((i, n))
}

/// Memory a set's slot table takes before any data arrives; counted against `MAX_BYTES`.
fn slots_bytes(total: u32) -> usize {
    total as usize * std::mem::size_of::<Option<Vec<u8>>>()
}

struct Partial {
    total: u32,
    pieces: Vec<Option<Vec<u8>>>,
    bytes: usize,
    first_seen: Instant,
}

/// What adding a chunk did.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// The set is complete: the reassembled payload.
    Complete(Vec<u8>),
    /// More chunks are needed.
    Pending,
    /// The chunk contradicts the set (another total) or would exceed the memory bound.
    Rejected(&'static str),
}

/// Partial chunk sets of one consumer.
#[derive(Default)]
pub struct Reassembly {
    sets: HashMap<String, Partial>,
    bytes: usize,
}

impl Reassembly {
    /// Adds chunk `index` of `total` for set `id`.
    pub fn add(&mut self, id: &str, index: u32, total: u32, data: &[u8], now: Instant) -> Added {
        if total == 0 || total > MAX_CHUNKS || index >= total {
            return Added::Rejected("chunk position outside its set");
        }
        // A new set's slot table counts too, so many sets of tiny chunks stay bounded.
        let new_set = !self.sets.contains_key(id);
        let slots = if new_set { slots_bytes(total) } else { 0 };
        if self.bytes + slots + data.len() > MAX_BYTES {
            return Added::Rejected("partial chunk sets exceed the memory bound");
        }
        if new_set {
            self.bytes += slots;
        }
        let set = self.sets.entry(id.to_owned()).or_insert_with(|| Partial {
            total,
            pieces: vec![None; total as usize],
            bytes: slots,
            first_seen: now,
        });
        if set.total != total {
            return Added::Rejected("chunk total disagrees with earlier chunks of its set");
        }
        let slot = &mut set.pieces[index as usize];
        if slot.is_none() {
            *slot = Some(data.to_vec());
            set.bytes += data.len();
            self.bytes += data.len();
        }
        if set.pieces.iter().all(Option::is_some) {
            let set = self.sets.remove(id).expect("the set was just looked up");
            self.bytes -= set.bytes;
            let mut out = Vec::with_capacity(set.bytes - slots_bytes(set.total));
            for piece in set.pieces.into_iter().flatten() {
                out.extend_from_slice(&piece);
            }
            return Added::Complete(out);
        }
        Added::Pending
    }

    /// Drops sets older than `MAX_AGE`; returns their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let old: Vec<String> = self
            .sets
            .iter()
            .filter(|(_, p)| now.duration_since(p.first_seen) > MAX_AGE)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &old {
            if let Some(p) = self.sets.remove(id) {
                self.bytes -= p.bytes;
            }
        }
        old
    }

    /// Number of incomplete sets held.
    pub fn pending_sets(&self) -> usize {
        self.sets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_reassembles_in_any_order_with_duplicates() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let pieces = split(&payload, 3000);
        assert_eq!(pieces.len(), 4);
        let mut r = Reassembly::default();
        let now = Instant::now();
        let n = pieces.len() as u32;
        assert_eq!(r.add("x", 2, n, pieces[2], now), Added::Pending);
        assert_eq!(r.add("x", 0, n, pieces[0], now), Added::Pending);
        assert_eq!(
            r.add("x", 0, n, pieces[0], now),
            Added::Pending,
            "duplicate ignored"
        );
        assert_eq!(r.add("x", 3, n, pieces[3], now), Added::Pending);
        assert_eq!(r.add("x", 1, n, pieces[1], now), Added::Complete(payload));
        assert_eq!(r.pending_sets(), 0);
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn rejects_contradictions_and_expires_stale_sets() {
        let mut r = Reassembly::default();
        let t0 = Instant::now();
        assert_eq!(r.add("a", 0, 3, b"xx", t0), Added::Pending);
        assert!(matches!(r.add("a", 1, 4, b"yy", t0), Added::Rejected(_)));
        assert_eq!(
            r.expire(t0 + MAX_AGE + Duration::from_secs(1)),
            vec!["a".to_owned()]
        );
        assert_eq!(r.pending_sets(), 0);
    }

    #[test]
    fn header_parsing() {
        assert_eq!(parse_header("0/3"), Some((0, 3)));
        assert_eq!(parse_header("3/3"), None);
        assert_eq!(parse_header("1/0"), None);
        assert_eq!(parse_header("x/2"), None);
        assert_eq!(parse_header("0/4096"), Some((0, MAX_CHUNKS)));
        assert_eq!(parse_header("0/4097"), None);
    }

    /// Found by fuzzing: a header claiming 4294967295 chunks sized a slot table of ~100 GB
    /// from it and aborted the process (allocation failure, not even a panic).
    #[test]
    fn huge_totals_are_refused_without_allocating() {
        let mut r = Reassembly::default();
        let now = Instant::now();
        assert!(matches!(
            r.add("x", 0, u32::MAX, b"a", now),
            Added::Rejected(_)
        ));
        assert!(matches!(r.add("x", 5, 3, b"a", now), Added::Rejected(_)));
        assert_eq!(r.pending_sets(), 0, "a refused chunk leaves no set behind");
        // Slot tables count against the bound: sets of the largest total cannot pile up.
        let most = MAX_BYTES / slots_bytes(MAX_CHUNKS);
        for i in 0..most + 10 {
            r.add(&i.to_string(), 0, MAX_CHUNKS, b"", now);
        }
        assert!(r.pending_sets() <= most);
        assert!(r.bytes <= MAX_BYTES);
        r.expire(now + MAX_AGE + Duration::from_secs(1));
        assert_eq!(r.bytes, 0);
    }
}
