//! The dashboard's access rules over plain HTTP: the token as bearer and through the login
//! form, the session cookie and its CSRF token, cross-origin refusal, loopback-only reads
//! without a token, and no secret on any page.

use std::net::SocketAddr;
use std::time::Duration;

use harmonylite::config::Secret;
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;
use serde_json::json;

use super::{BOOKS, TOKEN, admin_addr, http, serve_all, snapshots};
use crate::harness::nats::NatsServer;
use crate::harness::node::process_toml;
use crate::harness::{AppDb, Node, NodeProcess, test_config};

/// Every request a client makes against the admin server, with and without the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_access_rules() {
    let server =
        NatsServer::start("authorization { user: \"app\", password: \"pw-web-3c7d\" }").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), 1);
    // Credentials in the URL too: the dashboard must show it redacted.
    cfg.nats.urls = vec![format!("nats://app:pw-web-3c7d@127.0.0.1:{}", server.port)];
    cfg.nats.user_name = "app".into();
    cfg.nats.user_password = Secret::new("pw-web-3c7d".into());
    serve_all(&mut cfg);
    cfg.admin.auth_token = Secret::new(TOKEN.to_owned());
    let store = tempfile::tempdir().unwrap();
    snapshots::fs_snapshots(&mut cfg, store.path());
    AppDb::open(&cfg.db_path).exec(BOOKS);
    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    let addr = admin_addr(&node);
    let bearer = format!("Bearer {TOKEN}");

    // No token, wrong token, right token.
    bearer_token_rules(addr, &bearer).await;
    // The action: never without the token; accepted with it.
    assert_eq!(post_snapshot(addr, vec![]).await.status, 401);
    let done = post_snapshot(addr, vec![("Authorization", bearer.clone())]).await;
    assert_eq!(done.status, 202, "{}", done.body);
    let first = snapshots::wait_snapshot_done(addr, Some(&bearer), None).await;
    assert_eq!(first["last"]["ok"], true, "{first}");
    // Login form → a server-side session; cookie POSTs need its CSRF token; log out ends it.
    login_cookie_and_csrf_rules(addr, &bearer, first["last"]["id"].as_str()).await;
    // No secret on any page or API answer.
    no_secret_on_any_page(addr, &bearer).await;
    // Last: it locks this client out for a minute.
    wrong_tokens_are_rate_limited(addr, &bearer).await;
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

/// Reads without a token and with a wrong one are refused (the page redirects to the login);
/// the right one reads the overview, served with a strict CSP.
async fn bearer_token_rules(addr: SocketAddr, bearer: &str) {
    assert_eq!(http::get(addr, "/api/overview").await.status, 401);
    let wrong = http::get_with(addr, "/api/overview", &[("Authorization", "Bearer nope")]).await;
    assert_eq!(wrong.status, 401);
    let page = http::get(addr, "/").await;
    assert_eq!(
        (page.status, page.header("location")),
        (303, Some("/login"))
    );
    let ok = http::get_with(addr, "/api/overview", &[("Authorization", bearer)]).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["node"]["node_id"], 1);
    assert_eq!(ok.json()["nats"]["mode"], "external");
    assert!(
        ok.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
}

