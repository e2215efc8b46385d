//! The Snapshots page: the store's history, this node's leader state, and "take a snapshot now".
//!
//! - The store handle is opened lazily, on the first view (opening S3 checks the bucket), and
//!   kept. Listing runs one at a time under a deadline, and its result is reused briefly, so a
//!   slow store never hangs a page and open dashboards never hammer it.
//! - The action asks the node's snapshot task (`SnapshotHandle::take_now`) from a short-lived
//!   task that records progress and the outcome here; one request at a time per node.
//! - Nothing secret is shown: store descriptions and errors are built without credentials by
//!   `snapshot::store`, and every message shown here is also scrubbed of each configured secret.
//!   When snapshots are disabled the store is never opened (it could create a bucket).
//! - With `[snapshot] signing_key` set, snapshots whose signature is missing or wrong are
//!   listed too, marked refused with why (the page is their report; the restore and the leader
//!   log and count them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use super::{WebError, WebState, rfc3339};
use crate::config::Config;
use crate::hlc::now_ms;
use crate::snapshot::history::{self, Listed};
use crate::snapshot::service::ProgressFn;
use crate::snapshot::store::Store;

/// Opening and listing the store past this is reported as an error on the page.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one listing serves every view (a snapshot taken here invalidates it at once).
const LISTING_TTL: Duration = Duration::from_secs(5);
/// Characters of the schema hash shown in the history.
const SHORT_HASH: usize = 12;

pub const DISABLED: &str = "snapshots are disabled on this node (snapshot.enabled = false)";
pub const NO_TASK: &str = "the snapshot task is not running on this node";
pub const BUSY: &str = "a snapshot requested from this dashboard is still running";

/// The page's shared state, one per node.
#[derive(Default)]
pub struct SnapshotsState {
    store: tokio::sync::OnceCell<Store>,
    /// Held while listing: one listing at a time, whose result the others then reuse.
    listing: tokio::sync::Mutex<Option<Listing>>,
    /// Bumped when a snapshot taken here finishes, so the next view lists afresh.
    generation: AtomicU64,
    run: Mutex<Run>,
}

#[derive(Clone)]
struct Listing {
    at: Instant,
    at_ms: u64,
    generation: u64,
    result: Result<Vec<Listed>, String>,
}

/// The action's state machine: idle → running (phase, progress) → idle with a last result.
#[derive(Debug, Default)]
struct Run {
    running: Option<Running>,
    last: Option<LastView>,
}

#[derive(Debug, Clone)]
struct Running {
    phase: String,
    done: u64,
    total: u64,
    started_ms: u64,
}

impl SnapshotsState {
    fn run(&self) -> std::sync::MutexGuard<'_, Run> {
        // The guarded values stay consistent even if a holder panicked.
        self.run.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a snapshot as started; refuses while one is running.
    fn begin(&self) -> Result<(), WebError> {
        let mut run = self.run();
        if run.running.is_some() {
            return Err(WebError::Conflict(BUSY));
        }
        run.running = Some(Running {
            phase: "queued".to_owned(),
            done: 0,
            total: 0,
            started_ms: now_ms(),
        });
        Ok(())
    }

    fn progress(&self, phase: &str, done: u64, total: u64) {
        if let Some(r) = self.run().running.as_mut() {
            if r.phase != phase {
                r.phase = phase.to_owned();
            }
            (r.done, r.total) = (done, total);
        }
    }

