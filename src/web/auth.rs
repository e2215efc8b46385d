//! Dashboard access rules.
//!
//! - With `admin.auth_token` set, every page and API call needs the token: as
//!   `Authorization: Bearer <token>`, or through the login form, which sets an HttpOnly,
//!   SameSite=Strict session cookie. The cookie holds a hash of the token under a per-process
//!   key (never the token), so it dies with the process.
//! - Without a token (allowed on loopback only, see config validation) reads are open, but only
//!   under a loopback `Host` name, so a web page cannot read the dashboard through DNS
//!   rebinding.
//! - Actions (POST) always need the token. A cookie-authenticated POST must also carry the
//!   per-process CSRF token (embedded in every page) in `X-CSRF-Token` or the `csrf` form field,
//!   and a cross-origin `Origin` is refused. Bearer requests need no CSRF token: a browser never
//!   attaches that header by itself.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use super::{WebError, WebState};
use crate::config::Secret;

pub const SESSION_COOKIE: &str = "harmonylite_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Per-process keys, and the configured token.
pub struct Secrets {
    token: Option<String>,
    /// Key of the session cookie's hash.
    session_key: [u8; 32],
    /// The CSRF token embedded in pages, hex.
    csrf: String,
}

impl Secrets {
    pub fn new(token: &Secret<String>) -> std::io::Result<Secrets> {
        let mut bytes = [0u8; 64];
        random(&mut bytes)?;
        let mut session_key = [0u8; 32];
        session_key.copy_from_slice(&bytes[..32]);
        Ok(Secrets {
            token: (!token.is_empty()).then(|| token.expose().clone()),
            session_key,
            csrf: hex::encode(&bytes[32..]),
        })
    }

    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    pub fn token_configured(&self) -> bool {
        self.token.is_some()
    }

    /// The session cookie value for the configured token.
    fn session_value(&self) -> Option<String> {
        let token = self.token.as_ref()?;
        let mut h = Sha256::new();
        h.update(b"harmonylite-admin-session\0");
        h.update(self.session_key);
        h.update(token.as_bytes());
        Some(hex::encode(h.finalize()))
    }

    /// Whether `candidate` is the configured token (constant time over the hashes).
    pub fn token_matches(&self, candidate: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| same(&Sha256::digest(t), &Sha256::digest(candidate)))
    }

    pub fn csrf_matches(&self, candidate: &str) -> bool {
        same(self.csrf.as_bytes(), candidate.as_bytes())
    }

    /// `Set-Cookie` for a successful login.
    pub fn login_cookie(&self) -> Option<String> {
        self.session_value().map(|v| {
            format!("{SESSION_COOKIE}={v}; Path=/; HttpOnly; SameSite=Strict; Max-Age=86400")
        })
    }
}

/// `Set-Cookie` that removes the session.
pub fn logout_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// How a request proved it knows the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token presented (allowed for reads when no token is configured).
    Anonymous,
    Bearer,
    Cookie,
}

/// Who is asking: read by `require` and by the POST handlers.
pub fn access(secrets: &Secrets, headers: &HeaderMap) -> Result<Access, WebError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        return match presented {
            Some(t) if secrets.token_matches(t) => Ok(Access::Bearer),
            _ => Err(WebError::Unauthorized),
        };
    }
    if let (Some(cookie), Some(expected)) = (session_cookie(headers), secrets.session_value())
        && same(cookie.as_bytes(), expected.as_bytes())
    {
        return Ok(Access::Cookie);
    }
    Ok(Access::Anonymous)
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Middleware of every dashboard route except the login page and static assets.
pub async fn require(State(state): State<WebState>, req: Request, next: Next) -> Response {
    let secrets = &state.0.auth;
    let is_api = req.uri().path().starts_with("/api/");
    let access = match access(secrets, req.headers()) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        // Actions: checked fully by `authorize_action` in the handler, which sees the form.
        if !secrets.token_configured() {
            return WebError::Forbidden(
                "actions need admin.auth_token to be set in the configuration",
            )
            .into_response();
        }
        if access == Access::Anonymous {
            return WebError::Unauthorized.into_response();
        }
        if cross_origin(req.headers()) {
            return WebError::Forbidden("cross-origin request refused").into_response();
        }
        return next.run(req).await;
    }
    match access {
        Access::Bearer | Access::Cookie => next.run(req).await,
        Access::Anonymous if secrets.token_configured() => {
            if is_api {
                WebError::Unauthorized.into_response()
            } else {
                Redirect::to("/login").into_response()
            }
        }
        Access::Anonymous if !loopback_host(req.headers()) => {
            WebError::Forbidden("without admin.auth_token the dashboard answers only to localhost")
                .into_response()
        }
        Access::Anonymous => next.run(req).await,
    }
}

