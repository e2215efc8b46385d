//! Where a node stands in one stream (pure): the contiguous applied floor and the sequences
//! applied above it.
//!
//! Every sequence at or below the floor is applied, or known not to concern this node (its own
//! message, a message terminated as malformed). Sequences above it may be applied out of order
//! (a redelivery of an orphaned message fills a hole later); the floor moves only across a
//! contiguous run, so going back to `floor + 1` after any interruption never skips a message,
//! and applying one twice is harmless (last writer wins). The position is tied to the stream's
//! incarnation (its creation time), so a recreated stream is never read with an old floor.
//!
//! `above` is bounded: past `MAX_RANGES` the highest ranges are forgotten. That only makes a
//! node apply those messages again after a restart (and judge their schema again), never skip.

use std::fmt::Write;

/// Ranges kept above the floor at most.
pub const MAX_RANGES: usize = 256;

/// A stream position: the floor and the disjoint, non-adjacent, sorted ranges above it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    floor: u64,
    /// Inclusive ranges, each starting above `floor + 1`.
    above: Vec<(u64, u64)>,
}

impl Position {
    /// Everything up to `floor` applied, nothing above.
    pub fn at(floor: u64) -> Position {
        Position {
            floor,
            above: Vec::new(),
        }
    }

    /// The contiguous applied floor.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The first sequence not applied: where delivery (re)starts.
    pub fn next_needed(&self) -> u64 {
        self.floor.saturating_add(1)
    }

    /// The highest sequence applied (the floor when nothing above is).
    pub fn highest(&self) -> u64 {
        self.above.last().map_or(self.floor, |&(_, end)| end)
    }

    /// Whether `seq` was applied.
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.floor || self.above.iter().any(|&(a, b)| a <= seq && seq <= b)
    }

    /// Records `seq` as applied; the floor moves over every contiguous run it completes.
    pub fn mark(&mut self, seq: u64) {
        self.mark_range(seq, seq);
    }

    /// Records every sequence of `from..=to` as applied.
    pub fn mark_range(&mut self, from: u64, to: u64) {
        if to < from || to <= self.floor {
            return;
        }
        let from = from.max(self.floor.saturating_add(1));
        let at = self
            .above
            .partition_point(|&(_, end)| end.saturating_add(1) < from);
        let mut start = from;
        let mut end = to;
        while let Some(&(a, b)) = self.above.get(at) {
            if a > end.saturating_add(1) {
                break;
            }
            start = start.min(a);
            end = end.max(b);
            self.above.remove(at);
        }
        self.above.insert(at, (start, end));
        self.absorb();
        if self.above.len() > MAX_RANGES {
            self.above.truncate(MAX_RANGES);
        }
    }

    /// Moves the floor up to `floor` (everything below it is settled some other way: a
    /// snapshot covers it, or the operator accepted a gap), keeping what is applied above.
    pub fn raise_floor(&mut self, floor: u64) {
        if floor <= self.floor {
            return;
        }
        self.floor = floor;
        self.above.retain(|&(_, end)| end > floor);
        if let Some(first) = self.above.first_mut() {
            first.0 = first.0.max(floor.saturating_add(1));
        }
        self.absorb();
    }

    /// Folds the first range into the floor while it touches it.
    fn absorb(&mut self) {
        while let Some(&(a, b)) = self.above.first() {
            if a > self.floor.saturating_add(1) {
                break;
            }
            self.floor = self.floor.max(b);
            self.above.remove(0);
        }
    }

    /// `above` as text for the database: `a-b,c-d` (empty when nothing is above the floor).
    pub fn above_text(&self) -> String {
        let mut out = String::new();
        for (i, (a, b)) in self.above.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{a}-{b}");
        }
        out
    }

    /// Rebuilds a position from the database's floor and `above_text`. Malformed ranges are
    /// dropped: those messages are applied again, which is harmless.
    pub fn from_parts(floor: u64, above: &str) -> Position {
        let mut position = Position::at(floor);
        for part in above.split(',').filter(|p| !p.is_empty()) {
            let parsed = part
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
            if let Some((a, b)) = parsed {
                position.mark_range(a, b);
            }
        }
        position
    }
}

/// A stream's position as the database records it, with the stream incarnation it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamPosition {
    pub stream: String,
    /// The stream's creation time (RFC 3339, as JetStream reports it); empty when unknown (a
    /// database migrated from the highest-sequence format, until the stream is next seen).
    pub incarnation: String,
    pub position: Position,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn floor_moves_only_over_contiguous_runs() {
        let mut p = Position::at(4);
        p.mark(6);
        p.mark(7);
        assert_eq!((p.floor(), p.highest()), (4, 7));
        assert!(p.contains(6) && !p.contains(5) && !p.contains(8));
        p.mark(5);
        assert_eq!((p.floor(), p.highest()), (7, 7));
        p.mark(3);
        assert_eq!(p.floor(), 7, "below the floor changes nothing");
        p.mark_range(10, 12);
        p.mark_range(9, 9);
        assert_eq!(p.above_text(), "9-12");
        p.mark(8);
        assert_eq!((p.floor(), p.above_text()), (12, String::new()));
    }

    #[test]
    fn raise_floor_keeps_what_is_above() {
        let mut p = Position::at(0);
        p.mark_range(5, 6);
        p.mark_range(9, 12);
        p.raise_floor(10);
        assert_eq!((p.floor(), p.above_text()), (12, String::new()));
        let mut p = Position::at(0);
        p.mark_range(20, 25);
        p.raise_floor(10);
        assert_eq!((p.floor(), p.above_text()), (10, "20-25".to_owned()));
        p.raise_floor(3);
        assert_eq!(p.floor(), 10, "the floor never goes down");
    }

    #[test]
    fn text_round_trip_and_garbage() {
        let mut p = Position::at(2);
        p.mark_range(4, 4);
        p.mark_range(7, 9);
        let back = Position::from_parts(p.floor(), &p.above_text());
        assert_eq!(back, p);
        let odd = Position::from_parts(2, "x,9-7,3-3,5-6,,");
        assert_eq!((odd.floor(), odd.above_text()), (3, "5-6".to_owned()));
    }

    #[test]
    fn bounded_ranges_forget_the_highest() {
        let mut p = Position::at(0);
        for i in 0..(MAX_RANGES as u64 + 10) {
            p.mark(2 * i + 2);
        }
        assert_eq!(p.above_text().split(',').count(), MAX_RANGES);
        assert!(p.contains(2) && !p.contains(2 * (MAX_RANGES as u64 + 5)));
    }

    proptest! {
        /// In any order, with repeats: the floor is the longest applied prefix, and nothing is
        /// reported applied that was not.
        #[test]
        fn marks_in_any_order(seqs in proptest::collection::vec(1u64..60, 0..120), floor in 0u64..5) {
            let mut p = Position::at(floor);
            let mut applied = std::collections::BTreeSet::new();
            for s in &seqs {
                p.mark(*s);
                applied.insert(*s);
            }
            let mut want = floor;
            while applied.contains(&(want + 1)) {
                want += 1;
            }
            prop_assert_eq!(p.floor(), want);
            for s in 1..70u64 {
                prop_assert_eq!(p.contains(s), s <= floor || applied.contains(&s), "seq {}", s);
            }
            prop_assert_eq!(Position::from_parts(p.floor(), &p.above_text()), p);
        }
    }
}
