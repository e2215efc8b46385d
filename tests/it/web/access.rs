//! The dashboard's access rules over plain HTTP: the token as bearer and through the login
//! form, the session cookie and its CSRF token, cross-origin refusal, loopback-only reads
//! without a token, and no secret on any page.

use std::net::SocketAddr;

use harmonylite::config::Secret;
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;
use serde_json::json;

use super::{BOOKS, TOKEN, admin_addr, http, serve_all, snapshots};
use crate::harness::nats::NatsServer;
use crate::harness::{AppDb, Node, test_config};

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
    // Login form → HttpOnly SameSite cookie; cookie POSTs need the CSRF token.
    login_cookie_and_csrf_rules(addr, &bearer, first["last"]["id"].as_str()).await;
    // No secret on any page or API answer.
    no_secret_on_any_page(addr, &bearer).await;
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

/// The login form sets an HttpOnly SameSite cookie only for the right token and its CSRF
/// token; a cookie POST needs the CSRF token and a same-origin request. `first_id`: the
/// snapshot taken before, so the one taken here is told apart.
async fn login_cookie_and_csrf_rules(addr: SocketAddr, bearer: &str, first_id: Option<&str>) {
    let login = http::get(addr, "/login").await;
    assert_eq!(login.status, 200);
    let csrf = login
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let form = |token: &str, csrf: &str| format!("token={token}&csrf={csrf}");
    let form_type = ("Content-Type", "application/x-www-form-urlencoded");
    let bad = http::request(addr, "POST", "/login", &[form_type], &form("guess", &csrf)).await;
    assert_eq!(bad.status, 401);
    let no_csrf = http::request(addr, "POST", "/login", &[form_type], &form(TOKEN, "x")).await;
    assert_eq!(no_csrf.status, 403);
    let good = http::request(addr, "POST", "/login", &[form_type], &form(TOKEN, &csrf)).await;
    assert_eq!(good.status, 303);
    let set_cookie = good.header("set-cookie").unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    assert!(!set_cookie.contains(TOKEN));
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let page = http::get_with(addr, "/", &[("Cookie", &cookie)]).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&csrf), "the page embeds the CSRF token");
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
        "/api/overview",
        "/api/cluster",
        "/api/tables",
        "/api/snapshots",
        "/api/conflicts",
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
