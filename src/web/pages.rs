//! The dashboard's routes: HTML pages (askama templates in `web/templates`), their JSON twins
//! under `/api/`, the chart, the login form, the snapshot action and the static assets (compiled
//! into the binary from `web/static`). Every response carries a strict Content-Security-Policy:
//! scripts, styles and fetches from this origin only.

use askama::Template;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::api::{self, ClusterView, ConflictsView, Overview, PageQuery, TablesView};
use super::auth::{self, Access, LoginError};
use super::recovery::{self, ActionForm, RecoveryView};
use super::snapshots::{self, SnapshotsView};
use super::{WebError, WebState, chart};
use crate::hlc::now_ms;

const CSS: &str = include_str!("../../web/static/app.css");
const JS: &str = include_str!("../../web/static/app.js");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(super) fn router(state: WebState) -> Router {
    let guarded = Router::new()
        .route("/", get(overview_page))
        .route("/cluster", get(cluster_page))
        .route("/tables", get(tables_page))
        .route("/snapshots", get(snapshots_page).post(snapshot_form))
        .route("/conflicts", get(conflicts_page))
        .route("/recovery", get(recovery_page))
        .route("/consistency", get(consistency_page))
        .route("/recovery/accept", post(accept_form))
        .route("/quarantine/{id}/{action}", post(release_form))
        .route("/chart.svg", get(chart_svg))
        .route("/api/overview", get(overview_json))
        .route("/api/cluster", get(cluster_json))
        .route("/api/tables", get(tables_json))
        .route("/api/snapshots", get(snapshots_json).post(snapshot_json))
        .route("/api/conflicts", get(conflicts_json))
        .route("/api/recovery", get(recovery_json))
        .route("/api/consistency", get(consistency_json))
        .route("/api/recovery/accept", post(recovery::accept_json))
        .route(
            "/api/quarantine/{id}/{action}",
            post(recovery::release_json),
        )
        .route("/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require));
    Router::new()
        .merge(guarded)
        .route("/login", get(login_page).post(login))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .fallback(|| async { WebError::NotFound })
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it, Chromium sends `Origin: null` on form posts, which the
    // cross-origin check must refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// What every page shows around its content.
pub struct Chrome {
    pub title: &'static str,
    pub nav: &'static str,
    pub api: String,
    pub csrf: String,
    pub node_id: u64,
    pub version: &'static str,
    /// Logged in with the session cookie (offer "log out").
    pub session: bool,
    pub token_configured: bool,
    /// What the node lacks, shown on every page (`recovery::alert`).
    pub alert: Option<String>,
    /// Insecure settings the node runs with, shown on every page.
    pub security_warnings: Vec<String>,
}

/// The chrome of the page `nav` (its JSON twin is `/api/<nav>`).
fn chrome(state: &WebState, headers: &HeaderMap, nav: &'static str, title: &'static str) -> Chrome {
    chrome_api(state, headers, nav, title, format!("/api/{nav}"))
}

/// The chrome of a page whose JSON twin is `api` (empty: none).
fn chrome_api(
    state: &WebState,
    headers: &HeaderMap,
    nav: &'static str,
    title: &'static str,
    api: String,
) -> Chrome {
    let secrets = &state.0.auth;
    let session = secrets.session(headers);
    Chrome {
        title,
        nav,
        api,
        csrf: session.as_ref().map(|s| s.csrf.clone()).unwrap_or_default(),
        node_id: state.status().node_id.0,
        version: crate::VERSION,
        session: session.is_some(),
        token_configured: secrets.token_configured(),
        alert: recovery::alert(state),
        security_warnings: state.status().security_warnings(),
    }
}

fn html(t: &impl Template) -> Result<Html<String>, WebError> {
    t.render().map(Html).map_err(WebError::Render)
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    page: Chrome,
    v: Overview,
    chart: String,
}

async fn overview_page(
    State(state): State<WebState>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let v = api::overview(&state).await;
    html(&OverviewPage {
        page: chrome(&state, &headers, "overview", "Overview"),
        v,
        chart: chart::render(&state.0.samples.snapshot(), now_ms()),
    })
}

async fn overview_json(State(state): State<WebState>) -> Json<Overview> {
    Json(api::overview(&state).await)
}

async fn chart_svg(State(state): State<WebState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("image/svg+xml"),
        )],
        chart::render(&state.0.samples.snapshot(), now_ms()),
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "cluster.html")]
struct ClusterPage {
    page: Chrome,
    v: ClusterView,
}

