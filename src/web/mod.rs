//! The operations surface: the health check (`health_check.bind`), the Prometheus exporter
//! (`prometheus.bind`) and the admin dashboard (`admin.bind`), three axum servers on listeners
//! bound by `Listeners::bind` before the node reports ready.
//!
//! Web code reads the node through handles only: `Arc<NodeStatus>`, `Arc<Metrics>`, a JetStream context,
//! read-only database connections used on `spawn_blocking`, the snapshot task's handle and its
//! own handle on the snapshot store (opened lazily, for listing). It never holds the writer and
//! never depends on `node`. Nothing secret is rendered: URLs go through `redact_url`, the admin token
//! is only ever compared.

pub mod api;
mod auth;
mod chart;
mod error;
pub mod health;
mod limiter;
pub mod live;
mod pages;
pub mod recovery;
pub mod sampler;
mod server;
mod sessions;
pub mod snapshots;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{WeakToken, weak_token};
pub use error::WebError;

use crate::config::{Config, parse_bind};
use crate::db::{DbError, Reader};
use crate::hlc::now_ms;
use crate::maintenance::MaintenanceHandle;
use crate::metrics::Metrics;
use crate::nats::server::EmbeddedOptions;
use crate::status::{NodeStatus, WebAddrs};

/// The sockets of the enabled servers, bound before the node reports ready so a taken port is
/// a start-up error, not a silent gap.
#[derive(Debug, Default)]
pub struct Listeners {
    pub health: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds every enabled server's address.
    pub async fn bind(cfg: &Config) -> Result<Listeners, WebError> {
        Ok(Listeners {
            health: listen(
                cfg.health_check.enable,
                "health_check.bind",
                &cfg.health_check.bind,
            )
            .await?,
            metrics: listen(
                cfg.prometheus.enable,
                "prometheus.bind",
                &cfg.prometheus.bind,
            )
            .await?,
            admin: listen(cfg.admin.enable, "admin.bind", &cfg.admin.bind).await?,
        })
    }

    /// The bound addresses (a configured port 0 resolved).
    pub fn addrs(&self) -> WebAddrs {
        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        WebAddrs {
            health: addr(&self.health),
            metrics: addr(&self.metrics),
            admin: addr(&self.admin),
        }
    }
}

async fn listen(
    enabled: bool,
    key: &'static str,
    value: &str,
) -> Result<Option<TcpListener>, WebError> {
    if !enabled {
        return Ok(None);
    }
    let addr = parse_bind(value).map_err(|source| WebError::BadBind {
        key,
        value: value.to_owned(),
        source,
    })?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| WebError::Bind { key, addr, source })?;
    Ok(Some(listener))
}

/// What the web servers read, cheap to clone.
#[derive(Clone)]
pub struct WebState(Arc<Inner>);

struct Inner {
    cfg: Arc<Config>,
    status: Arc<NodeStatus>,
    metrics: Arc<Metrics>,
    js: jetstream::Context,
    embedded: EmbeddedOptions,
    /// Dashboard and sampler queries, on the schema tracker's connection: every connection
    /// that reads a table keeps the whole parsed schema (about 21 KB a captured table), so the
    /// occasional readers share one, and it lets the schema go when idle
    /// (`release_idle_db`).
    db: Arc<Mutex<Reader>>,
    /// When `db` was last used (ms since the epoch), and whether its schema was released since.
    db_used_ms: AtomicU64,
    db_released: AtomicBool,
    /// The health check's own connection, so a slow dashboard query never delays a probe.
    health_db: Arc<Mutex<Reader>>,
    samples: sampler::Samples,
    auth: auth::Secrets,
    /// The snapshot task, for the Snapshots page's history and "take one now".
    snapshots: std::sync::OnceLock<crate::snapshot::SnapshotHandle>,
    /// The node's maintenance requests, for the Recovery page's actions.
    maintenance: std::sync::OnceLock<MaintenanceHandle>,
    /// The Snapshots page's store handle, listing cache and action state.
    snaps: snapshots::SnapshotsState,
}

impl WebState {
    /// Connects the Snapshots page to the node's snapshot task (once).
    pub fn set_snapshots(&self, handle: crate::snapshot::SnapshotHandle) {
        let _ = self.0.snapshots.set(handle);
    }

