//! Stream sequences this node published since it started, as ranges per stream.
//!
//! A node whose consumer fell behind while the stream was trimmed has not lost anything if
//! every trimmed message was its own: it already holds those changes. The consumer asks here
//! before calling a trimmed range a gap. Memory is bounded: past `MAX_RANGES` the oldest
//! ranges are forgotten, which only makes the answer more cautious. A restore that replaces the
//! database forgets them all: the replaced database no longer holds those changes.

use std::collections::HashMap;
use std::sync::Mutex;

const MAX_RANGES: usize = 4096;

#[derive(Debug, Default)]
pub struct OwnSeqs {
    /// Stream → sorted, disjoint, non-adjacent inclusive ranges.
    ranges: Mutex<HashMap<String, Vec<(u64, u64)>>>,
}

impl OwnSeqs {
    /// Records that this node's message got sequence `seq` in `stream`.
    pub fn record(&self, stream: &str, seq: u64) {
        let mut all = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        let ranges = all.entry(stream.to_owned()).or_default();
        let at = ranges.partition_point(|&(_, end)| end.saturating_add(1) < seq);
        match ranges.get_mut(at) {
            Some(r) if r.0 <= seq && seq <= r.1 => return,
            Some(r) if r.1.saturating_add(1) == seq => {
                r.1 = seq;
                // It may now touch the next range.
                if let Some(&(next_start, next_end)) = ranges.get(at + 1)
                    && next_start == seq + 1
                {
                    ranges[at].1 = next_end;
                    ranges.remove(at + 1);
                }
            }
            Some(r) if seq.saturating_add(1) == r.0 => r.0 = seq,
            _ => ranges.insert(at, (seq, seq)),
        }
        if ranges.len() > MAX_RANGES {
            ranges.remove(0);
        }
    }

    /// Forgets every sequence: the database no longer holds what they carried.
    pub fn forget(&self) {
        self.ranges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether every sequence in `from..to` (end excluded) was published by this node.
    pub fn covers(&self, stream: &str, from: u64, to: u64) -> bool {
        if from >= to {
            return true;
        }
        let all = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        all.get(stream).is_some_and(|ranges| {
            ranges
                .iter()
                .any(|&(start, end)| start <= from && to - 1 <= end)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_answer() {
        let own = OwnSeqs::default();
        for seq in [5, 6, 8, 7, 3, 10] {
            own.record("s", seq);
        }
        assert!(own.covers("s", 5, 9));
        assert!(!own.covers("s", 3, 6), "4 is missing");
        assert!(!own.covers("s", 9, 11));
        assert!(own.covers("s", 10, 11));
        assert!(!own.covers("other", 5, 6));
        assert!(own.covers("s", 7, 7), "an empty range is covered");
        own.forget();
        assert!(!own.covers("s", 5, 9), "forgotten");
        for seq in [5, 6, 8, 7, 3, 10] {
            own.record("s", seq);
        }
        own.record("s", 4);
        own.record("s", 9);
        assert!(own.covers("s", 3, 11));
    }
}