/// The CSRF rule of a POST that passed `require`: bearer requests pass; cookie requests need the
/// token in the header or in the form field.
pub fn authorize_action(
    secrets: &Secrets,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
) -> Result<(), WebError> {
    match access(secrets, headers)? {
        Access::Bearer => Ok(()),
        Access::Anonymous => Err(WebError::Unauthorized),
        Access::Cookie => {
            let header = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            match header.or(form_csrf) {
                Some(t) if secrets.csrf_matches(t) => Ok(()),
                _ => Err(WebError::Csrf),
            }
        }
    }
}

/// An `Origin` whose host differs from `Host` (browsers send `Origin` on every POST).
pub fn cross_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
    host != Some(origin_host)
}

/// Whether the `Host` header names this machine's loopback (`localhost`, `127.x`, `[::1]`).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Constant-time equality.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_cookie_and_csrf() {
        let s = Secrets::new(&Secret::new("tok-123".to_owned())).unwrap();
        assert_eq!(access(&s, &headers(&[])).unwrap(), Access::Anonymous);
        assert_eq!(
            access(&s, &headers(&[("authorization", "Bearer tok-123")])).unwrap(),
            Access::Bearer
        );
        assert!(access(&s, &headers(&[("authorization", "Bearer nope")])).is_err());
        let cookie = s.login_cookie().unwrap();
        assert!(!cookie.contains("tok-123"));
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let value = cookie.split(';').next().unwrap().to_owned();
        let with_cookie = headers(&[("cookie", &format!("a=b; {value}"))]);
        assert_eq!(access(&s, &with_cookie).unwrap(), Access::Cookie);
        assert!(matches!(
            authorize_action(&s, &with_cookie, None),
            Err(WebError::Csrf)
        ));
        assert!(authorize_action(&s, &with_cookie, Some(s.csrf())).is_ok());
        assert!(matches!(
            authorize_action(&s, &with_cookie, Some("wrong")),
            Err(WebError::Csrf)
        ));
        let mut with_header = with_cookie.clone();
        with_header.insert(CSRF_HEADER, HeaderValue::from_str(s.csrf()).unwrap());
        assert!(authorize_action(&s, &with_header, None).is_ok());
        // Another process's cookie is worthless.
        let other = Secrets::new(&Secret::new("tok-123".to_owned())).unwrap();
        assert_eq!(access(&other, &with_cookie).unwrap(), Access::Anonymous);
        assert_ne!(other.csrf(), s.csrf());
    }

    #[test]
    fn hosts_and_origins() {
        for ok in ["localhost:8091", "127.0.0.1:1", "[::1]:80", "LOCALHOST"] {
            assert!(loopback_host(&headers(&[("host", ok)])), "{ok}");
        }
        for bad in ["evil.example:8091", "10.0.0.1:80", "localhost.evil.example"] {
            assert!(!loopback_host(&headers(&[("host", bad)])), "{bad}");
        }
        assert!(!loopback_host(&headers(&[])));
        let same_origin = headers(&[
            ("host", "127.0.0.1:8091"),
            ("origin", "http://127.0.0.1:8091"),
        ]);
        assert!(!cross_origin(&same_origin));
        let cross = headers(&[
            ("host", "127.0.0.1:8091"),
            ("origin", "http://evil.example"),
        ]);
        assert!(cross_origin(&cross));
        assert!(!cross_origin(&headers(&[("host", "x")])));
    }

    #[test]
    fn without_token_nothing_matches() {
        let s = Secrets::new(&Secret::default()).unwrap();
        assert!(!s.token_configured());
        assert!(!s.token_matches(""));
        assert!(s.login_cookie().is_none());
        assert!(access(&s, &headers(&[("authorization", "Bearer ")])).is_err());
    }
}
