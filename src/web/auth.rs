//! Dashboard access rules.
//!
//! - With `admin.auth_token` set, every page and API call needs the token: as
//!   `Authorization: Bearer <token>`, or through the login form, which opens a server-side
//!   session (`sessions`: its own random id and CSRF token, an expiry, ended by "Log out") and
//!   sets an HttpOnly, SameSite=Strict cookie holding the session's id (never the token), with
//!   `Secure` when `admin.behind_tls` says a TLS proxy serves the dashboard.
//! - Wrong tokens are rate-limited per client address and for the whole node (`limiter`): 429
//!   with `Retry-After`, and while a limit holds no token is compared.
//! - Without a token (allowed on loopback only, see config validation) reads are open, but only
//!   under a loopback `Host` name, so a web page cannot read the dashboard through DNS
//!   rebinding.
//! - Actions (POST) always need the token. A session's POST must also carry that session's CSRF
//!   token (embedded only in pages rendered for the session) in `X-CSRF-Token` or the `csrf`
//!   form field, and a cross-origin `Origin` is refused. The login form itself carries no CSRF
//!   token (nothing secret is rendered for a visitor): its POST must come with a same-origin
//!   `Origin`, which browsers always send. Bearer requests need no CSRF token: a browser never
//!   attaches that header by itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::limiter::{Limited, Limiter};
use super::sessions::{SESSION_TTL, Session, Sessions};
use super::{WebError, WebState};
use crate::config::AdminConfig;

pub const SESSION_COOKIE: &str = "harmonylite_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The shortest `admin.auth_token` a new installation accepts.
pub const MIN_TOKEN_CHARS: usize = 16;

/// `admin.auth_token` is too short to resist guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "admin.auth_token is shorter than {MIN_TOKEN_CHARS} characters, short enough to guess; set a \
     longer random one (for example the output of `openssl rand -hex 24`)"
)]
pub struct WeakToken;

/// The `WeakToken` finding of a configuration, if any (an unset token is not weak: it keeps
/// the dashboard read-only on loopback).
pub fn weak_token(cfg: &AdminConfig) -> Option<WeakToken> {
    let chars = cfg.auth_token.expose().chars().count();
    (cfg.enable && chars > 0 && chars < MIN_TOKEN_CHARS).then_some(WeakToken)
}

/// The configured token, the sessions opened with it and the limit on wrong ones.
pub struct Secrets {
    token: Option<String>,
    sessions: Sessions,
    limiter: Limiter,
    /// Mark the session cookie `Secure` (`admin.behind_tls`).
    secure_cookie: bool,
    /// `harmonylite_admin_auth_failures_total`.
    failures: IntCounterVec,
}

/// Why a login failed.
#[derive(Debug)]
pub enum LoginError {
    Limited(Limited),
    WrongToken,
    Random(std::io::Error),
}

impl Secrets {
    pub fn new(cfg: &AdminConfig, failures: IntCounterVec) -> Secrets {
        let token = &cfg.auth_token;
        Secrets {
            token: (!token.is_empty()).then(|| token.expose().clone()),
            sessions: Sessions::default(),
            limiter: Limiter::default(),
            secure_cookie: cfg.behind_tls,
            failures,
        }
    }

    pub fn token_configured(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `candidate` is the configured token (constant time over the hashes).
    fn token_matches(&self, candidate: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| same(&Sha256::digest(t), &Sha256::digest(candidate)))
    }

    /// One token attempt through the limiter (`Limiter::attempt`), counted and, when a limit
    /// first engages in a window, logged.
    fn attempt(&self, client: IpAddr, candidate: Option<&str>) -> Result<bool, Limited> {
        let outcome = self.limiter.attempt(client, Instant::now(), || {
            candidate.is_some_and(|c| self.token_matches(c))
        });
        match &outcome {
            Ok(true) => {}
            Ok(false) => self.failures.with_label_values(&["wrong_token"]).inc(),
            Err(limited) => {
                self.failures.with_label_values(&["rate_limited"]).inc();
                if limited.first {
                    warn!(
                        %client,
                        "too many wrong admin tokens: the dashboard refuses token attempts \
                         (429) for now; open sessions keep working"
                    );
                }
            }
        }
        outcome
    }

    /// The login form: the limit, then the token; on success opens a session and returns its
    /// `Set-Cookie`.
    pub fn login(&self, client: IpAddr, candidate: &str) -> Result<String, LoginError> {
        if !self
            .attempt(client, Some(candidate))
            .map_err(LoginError::Limited)?
        {
            return Err(LoginError::WrongToken);
        }
        let (id, _) = self
            .sessions
            .open(Instant::now())
            .map_err(LoginError::Random)?;
        Ok(self.cookie(&id, SESSION_TTL.as_secs()))
    }