async fn cluster_page(
    State(state): State<WebState>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let v = api::cluster(&state).await;
    html(&ClusterPage {
        page: chrome(&state, &headers, "cluster", "Cluster"),
        v,
    })
}

async fn cluster_json(State(state): State<WebState>) -> Json<ClusterView> {
    Json(api::cluster(&state).await)
}

#[derive(Template)]
#[template(path = "tables.html")]
struct TablesPage {
    page: Chrome,
    v: TablesView,
}

async fn tables_page(
    State(state): State<WebState>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let v = api::tables(&state).await?;
    html(&TablesPage {
        page: chrome(&state, &headers, "tables", "Tables"),
        v,
    })
}

async fn tables_json(State(state): State<WebState>) -> Result<Json<TablesView>, WebError> {
    Ok(Json(api::tables(&state).await?))
}

#[derive(Template)]
#[template(path = "snapshots.html")]
struct SnapshotsPage {
    page: Chrome,
    v: SnapshotsView,
    /// The outcome of the action just posted, if any.
    outcome: Option<String>,
}

async fn snapshots_page(
    State(state): State<WebState>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    html(&SnapshotsPage {
        page: chrome(&state, &headers, "snapshots", "Snapshots"),
        v: snapshots::view(&state).await,
        outcome: None,
    })
}

async fn snapshots_json(State(state): State<WebState>) -> Json<SnapshotsView> {
    Json(snapshots::view(&state).await)
}

