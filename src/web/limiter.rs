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
//! `GLOBAL` per window, and entries older than the window are dropped on every attempt.

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
    /// The first refusal in a window (log it; later ones are only counted).
    pub first: bool,
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
    /// When a refusal was last reported as the first of its window.
    last_refusal: Option<Instant>,
}

impl Limiter {
    /// One token attempt from `client`: refused while a limit holds (the token is then not
    /// compared), otherwise `matches` compares it and a wrong one is counted, all under one
    /// lock, so parallel requests cannot slip past the count. `Ok(true)`: the right token.
    pub fn attempt(
        &self,
        client: IpAddr,
        now: Instant,
        matches: impl FnOnce() -> bool,
    ) -> Result<bool, Limited> {
        let mut state = self.lock();
        let client = bucket(client);
        state.expire(now);
        if let Some(limited) = state.limited(client, now) {
            return Err(limited);
        }
        if matches() {
            return Ok(true);
        }
        state.clients.entry(client).or_default().push_back(now);
        state.global.push_back(now);
        Ok(false)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// The limit `client` meets now, if any. The first refusal of a window says so
    /// (`Limited::first`), so the caller logs once, not at every request.
    fn limited(&mut self, client: IpAddr, now: Instant) -> Option<Limited> {
        let full = |times: &VecDeque<Instant>, limit: usize| {
            (times.len() >= limit)
                .then(|| (times[times.len() - limit] + WINDOW).saturating_duration_since(now))
        };
        let retry_after = self
            .clients
            .get(&client)
            .and_then(|t| full(t, PER_CLIENT))
            .or_else(|| full(&self.global, GLOBAL))?;
        let first = self
            .last_refusal
            .is_none_or(|at| now.saturating_duration_since(at) >= WINDOW);
        if first {
            self.last_refusal = Some(now);
        }
        Some(Limited { retry_after, first })
    }

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

    /// A wrong token from `client` at `now`.
    fn wrong(limiter: &Limiter, client: IpAddr, now: Instant) -> Result<bool, Limited> {
        limiter.attempt(client, now, || false)
    }

    #[test]
    fn a_client_is_limited_after_five_failures_until_the_window_passes() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for i in 0..PER_CLIENT {
            let at = t0 + Duration::from_secs(i as u64);
            assert_eq!(wrong(&limiter, a, at), Ok(false), "attempt {i}");
        }
        let now = t0 + Duration::from_secs(10);
        let mut compared = false;
        let limited = limiter
            .attempt(a, now, || {
                compared = true;
                true
            })
            .unwrap_err();
        assert!(!compared, "no token is compared while limited");
        assert_eq!(limited.retry_after, Duration::from_secs(50));
        assert_eq!(limited.retry_after_secs(), 50);
        assert!(limited.first);
        assert!(!wrong(&limiter, a, now).unwrap_err().first, "reported once");
        assert_eq!(
            wrong(&limiter, ip("10.0.0.2"), now),
            Ok(false),
            "others are not"
        );
        assert_eq!(
            limiter.attempt(a, t0 + WINDOW, || true),
            Ok(true),
            "the first left the window"
        );
    }

    #[test]
    fn many_clients_together_meet_the_global_limit() {
        let limiter = Limiter::default();
        let now = Instant::now();
        for i in 0..GLOBAL {
            let client = IpAddr::V4([10, 0, (i / 250) as u8, (i % 250) as u8].into());
            assert_eq!(wrong(&limiter, client, now), Ok(false));
        }
        let fresh = ip("192.0.2.7");
        assert_eq!(
            limiter
                .attempt(fresh, now, || true)
                .unwrap_err()
                .retry_after,
            WINDOW,
            "a new address is refused too, even with the right token"
        );
        assert_eq!(limiter.attempt(fresh, now + WINDOW, || true), Ok(true));
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
            wrong(&limiter, ip(&format!("2001:db8:1:2::{i:x}")), now).unwrap();
        }
        assert!(wrong(&limiter, ip("2001:db8:1:2:ffff::1"), now).is_err());
        assert!(wrong(&limiter, ip("2001:db8:1:3::1"), now).is_ok());
        wrong(&limiter, ip("::ffff:192.0.2.1"), now).unwrap();
        let counted = limiter
            .lock()
            .clients
            .get(&ip("192.0.2.1"))
            .map(|t| t.len());
        assert_eq!(counted, Some(1));
    }
}
