//! Dashboard login sessions, kept in this process only.
//!
//! Each login gets its own random id (32 bytes from the OS, hex in the cookie) and its own CSRF
//! token. The table holds the SHA-256 of the id, never the id, with an expiry; "Log out" removes
//! the entry, so a copied cookie dies with it. Sessions end with the process. The table is
//! bounded: a full table drops expired sessions first, then the one closest to expiring, so a
//! flood of logins (which needs the token) cannot grow memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions held at once.
const MAX_SESSIONS: usize = 256;

/// A live session, as a request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// SHA-256 of the cookie's id: the table's key, used to log out.
    key: [u8; 32],
    /// This session's CSRF token, hex.
    pub csrf: String,
}

struct Entry {
    expires: Instant,
    csrf: String,
}

#[derive(Default)]
pub struct Sessions {
    table: Mutex<HashMap<[u8; 32], Entry>>,
}

impl Sessions {
    /// A new session: the id for the cookie, and the session.
    pub fn open(&self, now: Instant) -> std::io::Result<(String, Session)> {
        let mut bytes = [0u8; 64];
        super::auth::random(&mut bytes)?;
        let id = hex::encode(&bytes[..32]);
        let session = Session {
            key: key(&id),
            csrf: hex::encode(&bytes[32..]),
        };
        let mut table = self.lock();
        table.retain(|_, e| e.expires > now);
        while table.len() >= MAX_SESSIONS {
            let Some(oldest) = table.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k) else {
                break;
            };
            table.remove(&oldest);
        }
        let entry = Entry {
            expires: now + SESSION_TTL,
            csrf: session.csrf.clone(),
        };
        table.insert(session.key, entry);
        Ok((id, session))
    }

    /// The live session of a cookie's id.
    pub fn find(&self, id: &str, now: Instant) -> Option<Session> {
        let key = key(id);
        let mut table = self.lock();
        match table.get(&key) {
            Some(e) if e.expires > now => Some(Session {
                key,
                csrf: e.csrf.clone(),
            }),
            Some(_) => {
                table.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session ("Log out").
    pub fn close(&self, session: &Session) {
        self.lock().remove(&session.key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        // Nothing in the table can be left half-changed by a panic.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_login_is_its_own_session_until_closed_or_expired() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let (a, sa) = sessions.open(now).unwrap();
        let (b, sb) = sessions.open(now).unwrap();
        assert_ne!(a, b);
        assert_ne!(sa.csrf, sb.csrf);
        assert_eq!(a.len(), 64);
        assert_eq!(sessions.find(&a, now), Some(sa.clone()));
        assert_eq!(sessions.find("not-a-session", now), None);
        sessions.close(&sa);
        assert_eq!(sessions.find(&a, now), None, "logged out");
        assert_eq!(sessions.find(&b, now), Some(sb.clone()), "the other stays");
        let later = now + SESSION_TTL + Duration::from_secs(1);
        assert_eq!(sessions.find(&b, later), None, "expired");
    }

    #[test]
    fn the_table_is_bounded_and_drops_the_oldest() {
        let sessions = Sessions::default();
        let start = Instant::now();
        let (first, _) = sessions.open(start).unwrap();
        let mut last = String::new();
        for i in 1..=MAX_SESSIONS {
            last = sessions
                .open(start + Duration::from_secs(i as u64))
                .unwrap()
                .0;
        }
        let now = start + Duration::from_secs(MAX_SESSIONS as u64 + 1);
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
        assert_eq!(sessions.find(&first, now), None, "the oldest made room");
        assert!(sessions.find(&last, now).is_some());
    }
}