    /// Ends the session and returns the `Set-Cookie` that removes it.
    pub fn logout(&self, session: &Session) -> String {
        self.sessions.close(session);
        self.cookie("", 0)
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        format!(
            "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
        )
    }

    /// The bearer rule of `require`: the limit first, then the token, counting a wrong one.
    fn check_bearer(&self, client: IpAddr, headers: &HeaderMap) -> Result<Access, WebError> {
        match self.attempt(client, bearer(headers)) {
            Ok(true) => Ok(Access::Bearer),
            Ok(false) => Err(WebError::Unauthorized),
            Err(l) => Err(WebError::TooManyAttempts {
                retry_after: l.retry_after_secs(),
            }),
        }
    }

    /// The live session a request's cookie names, if any. Never compares a token: pages
    /// rendered for anyone (the login page too) read their session this way.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = session_cookie(headers).filter(|_| self.token_configured())?;
        self.sessions.find(&id, Instant::now())
    }
}

/// The token of an `Authorization: Bearer` header (`None` for another scheme or bad bytes).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// How a request proved it knows the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No token presented (allowed for reads when no token is configured).
    Anonymous,
    Bearer,
    /// A live login session (its cookie).
    Session(Session),
}

/// Who is asking: read by `require` and by the POST handlers. A bearer token is compared here
/// without the rate limit: `require` already let it through.
pub fn access(secrets: &Secrets, headers: &HeaderMap) -> Result<Access, WebError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return match bearer(headers) {
            Some(t) if secrets.token_matches(t) => Ok(Access::Bearer),
            _ => Err(WebError::Unauthorized),
        };
    }
    Ok(secrets
        .session(headers)
        .map_or(Access::Anonymous, Access::Session))
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

