//! Hybrid logical clock versions (pure): wall-clock milliseconds in the high bits, a counter in
//! the low 16 bits.
//!
//! The capture triggers compute the same value in SQL (`cdc::triggers::version_expr`):
//! `MAX(highest_known + 1, now_ms << 16)`. A version therefore orders like a Lamport clock
//! (always above everything this table has seen) while staying close to wall time, so
//! `wall_ms()` of a version is a usable timestamp for latency metrics.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A version: `ms << COUNTER_BITS | counter`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    /// Bits of the logical counter below the milliseconds.
    pub const COUNTER_BITS: u32 = 16;

    /// Builds a version from wall milliseconds and a counter.
    pub fn from_parts(ms: u64, counter: u16) -> Hlc {
        Hlc((ms << Self::COUNTER_BITS) | u64::from(counter))
    }

    /// The wall-clock milliseconds since the Unix epoch this version was stamped at (or, when
    /// the counter overflowed into them, slightly after).
    pub fn wall_ms(self) -> u64 {
        self.0 >> Self::COUNTER_BITS
    }

    /// The logical counter part.
    pub fn counter(self) -> u16 {
        // Truncation keeps exactly the low COUNTER_BITS bits.
        (self.0 & ((1 << Self::COUNTER_BITS) - 1)) as u16
    }

    /// The next version after `highest_known` at wall time `now_ms`: strictly greater than
    /// everything known, and at least the wall clock.
    pub fn next(highest_known: Hlc, now_ms: u64) -> Hlc {
        let wall = Hlc::from_parts(now_ms, 0);
        Hlc(highest_known.0.saturating_add(1).max(wall.0))
    }
}

/// Current wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.counter())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parts_round_trip() {
        let v = Hlc::from_parts(1_700_000_000_123, 7);
        assert_eq!(v.wall_ms(), 1_700_000_000_123);
        assert_eq!(v.counter(), 7);
        assert_eq!(v.to_string(), "1700000000123.7");
    }

    #[test]
    fn next_follows_wall_clock_or_counter() {
        let now = 1_700_000_000_000;
        assert_eq!(Hlc::next(Hlc(0), now), Hlc::from_parts(now, 0));
        let ahead = Hlc::from_parts(now + 5, 3);
        assert_eq!(Hlc::next(ahead, now), Hlc::from_parts(now + 5, 4));
        assert_eq!(Hlc::next(Hlc(u64::MAX), now), Hlc(u64::MAX));
    }

    #[test]
    fn now_fits_in_sqlite_integer() {
        let v = Hlc::next(Hlc(0), crate::hlc::now_ms());
        assert!(
            i64::try_from(v.0).is_ok(),
            "versions must be storable as SQLite INTEGER"
        );
    }

    proptest! {
        #[test]
        fn next_is_strictly_monotonic(start in 0u64..(1 << 62), steps in proptest::collection::vec((0u64..1 << 40, any::<bool>()), 1..50)) {
            let mut v = Hlc(start);
            for (now, jump) in steps {
                let now = if jump { now } else { v.wall_ms() };
                let n = Hlc::next(v, now);
                prop_assert!(n > v);
                prop_assert!(n >= Hlc::from_parts(now, 0));
                v = n;
            }
        }
    }
}