/// "Take a snapshot now" from the page's form (without script).
async fn snapshot_form(
    State(state): State<WebState>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<Response, WebError> {
    let outcome = take_snapshot(&state, &headers, form.csrf.as_deref());
    // Rendered after starting, so the page already shows the snapshot running.
    let code = match &outcome {
        Ok(()) => StatusCode::ACCEPTED,
        Err(e) => e.status(),
    };
    let page = SnapshotsPage {
        page: chrome(&state, &headers, "snapshots", "Snapshots"),
        v: snapshots::view(&state).await,
        outcome: Some(match outcome {
            Ok(()) => STARTED.to_owned(),
            Err(e) => e.describe(),
        }),
    };
    Ok((code, html(&page)?).into_response())
}

const STARTED: &str = "Snapshot started.";

/// `POST /api/snapshots`: bearer token, or session cookie plus `X-CSRF-Token`. Answers 202 at
/// once; `GET /api/snapshots` then shows the progress and the result.
async fn snapshot_json(
    State(state): State<WebState>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    take_snapshot(&state, &headers, None)?;
    let body = serde_json::json!({ "message": STARTED });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The action behind both forms: authorize, then start a snapshot in the background (409 while
/// one runs, 503 when snapshots are disabled or the node has no snapshot task).
fn take_snapshot(
    state: &WebState,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
) -> Result<(), WebError> {
    auth::authorize_action(&state.0.auth, headers, form_csrf)?;
    snapshots::start(state)
}

#[derive(Template)]
#[template(path = "conflicts.html")]
struct ConflictsPage {
    page: Chrome,
    v: ConflictsView,
}

async fn conflicts_page(
    State(state): State<WebState>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, WebError> {
    let v = api::conflicts(&state, q.page.unwrap_or(1)).await?;
    let api = format!("/api/conflicts?page={}", v.page);
    html(&ConflictsPage {
        page: chrome_api(&state, &headers, "conflicts", "Conflicts", api),
        v,
    })
}

async fn conflicts_json(
    State(state): State<WebState>,
    Query(q): Query<PageQuery>,
) -> Result<Json<ConflictsView>, WebError> {
    Ok(Json(api::conflicts(&state, q.page.unwrap_or(1)).await?))
}

#[derive(Template)]
#[template(path = "recovery.html")]
struct RecoveryPage {
    page: Chrome,
    v: RecoveryView,
    /// The outcome of the action just posted, if any.
    outcome: Option<String>,
}

async fn recovery_page(
    State(state): State<WebState>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    html(&RecoveryPage {
        page: chrome(&state, &headers, "recovery", "Recovery"),
        v: recovery::view(&state).await?,
        outcome: None,
    })
}

async fn recovery_json(State(state): State<WebState>) -> Result<Json<RecoveryView>, WebError> {
    Ok(Json(recovery::view(&state).await?))
}

/// The Consistency page: the last comparison of every node's content digests
/// (`docs/decisions/015-consistency-digests.md`).
#[derive(Template)]
#[template(path = "consistency.html")]
struct ConsistencyPage {
    page: Chrome,
    v: crate::status::Consistency,
    /// When, as RFC 3339.
    compared_at: Option<String>,
}

async fn consistency_page(
    State(state): State<WebState>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    let v = state.status().consistency();
    html(&ConsistencyPage {
        page: chrome(&state, &headers, "consistency", "Consistency"),
        compared_at: v.compared_at_ms.and_then(super::rfc3339_opt),
        v,
    })
}

async fn consistency_json(State(state): State<WebState>) -> Json<crate::status::Consistency> {
    Json(state.status().consistency())
}

/// The Recovery page again, after one of its forms, with the action's outcome.
async fn recovery_outcome(
    state: &WebState,
    headers: &HeaderMap,
    outcome: Result<String, WebError>,
) -> Result<Response, WebError> {
    let code = match &outcome {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    };
    let page = RecoveryPage {
        page: chrome(state, headers, "recovery", "Recovery"),
        v: recovery::view(state).await?,
        outcome: Some(match outcome {
            Ok(message) => message,
            Err(e) => e.describe(),
        }),
    };
    Ok((code, html(&page)?).into_response())
}

async fn accept_form(
    State(state): State<WebState>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<Response, WebError> {
    let outcome = recovery::accept(&state, &headers, form.csrf.as_deref()).await;
    recovery_outcome(&state, &headers, outcome).await
}

async fn release_form(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path((id, action)): Path<(i64, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, WebError> {
    let outcome = recovery::release(&state, &headers, form.csrf.as_deref(), id, &action).await;
    recovery_outcome(&state, &headers, outcome).await
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    page: Chrome,
    error: Option<String>,
}

async fn login_page(
    State(state): State<WebState>,
    headers: HeaderMap,
) -> Result<Html<String>, WebError> {
    html(&LoginPage {
        page: chrome_api(&state, &headers, "login", "Log in", String::new()),
        error: (!state.0.auth.token_configured()).then(|| {
            "No admin.auth_token is configured: the dashboard is open on this machine.".to_owned()
        }),
    })
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

/// The login form's POST: same-origin only (it carries no CSRF token), rate-limited per
/// client (`auth::Secrets::login`), and on success a new session's cookie.
async fn login(
    State(state): State<WebState>,
    headers: HeaderMap,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Form(form): Form<LoginForm>,
) -> Result<Response, WebError> {
    if !auth::same_origin(&headers) {
        return Err(WebError::Forbidden(
            "log in from the dashboard's own login page (same-origin Origin header required)",
        ));
    }
    let (code, message, retry_after) = match state.0.auth.login(client.ip(), &form.token) {
        Ok(cookie) => {
            let mut res = Redirect::to("/").into_response();
            res.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_str(&cookie).map_err(|_| WebError::Unauthorized)?,
            );
            return Ok(res);
        }
        Err(LoginError::Random(e)) => return Err(WebError::Random(e)),
        Err(LoginError::WrongToken) => (StatusCode::UNAUTHORIZED, "Wrong token.".to_owned(), None),
        Err(LoginError::Limited(limited)) => {
            let secs = limited.retry_after_secs();
            let message = format!("Too many wrong tokens; try again in {secs} s.");
            (StatusCode::TOO_MANY_REQUESTS, message, Some(secs))
        }
    };
    let page = LoginPage {
        page: chrome_api(&state, &headers, "login", "Log in", String::new()),
        error: Some(message),
    };
    let mut res = (code, html(&page)?).into_response();
    if let Some(secs) = retry_after {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    Ok(res)
}

/// "Log out": ends this session on the server, and removes the cookie.
async fn logout(
    State(state): State<WebState>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<Response, WebError> {
    let secrets = &state.0.auth;
    let removal = match auth::authorize_action(secrets, &headers, form.csrf.as_deref())? {
        Access::Session(session) => secrets.logout(&session),
        // A bearer client has no session to end.
        Access::Bearer | Access::Anonymous => return Ok(StatusCode::NO_CONTENT.into_response()),
    };
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&removal).map_err(|_| WebError::Unauthorized)?,
    );
    Ok(res)
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}