/// The client's address, as the server loop recorded it (`web::server`); unspecified when a
/// request did not come through it.
pub fn client_ip(req_extensions: &axum::http::Extensions) -> IpAddr {
    req_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// Middleware of every dashboard route except the login page and static assets.
pub async fn require(State(state): State<WebState>, req: Request, next: Next) -> Response {
    let secrets = &state.0.auth;
    let is_api = req.uri().path().starts_with("/api/");
    let checked = if req.headers().contains_key(header::AUTHORIZATION) {
        secrets.check_bearer(client_ip(req.extensions()), req.headers())
    } else {
        access(secrets, req.headers())
    };
    let access = match checked {
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
        Access::Bearer | Access::Session(_) => next.run(req).await,
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

/// The CSRF rule of a POST that passed `require`: bearer requests pass; session requests need
/// the session's CSRF token in the header or in the form field. Returns who acted.
pub fn authorize_action(
    secrets: &Secrets,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
) -> Result<Access, WebError> {
    let access = access(secrets, headers)?;
    match &access {
        Access::Bearer => Ok(access),
        Access::Anonymous => Err(WebError::Unauthorized),
        Access::Session(session) => {
            let header = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            match header.or(form_csrf) {
                Some(t) if same(t.as_bytes(), session.csrf.as_bytes()) => Ok(access),
                _ => Err(WebError::Csrf),
            }
        }
    }
}

/// A POST a browser sent from one of our own pages: its `Origin` names this host. The login
/// form's rule (it carries no CSRF token).
pub fn same_origin(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN) && !cross_origin(headers)
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

pub(super) fn random(buf: &mut [u8]) -> std::io::Result<()> {
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

    const TOKEN: &str = "tok-0123456789abcdef";
    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    fn admin(token: &str, behind_tls: bool) -> AdminConfig {
        AdminConfig {
            enable: true,
            auth_token: crate::config::Secret::new(token.to_owned()),
            behind_tls,
            ..AdminConfig::default()
        }
    }

    fn secrets(cfg: &AdminConfig) -> Secrets {
        let opts = prometheus::Opts::new("admin_auth_failures_total", "test");
        Secrets::new(cfg, IntCounterVec::new(opts, &["reason"]).unwrap())
    }

    fn cookie_header(set_cookie: &str) -> HeaderMap {
        let value = set_cookie.split(';').next().unwrap();
        headers(&[("cookie", &format!("a=b; {value}"))])
    }

    #[test]
    fn bearer_session_and_csrf() {
        let s = secrets(&admin(TOKEN, false));
        assert_eq!(access(&s, &headers(&[])).unwrap(), Access::Anonymous);
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(
            access(&s, &headers(&[("authorization", &bearer)])).unwrap(),
            Access::Bearer
        );
        assert!(access(&s, &headers(&[("authorization", "Bearer nope")])).is_err());
        let cookie = s.login(CLIENT, TOKEN).unwrap();
        assert!(!cookie.contains(TOKEN));
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"));
        let with_cookie = cookie_header(&cookie);
        let Access::Session(session) = access(&s, &with_cookie).unwrap() else {
            panic!("the cookie opens the session");
        };
        assert_eq!(session.csrf.len(), 64);
        assert!(matches!(
            authorize_action(&s, &with_cookie, None),
            Err(WebError::Csrf)
        ));
        assert!(authorize_action(&s, &with_cookie, Some(&session.csrf)).is_ok());
        assert!(matches!(
            authorize_action(&s, &with_cookie, Some("wrong")),
            Err(WebError::Csrf)
        ));
        let mut with_header = with_cookie.clone();
        with_header.insert(CSRF_HEADER, HeaderValue::from_str(&session.csrf).unwrap());
        assert!(authorize_action(&s, &with_header, None).is_ok());
        // Another login is another session, with another CSRF token.
        let other = cookie_header(&s.login(CLIENT, TOKEN).unwrap());
        assert!(matches!(
            authorize_action(&s, &other, Some(&session.csrf)),
            Err(WebError::Csrf)
        ));
        // Another process knows no session.
        let restarted = secrets(&admin(TOKEN, false));
        assert_eq!(access(&restarted, &with_cookie).unwrap(), Access::Anonymous);
        // Log out ends this session only.
        let removal = s.logout(&session);
        assert!(removal.contains("Max-Age=0"));
        assert_eq!(access(&s, &with_cookie).unwrap(), Access::Anonymous);
        assert!(matches!(access(&s, &other).unwrap(), Access::Session(_)));
    }

    #[test]
    fn the_cookie_is_secure_behind_tls() {
        let s = secrets(&admin(TOKEN, true));
        assert!(s.login(CLIENT, TOKEN).unwrap().ends_with("; Secure"));
        let session = match access(&s, &cookie_header(&s.login(CLIENT, TOKEN).unwrap())) {
            Ok(Access::Session(session)) => session,
            other => panic!("{other:?}"),
        };
        assert!(s.logout(&session).ends_with("; Secure"));
    }

    #[test]
    fn wrong_tokens_are_limited_and_then_not_even_compared() {
        let s = secrets(&admin(TOKEN, false));
        for _ in 0..super::super::limiter::PER_CLIENT {
            assert!(matches!(
                s.login(CLIENT, "guess"),
                Err(LoginError::WrongToken)
            ));
        }
        assert!(matches!(
            s.login(CLIENT, TOKEN),
            Err(LoginError::Limited(_))
        ));
        let bearer = format!("Bearer {TOKEN}");
        let limited = s.check_bearer(CLIENT, &headers(&[("authorization", &bearer)]));
        assert!(
            matches!(limited, Err(WebError::TooManyAttempts { retry_after }) if retry_after > 0)
        );
        let count = |reason: &str| s.failures.with_label_values(&[reason]).get();
        assert_eq!(count("wrong_token"), 5);
        assert_eq!(count("rate_limited"), 2);
        let elsewhere = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(
            s.check_bearer(elsewhere, &headers(&[("authorization", &bearer)]))
                .unwrap(),
            Access::Bearer
        );
    }

    #[test]
    fn short_tokens_are_weak() {
        assert_eq!(
            weak_token(&admin("fifteen-chars!!", false)),
            Some(WeakToken)
        );
        assert_eq!(weak_token(&admin("sixteen-chars!!!", false)), None);
        assert_eq!(
            weak_token(&admin("", false)),
            None,
            "unset is read-only, not weak"
        );
        let off = AdminConfig {
            enable: false,
            ..admin("short", false)
        };
        assert_eq!(weak_token(&off), None);
        let message = WeakToken.to_string();
        assert!(message.contains("admin.auth_token") && !message.contains("fifteen"));
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
        let s = secrets(&admin("", false));
        assert!(!s.token_configured());
        assert!(!s.token_matches(""));
        assert!(matches!(s.login(CLIENT, ""), Err(LoginError::WrongToken)));
        assert!(access(&s, &headers(&[("authorization", "Bearer ")])).is_err());
    }
}
