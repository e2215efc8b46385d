//! A process's resident memory, from `/proc` (the tests' and the benchmarks' one reader), and
//! its peak (or range) while something runs; and values that do not compress, whose size is
//! what a node holds of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `VmRSS` of `pid` in KiB; 0 when the process is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Samples the RSS of `pids` every 5 ms until `done`; the peak of each, KiB.
pub fn peak_rss_until(pids: &[u32], done: &AtomicBool) -> Vec<u64> {
    rss_range_until(pids, done)
        .into_iter()
        .map(|(_, peak)| peak)
        .collect()
}

/// Samples the RSS of `pids` every 5 ms until `done` (at least once); the least and the most
/// of each, KiB.
pub fn rss_range_until(pids: &[u32], done: &AtomicBool) -> Vec<(u64, u64)> {
    let mut range = vec![(u64::MAX, 0); pids.len()];
    loop {
        for ((least, most), pid) in range.iter_mut().zip(pids) {
            let now = rss_kib(*pid);
            (*least, *most) = ((*least).min(now), (*most).max(now));
        }
        if done.load(Ordering::Relaxed) {
            return range;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `len` bytes that do not compress (xorshift), so the row's size is what travels.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