/// Asks for a snapshot (the admin action) with these headers.
async fn post_snapshot(addr: SocketAddr, headers: Vec<(&'static str, String)>) -> http::Response {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http::request(addr, "POST", "/api/snapshots", &h, "").await
}

/// The text of `attr="…"` in a page.
fn attribute(body: &str, attr: &str) -> String {
    body.split(&format!("{attr}=\""))
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no {attr} in {body}"))
        .to_owned()
}

/// Logs in through the form (same-origin, as a browser posts it): the response.
async fn login(addr: SocketAddr, token: &str, origin: Option<&str>) -> http::Response {
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    headers.extend(origin.map(|o| ("Origin", o)));
    http::request(addr, "POST", "/login", &headers, &format!("token={token}")).await
}

/// The session cookie a successful login set (`name=value`).
fn session_of(res: &http::Response) -> String {
    assert_eq!(res.status, 303, "{}", res.body);
    let set_cookie = res.header("set-cookie").unwrap();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    assert!(
        !set_cookie.contains("Secure"),
        "plain HTTP without admin.behind_tls"
    );
    assert!(!set_cookie.contains(TOKEN));
    set_cookie.split(';').next().unwrap().to_owned()
}

/// The login page renders no CSRF token; the form needs a same-origin POST; each login opens
/// its own session with its own CSRF token, which a cookie POST needs (and a same-origin
/// request); "Log out" ends that session on the server. `first_id`: the snapshot taken before,
/// so the one taken here is told apart.
async fn login_cookie_and_csrf_rules(addr: SocketAddr, bearer: &str, first_id: Option<&str>) {
    let origin = format!("http://{addr}");
    let page = http::get(addr, "/login").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("name=\"csrf\""), "{}", page.body);
    assert_eq!(
        attribute(&page.body, "data-csrf"),
        "",
        "no CSRF token for a visitor"
    );
    assert_eq!(login(addr, "guess", Some(&origin)).await.status, 401);
    assert_eq!(login(addr, TOKEN, None).await.status, 403, "no Origin");
    let cross = login(addr, TOKEN, Some("http://evil.example")).await;
    assert_eq!(cross.status, 403);
    let cookie = session_of(&login(addr, TOKEN, Some(&origin)).await);
    let page = http::get_with(addr, "/", &[("Cookie", &cookie)]).await;
    assert_eq!(page.status, 200);
    let csrf = attribute(&page.body, "data-csrf");
    assert_eq!(csrf.len(), 64, "the session's CSRF token is embedded");
    // A second login is a second session, with its own CSRF token.
    let other = session_of(&login(addr, TOKEN, Some(&origin)).await);
    assert_ne!(other, cookie);
    let other_page = http::get_with(addr, "/", &[("Cookie", &other)]).await;
    let other_csrf = attribute(&other_page.body, "data-csrf");
    assert_ne!(other_csrf, csrf);
    let mixed = post_snapshot(
        addr,
        vec![("Cookie", other.clone()), ("X-CSRF-Token", csrf.clone())],
    )
    .await;
    assert_eq!(
        mixed.status, 403,
        "one session's CSRF token is not another's"
    );
    assert_eq!(
        post_snapshot(addr, vec![("Cookie", cookie.clone())])
            .await
            .status,
        403
    );
    let with_csrf = post_snapshot(
        addr,
        vec![("Cookie", cookie.clone()), ("X-CSRF-Token", csrf.clone())],
    )
    .await;
    assert_eq!(with_csrf.status, 202, "{}", with_csrf.body);
    let second = snapshots::wait_snapshot_done(addr, Some(bearer), first_id).await;
    assert_eq!(second["last"]["ok"], true, "{second}");
    let cross = post_snapshot(
        addr,
        vec![
            ("Cookie", cookie.clone()),
            ("X-CSRF-Token", csrf.clone()),
            ("Origin", "http://evil.example".to_owned()),
        ],
    )
    .await;
    assert_eq!(cross.status, 403);
    // Log out (the page's form): the session ends on the server; the other one stays.
    let form = [
        ("Cookie", cookie.as_str()),
        ("Origin", origin.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let out = http::request(addr, "POST", "/logout", &form, &format!("csrf={csrf}")).await;
    assert_eq!(out.status, 303, "{}", out.body);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    let after = http::get_with(addr, "/api/overview", &[("Cookie", &cookie)]).await;
    assert_eq!(after.status, 401, "a logged-out cookie is worthless");
    let kept = http::get_with(addr, "/api/overview", &[("Cookie", &other)]).await;
    assert_eq!(kept.status, 200);
}

/// Wrong tokens from one client: at most five a minute are answered 401 (earlier steps of the
/// test sent some), then 429 with `Retry-After`, for the bearer header and the login form
/// alike, even with the right token (it is not compared); a session opened before keeps
/// working.
async fn wrong_tokens_are_rate_limited(addr: SocketAddr, bearer: &str) {
    let origin = format!("http://{addr}");
    let session = session_of(&login(addr, TOKEN, Some(&origin)).await);
    let mut refused = 0;
    loop {
        let wrong =
            http::get_with(addr, "/api/overview", &[("Authorization", "Bearer nope")]).await;
        match wrong.status {
            401 => refused += 1,
            429 => break,
            other => panic!("{other}: {}", wrong.body),
        }
        assert!(
            refused <= 5,
            "a sixth wrong token within the minute was compared"
        );
    }
    let limited = http::get_with(addr, "/api/overview", &[("Authorization", bearer)]).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let form = login(addr, TOKEN, Some(&origin)).await;
    assert_eq!(form.status, 429);
    assert!(form.header("retry-after").is_some());
    assert!(form.body.contains("Too many wrong tokens"), "{}", form.body);
    let page = http::get_with(addr, "/api/overview", &[("Cookie", &session)]).await;
    assert_eq!(page.status, 200, "sessions are not token attempts");
}

/// Every page and API answer, read with the token, shows neither the NATS password nor the
/// token; the NATS URL is shown redacted.
async fn no_secret_on_any_page(addr: SocketAddr, bearer: &str) {
    for path in [
        "/",
        "/cluster",
        "/tables",
        "/snapshots",
        "/conflicts",
        "/consistency",
        "/api/overview",
        "/api/cluster",
        "/api/tables",
        "/api/snapshots",
        "/api/conflicts",
        "/api/consistency",
        "/chart.svg",
    ] {
        let res = http::get_with(addr, path, &[("Authorization", bearer)]).await;
        assert_eq!(res.status, 200, "{path}: {}", res.body);
        for secret in ["pw-web-3c7d", TOKEN] {
            assert!(!res.body.contains(secret), "{path} shows a secret");
        }
    }
    let overview = http::get_with(addr, "/api/overview", &[("Authorization", bearer)]).await;
    assert!(
        overview.body.contains("app:***@127.0.0.1"),
        "{}",
        overview.body
    );
}

#[tokio::test]
async fn open_dashboard_is_loopback_only_and_read_only() {
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), 1);
    cfg.nats.urls = vec![server.url()];
    serve_all(&mut cfg);
    AppDb::open(&cfg.db_path).exec(BOOKS);
    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    let addr = admin_addr(&node);
    assert_eq!(http::get(addr, "/api/tables").await.status, 200);
    let tables = http::get(addr, "/api/tables").await.json();
    assert_eq!(tables["tables"][0]["table"], "books");
    let rebinding = http::get_with(addr, "/api/overview", &[("Host", "evil.example:8091")]).await;
    assert_eq!(rebinding.status, 403);
    let refused = http::request(addr, "POST", "/api/snapshots", &[], "").await;
    assert_eq!(refused.status, 403);
    assert!(
        refused.body.contains("admin.auth_token"),
        "{}",
        refused.body
    );
    // Snapshots are off in the test configuration: the page says so, and lists nothing.
    let snaps = http::get(addr, "/api/snapshots").await.json();
    assert_eq!(snaps["enabled"], false, "{snaps}");
    assert!(snaps["message"].as_str().unwrap().contains("disabled"));
    assert_eq!(snaps["history"], json!([]));
    assert!(
        snaps["store_error"].is_null(),
        "the store is never opened: {snaps}"
    );
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

/// A guessable `admin.auth_token` (under 16 characters): a new installation is refused (exit
/// 2, naming the key, never the value); an existing one starts with the warning on `/health`
/// and the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_admin_token_is_refused_new_and_warned_existing() {
    const SHORT: &str = "short-tok-9f3e";
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("[admin]\nenable = true\nbind = \"127.0.0.1:0\"\nauth_token = {SHORT:?}\n");
    let toml = process_toml(dir.path(), 1, "", "", &admin);
    let mut refused = NodeProcess::spawn(dir.path(), 1, &toml, &[]);
    let code = refused.exit_code(Duration::from_secs(30)).await;
    let log = refused.log();
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("admin.auth_token") && log.contains("16"),
        "{log}"
    );
    assert!(!log.contains(SHORT), "the token was echoed: {log}");

    // An installation from before the rule: its database holds our internal tables.
    let node = Node::start(test_config(dir.path(), 1), EmbeddedOptions::default()).await;
    assert!(matches!(node.stop().await, Outcome::Stopped));
    let mut cfg = test_config(dir.path(), 1);
    serve_all(&mut cfg);
    cfg.admin.auth_token = Secret::new(SHORT.to_owned());
    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    let warnings = node.status.security_warnings();
    assert!(
        warnings.len() == 1 && warnings[0].contains("admin.auth_token"),
        "{warnings:?}"
    );
    let health = http::get(super::health_addr(&node), "/health").await;
    assert_eq!(health.json()["security_warnings"], json!(warnings));
    let bearer = format!("Bearer {SHORT}");
    let page = http::get_with(admin_addr(&node), "/", &[("Authorization", &bearer)]).await;
    assert!(page.body.contains("data-security-warning"), "{}", page.body);
    assert!(!page.body.contains(SHORT));
    assert!(matches!(node.stop().await, Outcome::Stopped));
}