    /// Connects the Recovery page's actions to the node (once).
    pub fn set_maintenance(&self, handle: MaintenanceHandle) {
        let _ = self.0.maintenance.set(handle);
    }

    /// The node's maintenance requests, once connected.
    pub fn maintenance(&self) -> Option<&MaintenanceHandle> {
        self.0.maintenance.get()
    }

    /// The snapshot task, when the node runs one.
    pub fn snapshots(&self) -> Option<&crate::snapshot::SnapshotHandle> {
        self.0.snapshots.get()
    }

    /// Opens the health check's read-only connection; dashboard queries run on `db` (the
    /// schema tracker's).
    pub fn new(
        cfg: Arc<Config>,
        status: Arc<NodeStatus>,
        metrics: Arc<Metrics>,
        js: jetstream::Context,
        embedded: EmbeddedOptions,
        db: Arc<Mutex<Reader>>,
    ) -> Result<WebState, WebError> {
        let health_db = Arc::new(Mutex::new(
            Reader::open(&cfg.db_path).map_err(WebError::Db)?,
        ));
        let auth = auth::Secrets::new(&cfg.admin, metrics.admin_auth_failures.clone());
        Ok(WebState(Arc::new(Inner {
            cfg,
            status,
            metrics,
            js,
            embedded,
            db,
            db_used_ms: AtomicU64::new(now_ms()),
            db_released: AtomicBool::new(false),
            health_db,
            samples: sampler::Samples::default(),
            auth,
            snapshots: std::sync::OnceLock::new(),
            maintenance: std::sync::OnceLock::new(),
            snaps: snapshots::SnapshotsState::default(),
        })))
    }

    pub fn status(&self) -> &Arc<NodeStatus> {
        &self.0.status
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    fn cfg(&self) -> &Config {
        &self.0.cfg
    }

    /// Runs `f` on the dashboard's read-only connection, on a blocking thread.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Reader) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, WebError> {
        self.0.db_used_ms.store(now_ms(), Ordering::Relaxed);
        self.0.db_released.store(false, Ordering::Relaxed);
        with_reader(self.0.db.clone(), f).await
    }

    /// Releases the dashboard connection's parsed schema once it was idle `idle` long.
    async fn release_idle_db(&self, idle: Duration) {
        let used = self.0.db_used_ms.load(Ordering::Relaxed);
        if self.0.db_released.load(Ordering::Relaxed)
            || now_ms().saturating_sub(used) < idle.as_millis() as u64
        {
            return;
        }
        self.0.db_released.store(true, Ordering::Relaxed);
        if let Err(error) = with_reader(self.0.db.clone(), |r| r.release_schema()).await {
            tracing::debug!(error = %error.describe(), "cannot release the dashboard connection's schema");
        }
    }
}

async fn with_reader<T: Send + 'static>(
    reader: Arc<Mutex<Reader>>,
    f: impl FnOnce(&mut Reader) -> Result<T, DbError> + Send + 'static,
) -> Result<T, WebError> {
    tokio::task::spawn_blocking(move || {
        // A panic while querying leaves nothing half-done in a read-only connection.
        let mut guard = reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(WebError::Join)?
    .map_err(WebError::Db)
}

/// Task body: the health check server, until cancelled.
pub async fn serve_health(
    listener: TcpListener,
    state: WebState,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    server::serve("health check", listener, health::router(state), cancel).await
}

/// Task body: the Prometheus exporter (`GET /metrics`), until cancelled.
pub async fn serve_metrics(
    listener: TcpListener,
    state: WebState,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state);
    server::serve("metrics", listener, router, cancel).await
}

/// Task body: the admin dashboard, until cancelled.
pub async fn serve_admin(
    listener: TcpListener,
    state: WebState,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    server::serve("admin dashboard", listener, pages::router(state), cancel).await
}

async fn metrics(State(state): State<WebState>) -> Result<Response, WebError> {
    let text = state
        .metrics()
        .render(&state.status().gauges())
        .map_err(WebError::Metrics)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

/// `2025-03-21T15:30:45.123Z` for a Unix time in milliseconds (UTC, proleptic Gregorian).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), valid for every u64 millisecond count we meet.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// `None` for 0 (never happened), else the RFC 3339 time.
pub fn rfc3339_opt(ms: u64) -> Option<String> {
    (ms > 0).then(|| rfc3339(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_742_571_045_123), "2025-03-21T15:30:45.123Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_opt(0), None);
    }
}
