//! Rate limit of wrong admin tokens, per client address and for the whole node.
//!
//! A client that sent `PER_CLIENT` wrong tokens (login form or bearer) within `WINDOW` is
//! answered 429 with `Retry-After` until the oldest of them leaves the window; the node as a
//! whole accepts at most `GLOBAL` wrong tokens per window, so many addresses (a botnet, or an
//! IPv6 block, which counts as one client per /64) cannot multiply the guessing rate. While a
//! limit holds, tokens are not even compared, so a parallel attacker gains nothing: there is no
//! per-request sleep to run around. Logged-in sessions are not token attempts and keep working.
//!
//! Memory is bounded by the limits themselves: only counted failures create entries, at most
//! `GLOBAL` per window, and entries older than the window are dropped on every failure.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong tokens one client may send per window.
pub const PER_CLIENT: usize = 5;
/// Wrong tokens the node accepts from everyone together per window.
pub const GLOBAL: usize = 30;
pub const WINDOW: Duration = Duration::from_secs(60);

/// The limit holds: retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds for `Retry-After`, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

#[derive(Default)]
pub struct Limiter {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    clients: HashMap<IpAddr, VecDeque<Instant>>,
    global: VecDeque<Instant>,
}

impl Limiter {
    /// Whether `client` may present a token now.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Limited> {
        let mut state = self.lock();
        let client = bucket(client);
        let full = |times: &VecDeque<Instant>, limit: usize| {
            (times.len() >= limit).then(|| Limited {
                retry_after: (times[times.len() - limit] + WINDOW).saturating_duration_since(now),
            })
        };
        state.expire(now);
        if let Some(limited) = state.clients.get(&client).and_then(|t| full(t, PER_CLIENT)) {
            return Err(limited);
        }
        full(&state.global, GLOBAL).map_or(Ok(()), Err)
    }

    /// Counts a wrong token from `client`.
    pub fn failed(&self, client: IpAddr, now: Instant) {
        let mut state = self.lock();
        state.expire(now);
        state
            .clients
            .entry(bucket(client))
            .or_default()
            .push_back(now);
        state.global.push_back(now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Forgets failures older than the window.
    fn expire(&mut self, now: Instant) {
        let live = |t: &Instant| now.saturating_duration_since(*t) < WINDOW;
        while self.global.front().is_some_and(|t| !live(t)) {
            self.global.pop_front();
        }
        self.clients.retain(|_, times| {
            while times.front().is_some_and(|t| !live(t)) {
                times.pop_front();
            }
            !times.is_empty()
        });
    }
}

/// The client a limit counts: an IPv4 address, or an IPv6 /64 (one host's usual allocation).
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6([s[0], s[1], s[2], s[3], 0, 0, 0, 0].into())
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_is_limited_after_five_failures_until_the_window_passes() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for i in 0..PER_CLIENT {
            assert!(limiter.check(a, t0).is_ok(), "attempt {i}");
            limiter.failed(a, t0 + Duration::from_secs(i as u64));
        }
        let now = t0 + Duration::from_secs(10);
        let limited = limiter.check(a, now).unwrap_err();
        assert_eq!(limited.retry_after, Duration::from_secs(50));
        assert_eq!(limited.retry_after_secs(), 50);
        assert!(limiter.check(ip("10.0.0.2"), now).is_ok(), "others are not");
        assert!(
            limiter.check(a, t0 + WINDOW).is_ok(),
            "the first left the window"
        );
    }

    #[test]
    fn many_clients_together_meet_the_global_limit() {
        let limiter = Limiter::default();
        let now = Instant::now();
        for i in 0..GLOBAL {
            let client = IpAddr::V4([10, 0, (i / 250) as u8, (i % 250) as u8].into());
            assert!(limiter.check(client, now).is_ok());
            limiter.failed(client, now);
        }
        let fresh = ip("192.0.2.7");
        assert_eq!(
            limiter.check(fresh, now).unwrap_err().retry_after,
            WINDOW,
            "a new address is refused too"
        );
        assert!(limiter.check(fresh, now + WINDOW).is_ok());
        assert!(
            limiter.lock().clients.is_empty(),
            "expired entries are dropped"
        );
    }

    #[test]
    fn an_ipv6_block_counts_as_one_client() {
        let limiter = Limiter::default();
        let now = Instant::now();
        for i in 0..PER_CLIENT {
            limiter.failed(ip(&format!("2001:db8:1:2::{i:x}")), now);
        }
        assert!(limiter.check(ip("2001:db8:1:2:ffff::1"), now).is_err());
        assert!(limiter.check(ip("2001:db8:1:3::1"), now).is_ok());
        limiter.failed(ip("::ffff:192.0.2.1"), now);
        assert_eq!(
            limiter
                .lock()
                .clients
                .get(&ip("192.0.2.1"))
                .map(|t| t.len()),
            Some(1)
        );
    }
}