    /// Records the outcome (`message` already scrubbed) and ends the running state.
    fn finish(&self, result: Result<String, String>) {
        let last = match result {
            Ok(id) => LastView {
                ok: true,
                message: format!("Snapshot {id} uploaded"),
                id: Some(id),
                at: rfc3339(now_ms()),
            },
            Err(message) => LastView {
                ok: false,
                message: format!("Snapshot failed: {message}"),
                id: None,
                at: rfc3339(now_ms()),
            },
        };
        let mut run = self.run();
        run.running = None;
        run.last = Some(last);
        drop(run);
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    fn running_view(&self) -> (Option<RunningView>, Option<LastView>) {
        let run = self.run();
        (
            run.running.as_ref().map(RunningView::from),
            run.last.clone(),
        )
    }

    /// The store's snapshots, from a listing at most `LISTING_TTL` old.
    async fn listing(&self, cfg: &Config, js: &async_nats::jetstream::Context) -> Listing {
        let generation = self.generation.load(Ordering::Relaxed);
        let fetch = async {
            let mut slot = self.listing.lock().await;
            if let Some(l) = slot.as_ref()
                && l.generation == generation
                && l.at.elapsed() < LISTING_TTL
            {
                return l.clone();
            }
            let result = async {
                let store = self
                    .store
                    .get_or_try_init(|| Store::open(cfg, Some(js)))
                    .await
                    .map_err(|e| e.to_string())?;
                history::list_checked(store)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            let fresh = Listing {
                at: Instant::now(),
                at_ms: now_ms(),
                generation,
                result,
            };
            *slot = Some(fresh.clone());
            fresh
        };
        match tokio::time::timeout(LIST_TIMEOUT, fetch).await {
            Ok(listing) => listing,
            Err(_) => Listing {
                at: Instant::now(),
                at_ms: now_ms(),
                generation,
                result: Err(format!(
                    "the snapshot store did not answer within {} s",
                    LIST_TIMEOUT.as_secs()
                )),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotsView {
    /// `snapshot.enabled`.
    pub enabled: bool,
    /// The node runs a snapshot task the action can ask.
    pub available: bool,
    pub message: &'static str,
    /// The store (kind and location, never credentials); its kind until it was opened.
    pub store: String,
    /// This node holds the snapshot leader lease (takes the scheduled snapshots).
    pub leader: bool,
    /// Newest first, refused ones included (marked).
    pub history: Vec<SnapshotRow>,
    /// Snapshots in `history` refused as not authentic.
    pub refused: usize,
    /// Why the store could not be listed, on the last try.
    pub store_error: Option<String>,
    pub listed_at: Option<String>,
    /// A snapshot this node is taking on the dashboard's request.
    pub running: Option<RunningView>,
    /// The outcome of the last request from the dashboard.
    pub last: Option<LastView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRow {
    pub id: String,
    pub node_id: u64,
    pub this_node: bool,
    pub created_ms: u64,
    pub created: String,
    pub size: u64,
    pub size_human: String,
    pub raw_size: u64,
    pub raw_size_human: String,
    pub sha256: String,
    pub schema_hash: String,
    pub schema_hash_short: String,
    /// Stream → last sequence the snapshot covers.
    pub sequences: BTreeMap<String, u64>,
    /// `stream: seq, …`, for the page.
    pub sequences_text: String,
    pub harmonylite_version: String,
    /// Id of the key that signed it, as its manifest says.
    pub signed_by: Option<String>,
    /// Why it is refused as not authentic (`[snapshot] signing_key` set); never restored.
    pub refused: Option<String>,
    /// `signed (key …)`, `unsigned`, or `refused: …`, for the page.
    pub authenticity: String,
}

impl SnapshotRow {
    fn new(listed: Listed, this_node: u64) -> SnapshotRow {
        let signed_by = listed.signed_by().map(str::to_owned);
        let refused = listed.refused.map(|r| r.to_string());
        let authenticity = match (&refused, &signed_by) {
            (Some(why), _) => format!("refused: {why}"),
            (None, Some(key)) => format!("signed (key {key})"),
            (None, None) => "unsigned".to_owned(),
        };
        let m = listed.manifest;
        let sequences_text = m
            .sequences
            .iter()
            .map(|(stream, seq)| format!("{stream}: {seq}"))
            .collect::<Vec<_>>()
            .join(", ");
        SnapshotRow {
            this_node: m.node_id == this_node,
            created: rfc3339(m.created_ms),
            size_human: human_bytes(m.size),
            raw_size_human: human_bytes(m.raw_size),
            schema_hash_short: m.schema_hash.chars().take(SHORT_HASH).collect(),
            sequences_text,
            id: m.id,
            node_id: m.node_id,
            created_ms: m.created_ms,
            size: m.size,
            raw_size: m.raw_size,
            sha256: m.sha256,
            schema_hash: m.schema_hash,
            sequences: m.sequences,
            harmonylite_version: m.harmonylite_version,
            signed_by,
            refused,
            authenticity,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunningView {
    /// `queued` (waiting for the snapshot task), `copy`, `upload`.
    pub phase: String,
    pub done: u64,
    pub total: u64,
    pub percent: u64,
    pub started: String,
    /// One line for the page.
    pub text: String,
}

impl From<&Running> for RunningView {
    fn from(r: &Running) -> RunningView {
        let percent = (r.done.min(r.total) * 100)
            .checked_div(r.total)
            .unwrap_or(0);
        let text = match r.phase.as_str() {
            "queued" => "Taking a snapshot: waiting for the snapshot task".to_owned(),
            "copy" => "Taking a snapshot: copying the database".to_owned(),
            "upload" => format!(
                "Taking a snapshot: uploading, {percent} % ({} of {})",
                human_bytes(r.done),
                human_bytes(r.total)
            ),
            other => format!("Taking a snapshot: {other}, {percent} %"),
        };
        RunningView {
            phase: r.phase.clone(),
            done: r.done,
            total: r.total,
            percent,
            started: rfc3339(r.started_ms),
            text,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LastView {
    pub ok: bool,
    /// `Snapshot <id> uploaded` or `Snapshot failed: <why>`.
    pub message: String,
    pub id: Option<String>,
    pub at: String,
}

/// The page's data. Lists the store (cached, under `LIST_TIMEOUT`) only when snapshots are on.
pub async fn view(state: &WebState) -> SnapshotsView {
    let cfg = state.cfg();
    let snaps = &state.0.snaps;
    let (running, last) = snaps.running_view();
    let mut view = SnapshotsView {
        enabled: cfg.snapshot.enabled,
        available: state.snapshots().is_some(),
        message: if cfg.snapshot.enabled {
            "Snapshots are enabled."
        } else {
            "Snapshots are disabled on this node (snapshot.enabled = false in the configuration)."
        },
        store: format!("{:?}", cfg.snapshot.store).to_lowercase(),
        leader: state.snapshots().is_some_and(|h| h.is_leader()),
        history: Vec::new(),
        refused: 0,
        store_error: None,
        listed_at: None,
        running,
        last,
    };
    if !cfg.snapshot.enabled {
        return view;
    }
    let listing = snaps.listing(cfg, &state.0.js).await;
    if let Some(store) = snaps.store.get() {
        view.store = scrub(cfg, store.describe());
    }
    view.listed_at = Some(rfc3339(listing.at_ms));
    let node = state.status().node_id.0;
    match listing.result {
        Ok(list) => {
            view.history = list
                .into_iter()
                .map(|l| SnapshotRow::new(l, node))
                .collect();
            view.refused = view.history.iter().filter(|r| r.refused.is_some()).count();
        }
        Err(e) => view.store_error = Some(scrub(cfg, &e)),
    }
    view
}

/// The snapshot task to ask, when the action may start at all.
fn startable<H>(enabled: bool, task: Option<H>) -> Result<H, WebError> {
    if !enabled {
        return Err(WebError::Unavailable(DISABLED));
    }
    task.ok_or(WebError::Unavailable(NO_TASK))
}

/// Starts a snapshot in the background (the caller authorized the request).
pub fn start(state: &WebState) -> Result<(), WebError> {
    let handle = startable(state.cfg().snapshot.enabled, state.snapshots().cloned())?;
    state.0.snaps.begin()?;
    info!("snapshot requested from the dashboard");
    let for_progress = state.clone();
    let progress: ProgressFn = Arc::new(move |phase: &str, done: u64, total: u64| {
        for_progress.0.snaps.progress(phase, done, total);
    });
    let state = state.clone();
    // Bare spawn: the work happens in the node's snapshot task; this one only waits for its
    // answer, and ends with it (or when that task stops and drops the reply).
    tokio::spawn(async move {
        let result = match handle.take_now(Some(progress)).await {
            Ok(m) => Ok(m.id),
            Err(error) => {
                let message = scrub(state.cfg(), &format!("{error:#}"));
                warn!(error = %message, "snapshot requested from the dashboard failed");
                Err(message)
            }
        };
        state.0.snaps.finish(result);
    });
    Ok(())
}

/// `12.3 MiB (binary units)`; bytes below 1 KiB as `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Replaces every configured secret (as written, and percent-decoded) in `text` with `***`.
/// The store code already leaves credentials out of its messages; this is the second line.
pub fn scrub(cfg: &Config, text: &str) -> String {
    let snap = &cfg.snapshot;
    let mut secrets: Vec<String> = vec![
        snap.s3.secret.expose().clone(),
        snap.s3.session_token.expose().clone(),
        cfg.nats.user_password.expose().clone(),
        cfg.admin.auth_token.expose().clone(),
    ];
    secrets.extend(snap.signing_key.expose().keys().iter().cloned());
    for url in [snap.webdav.url.expose(), snap.sftp.url.expose()] {
        let Ok(parsed) = url::Url::parse(url) else {
            // Unparseable: the whole value may be a secret.
            secrets.push(url.clone());
            continue;
        };
        secrets.extend(parsed.password().map(str::to_owned));
        // As written: the decoded forms are added below.
        secrets.extend(
            parsed
                .query()
                .unwrap_or_default()
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .filter(|(k, _)| *k == "secret" || *k == "password")
                .map(|(_, v)| v.to_owned()),
        );
    }
    let decoded: Vec<String> = secrets
        .iter()
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    secrets.extend(decoded);
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;
    use crate::config::Secret;

    #[test]
    fn one_request_at_a_time() {
        let s = SnapshotsState::default();
        assert!(s.running_view().0.is_none());
        s.begin().unwrap();
        let second = s.begin().unwrap_err();
        assert_eq!(second.status(), StatusCode::CONFLICT);
        assert_eq!(s.running_view().0.unwrap().phase, "queued");
        s.progress("upload", 512, 2048);
        let running = s.running_view().0.unwrap();
        assert_eq!((running.phase.as_str(), running.percent), ("upload", 25));
        assert!(running.text.contains("25 %"), "{}", running.text);
        let before = s.generation.load(Ordering::Relaxed);
        s.finish(Ok("20261126T114000000Z-1".to_owned()));
        let (running, last) = s.running_view();
        assert!(running.is_none());
        let last = last.unwrap();
        assert!(last.ok);
        assert_eq!(last.message, "Snapshot 20261126T114000000Z-1 uploaded");
        assert_eq!(s.generation.load(Ordering::Relaxed), before + 1);
        // Idle again: the next request starts; a failure is kept as the last result.
        s.begin().unwrap();
        s.finish(Err("store down".to_owned()));
        let last = s.running_view().1.unwrap();
        assert!(!last.ok && last.message.contains("store down"));
        // Progress after the end changes nothing.
        s.progress("upload", 1, 1);
        assert!(s.running_view().0.is_none());
    }

    #[test]
    fn disabled_or_missing_task_is_unavailable() {
        assert!(startable(true, Some(())).is_ok());
        let disabled = startable(false, Some(())).unwrap_err();
        assert_eq!(disabled.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(disabled.describe().contains("snapshot.enabled = false"));
        let no_task = startable::<()>(true, None).unwrap_err();
        assert_eq!(no_task.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(no_task.describe().contains("not running"));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn percent_of_nothing_is_zero() {
        let r = Running {
            phase: "copy".to_owned(),
            done: 0,
            total: 0,
            started_ms: 0,
        };
        assert_eq!(RunningView::from(&r).percent, 0);
    }

    #[test]
    fn messages_lose_every_configured_secret() {
        let mut cfg = Config::default();
        cfg.snapshot.s3.secret = Secret::new("s3-SECRET-key".to_owned());
        cfg.snapshot.webdav.url =
            Secret::new("https://dav.example/x?dir=/s&login=bob&secret=p%40ss-dav".to_owned());
        cfg.snapshot.sftp.url = Secret::new("sftp://me:sftp-pw@host/dir".to_owned());
        cfg.admin.auth_token = Secret::new("adm-tok".to_owned());
        let key = "snapshot-signing-key-0123456789abcdef".to_owned();
        cfg.snapshot.signing_key = Secret::new(crate::config::KeyList::new(vec![key]));
        let text = "cannot list: s3-SECRET-key p%40ss-dav p@ss-dav sftp-pw adm-tok bob \
                    snapshot-signing-key-0123456789abcdef";
        assert_eq!(
            scrub(&cfg, text),
            "cannot list: *** *** *** *** *** bob ***"
        );
        assert_eq!(scrub(&Config::default(), "plain"), "plain");
    }
}
