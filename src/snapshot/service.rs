//! The snapshot task: holds the leader lease and, while leading, takes a snapshot when one is
//! due — every `interval`, and whenever a shard's stream grew by half of `max_entries` since the
//! newest snapshot (so the stream is never trimmed past it). A failed snapshot is retried with
//! backoff. Requests from `-save-snapshot`, the dashboard and `sleep_timeout` go through a
//! `SnapshotHandle` and are served whether or not this node leads.
//!
//! A node with a gap never leads. With no leader at all, though, it answers another node's
//! request for a snapshot when its floors cover every stream the request names: otherwise a
//! cluster where every node has a gap, each on another stream, would wait forever. Such a
//! snapshot's floors are honest, and the requester merges it (`db::merge`), so the streams it
//! does not cover take nothing away (`docs/decisions/014-restores-merge.md`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::history::Listed;
use super::leader::Lease;
use super::retry::Retry;
use super::store::Store;
use super::{Manifest, SnapshotError, create, history, work_dir};
use crate::config::Config;
use crate::db::WriterHandle;
use crate::error::Chain;
use crate::hlc::now_ms;
use crate::ids::ShardId;
use crate::metrics::Metrics;
use crate::sql::internal::STATE_GAP_ACCEPTED;
use crate::status::NodeStatus;

/// Progress of a requested snapshot: (phase, done, total).
pub type ProgressFn = Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// `inner`, called only when the phase or the tenth done changes (uploads report every chunk).
pub fn by_tenths(inner: ProgressFn) -> ProgressFn {
    let last = std::sync::Mutex::new((String::new(), u64::MAX));
    Arc::new(move |phase: &str, done: u64, total: u64| {
        let tenth = done.saturating_mul(10) / total.max(1);
        {
            let Ok(mut last) = last.lock() else { return };
            if last.0 == phase && last.1 == tenth {
                return;
            }
            *last = (phase.to_owned(), tenth);
        }
        inner(phase, done, total);
    })
}

/// How often every node reads the newest snapshot's time from the store (a gauge).
const WATCH_NEWEST_EVERY: Duration = Duration::from_secs(60);
/// Least time between two snapshots triggered by stream growth.
const GROWTH_MIN_GAP: Duration = Duration::from_secs(2);
/// How often stream sizes are read while leading.
const GROWTH_CHECK: Duration = Duration::from_secs(2);

struct Request {
    progress: Option<ProgressFn>,
    reply: oneshot::Sender<Result<Manifest, String>>,
}

/// Asks the snapshot task for a snapshot now.
#[derive(Clone)]
pub struct SnapshotHandle {
    tx: mpsc::Sender<Request>,
    status: Arc<NodeStatus>,
}

impl SnapshotHandle {
    /// Takes and uploads a snapshot now (leader or not); returns its manifest.
    pub async fn take_now(&self, progress: Option<ProgressFn>) -> anyhow::Result<Manifest> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { progress, reply })
            .await
            .map_err(|_| anyhow::anyhow!("the snapshot task is not running"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the snapshot task stopped"))?
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// Whether this node holds the snapshot leader lease.
    pub fn is_leader(&self) -> bool {
        self.status.snapshot_leader.load(Ordering::Relaxed)
    }
}

pub struct Snapshotter {
    cfg: Arc<Config>,
    js: jetstream::Context,
    status: Arc<NodeStatus>,
    metrics: Arc<Metrics>,
    writer: WriterHandle,
    /// Whether this node may lead, and when that was last checked.
    eligible: Option<(bool, Instant)>,
    lease: Lease,
    store: Option<Store>,
    requests: mpsc::Receiver<Request>,
    /// The newest snapshot in the store, once known.
    newest: Option<Manifest>,
    /// Whether `newest` was read from the store since this node became leader.
    newest_loaded: bool,
    leading_since: Option<Instant>,
    /// When a failed snapshot is tried again.
    retry: Retry,
    last_growth_check: Option<Instant>,
    last_growth_snapshot: Option<Instant>,
}

impl Snapshotter {
    pub fn new(
        cfg: Arc<Config>,
        js: jetstream::Context,
        status: Arc<NodeStatus>,
        metrics: Arc<Metrics>,
        writer: WriterHandle,
    ) -> (Snapshotter, SnapshotHandle) {
        let (tx, requests) = mpsc::channel(4);
        let lease = Lease::new(
            js.clone(),
            status.node_id,
            cfg.snapshot_leader_ttl(),
            cfg.replicas(),
        );
        let handle = SnapshotHandle {
            tx,
            status: status.clone(),
        };
        let snapshotter = Snapshotter {
            cfg,
            js,
            status,
            metrics,
            writer,
            eligible: None,
            lease,
            store: None,
            requests,
            newest: None,
            newest_loaded: false,
            leading_since: None,
            retry: Retry::new(),
            last_growth_check: None,
            last_growth_snapshot: None,
        };
        (snapshotter, handle)
    }

    /// Task body.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let enabled = self.cfg.snapshot.enabled;
        self.metrics
            .set_snapshot_interval(self.cfg.snapshot_interval().filter(|_| enabled));
        let mut watch = tokio::time::interval(WATCH_NEWEST_EVERY);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wait = self.lease.tick_interval();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = watch.tick(), if enabled => self.watch_newest().await,
                request = self.requests.recv() => {
                    let Some(request) = request else { break };
                    let result = self.snapshot(request.progress.as_ref()).await;
                    let _ = request.reply.send(result.map_err(|e| Chain(&e).to_string()));
                }
                _ = tokio::time::sleep(wait) => {
                    if self.cfg.snapshot.enabled {
                        self.lead().await;
                    }
                }
            }
        }
        self.lease.release().await;
        self.status.snapshot_leader.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Exports the newest authentic snapshot's time, on every node (alert rules compare it
    /// with the interval). The leader already knows it; the others read the store's history.
    async fn watch_newest(&mut self) {
        if self.newest_loaded {
            let created = self.newest.as_ref().map_or(0, |m| m.created_ms);
            self.metrics.set_newest_snapshot(created);
            return;
        }
        let listed = match self.store().await {
            Ok(store) => history::list(store).await,
            Err(error) => Err(error),
        };
        match listed {
            Ok(list) => {
                let newest = list.iter().map(|m| m.created_ms).max().unwrap_or(0);
                self.metrics.set_newest_snapshot(newest);
            }
            // The leader and restores report store trouble; this is only a gauge.
            Err(error) => debug!(error = %Chain(&error), "cannot read the snapshot history"),
        }
    }

    /// One lease round; takes a snapshot when leading and one is due.
    async fn lead(&mut self) {
        if !self.eligible().await {
            if self.lease.is_leader() {
                self.lease.release().await;
            }
            self.status.snapshot_leader.store(false, Ordering::Relaxed);
            self.leading_since = None;
            self.newest_loaded = false;
            self.cover_without_a_leader().await;
            return;
        }
        let leader = self.lease.tick().await;
        self.status.snapshot_leader.store(leader, Ordering::Relaxed);
        if !leader {
            self.leading_since = None;
            self.newest_loaded = false;
            return;
        }
        self.leading_since.get_or_insert_with(Instant::now);
        if !self.due().await {
            return;
        }
        match self.snapshot(None).await {
            Ok(_) => self.retry.succeeded(),
            Err(error) => self.back_off(&error).await,
        }
    }

    /// With no leader, answers a standing request this node can cover although a gap of its
    /// own keeps it from leading: every stream the request names has no gap here and a floor
    /// that reaches what the requester lacks, and no snapshot in the store is newer than the
    /// request.
    async fn cover_without_a_leader(&mut self) {
        let facts = self.status.recovery.facts();
        if facts.gaps.is_empty()
            || facts.waiting_for_snapshot.is_some()
            || catching_up(&self.status).is_some()
            || self.lease.leader_present().await != Some(false)
        {
            return;
        }
        let Some(request) = self.lease.requested().await else {
            return;
        };
        if request.node_id == self.status.node_id.0 || request.covers.is_empty() {
            return;
        }
        let Ok(floors) = self.writer.floors().await else {
            return;
        };
        let covered = request.covers.iter().all(|(stream, last)| {
            !facts.gaps.iter().any(|g| &g.stream == stream)
                && floors.get(stream).is_some_and(|f| f.0 >= *last)
        });
        if !covered
            || self.held_back(true).await
            || !matches!(self.writer.state(STATE_GAP_ACCEPTED).await, Ok(None))
            || self
                .newest_in_store()
                .await
                .is_none_or(|n| n >= request.at_ms)
        {
            return;
        }
        info!(
            for_node = request.node_id,
            covers = ?request.covers,
            "no snapshot leader, and every node lacks something: this node has a gap elsewhere \
             but holds what the requester misses; taking a snapshot for it"
        );
        match self.snapshot_covering(None, Some(&request.covers)).await {
            Ok(_) => self.retry.succeeded(),
            Err(error) => self.back_off(&error).await,
        }
    }

    /// The creation time of the newest snapshot in the store (0: none); `None` when the store
    /// cannot be read.
    async fn newest_in_store(&mut self) -> Option<u64> {
        let store = self.store().await.ok()?;
        let list = history::list(store).await.ok()?;
        Some(list.iter().map(|m| m.created_ms).max().unwrap_or(0))
    }

    /// Logs a failure and schedules the next attempt (`retry`). Whether the store takes a
    /// small write right after tells an outage (which ends the wait early once it takes one
    /// again) from a failure that would recur.
    async fn back_off(&mut self, error: &SnapshotError) {
        let store_down = !self.store_writable().await;
        let wait = self.retry.failed(store_down);
        error!(error = %Chain(error), retry_in_s = wait.as_secs(), "snapshot failed");
    }

    /// Whether the wait after a failed snapshot still holds the next one back; while a node
    /// waits for one (`requested`), not once the store takes writes again after an outage.
    async fn held_back(&mut self, requested: bool) -> bool {
        if !self.retry.waiting() {
            return false;
        }
        if !self.retry.probe_due(requested) {
            return true;
        }
        let remaining = self.retry.remaining();
        let answers = self.store_writable().await;
        if !self.retry.probed(answers) {
            return true;
        }
        info!(
            retry_was_in_s = remaining.as_secs(),
            "the snapshot store takes writes again and a node waits for a snapshot: trying now"
        );
        false
    }

    /// Whether the store takes a small write.
    async fn store_writable(&mut self) -> bool {
        match self.store().await {
            Ok(store) => history::writable(store).await,
            Err(_) => false,
        }
    }

    /// A node may lead only if its database is a sound source: it never skipped part of a
    /// stream, and it is within half of `max_entries` of every stream's end (a lagging leader's
    /// snapshots would not cover what the streams have already dropped). Checked every
    /// `GROWTH_CHECK`; a node that stops qualifying gives the lease up. A node that is catching
    /// up (restoring, or a consumer that has not yet compared its floor with its stream) is
    /// refused at once, whatever an earlier check found.
    async fn eligible(&mut self) -> bool {
        let problem = match catching_up(&self.status) {
            Some(why) => Some(why),
            None if self
                .eligible
                .is_some_and(|(_, at)| at.elapsed() < GROWTH_CHECK) =>
            {
                return self.eligible.is_some_and(|(ok, _)| ok);
            }
            None => self.source_problem().await,
        };
        let ok = match problem {
            None => true,
            Some(why) => {
                if self.eligible.is_none_or(|(was, _)| was) {
                    warn!(reason = %why, "not taking snapshots for now");
                }
                false
            }
        };
        self.eligible = Some((ok, Instant::now()));
        ok
    }

    /// Why this node's database should not be snapshotted now, if it should not (the checks
    /// that read the database and the streams).
    async fn source_problem(&self) -> Option<String> {
        let recovery = self.status.recovery.facts();
        if let Some(gap) = recovery.gaps.first() {
            return Some(format!(
                "this node misses {}..={} of {} (a gap); it cannot speak for the cluster",
                gap.first_missing, gap.last_missing, gap.stream
            ));
        }
        if let Some(why) = recovery.waiting_for_snapshot {
            return Some(format!("this node waits for a snapshot itself: {why}"));
        }
        match self.writer.state(STATE_GAP_ACCEPTED).await {
            Ok(Some(gap)) => {
                return Some(format!(
                    "this node went on past a gap ({gap}); restore it from a snapshot first"
                ));
            }
            Ok(None) => {}
            Err(e) => return Some(format!("cannot read the database: {}", Chain(&e))),
        }
        let floors = match self.writer.floors().await {
            Ok(floors) => floors,
            Err(e) => return Some(format!("cannot read stream floors: {}", Chain(&e))),
        };
        let allowed = (self.cfg.replication_log.max_entries.max(0) as u64 / 2).max(1);
        for n in 0..self.cfg.replication_log.shards {
            let name = self.cfg.stream_name(ShardId(n));
            let Ok(mut stream) = self.js.get_stream(&name).await else {
                return Some(format!("stream {name} is unavailable"));
            };
            let Ok(info) = stream.info().await else {
                return Some(format!("stream {name} is unavailable"));
            };
            let at = floors.get(&name).map_or(0, |s| s.0);
            let behind = info.state.last_sequence.saturating_sub(at);
            if behind > allowed {
                return Some(format!("{behind} messages behind on {name}"));
            }
        }
        None
    }

    async fn due(&mut self) -> bool {
        if self.retry.after_failure() {
            let newest = self.newest.as_ref().map_or(0, |m| m.created_ms);
            // The request (a KV read) matters only when the store may be asked.
            let requested = self.retry.may_probe()
                && self
                    .lease
                    .requested()
                    .await
                    .is_some_and(|r| r.at_ms > newest);
            return !self.held_back(requested).await;
        }
        if !self.newest_loaded {
            let listed = match self.store().await {
                Ok(store) => history::candidates(store).await,
                Err(error) => Err(error),
            };
            match listed {
                Ok(list) => {
                    let refused = self.report_refused(&list);
                    let authentic = list.len() - refused;
                    self.newest = list
                        .into_iter()
                        .find(|l| l.refused.is_none())
                        .map(|l| l.manifest);
                    self.newest_loaded = true;
                    if authentic == 0 && refused > 0 {
                        info!(
                            refused,
                            "no snapshot in the store is signed with this node's keys; taking one"
                        );
                        return true;
                    }
                }
                Err(error) => {
                    // A store that cannot be reached is a failed snapshot: counted, and tried
                    // again with backoff (or as soon as it answers, when a node waits).
                    self.metrics.snapshot_failures.inc();
                    self.back_off(&error).await;
                    return false;
                }
            }
        }
        if let Some(request) = self.lease.requested().await {
            let newest = self.newest.as_ref().map_or(0, |m| m.created_ms);
            if request.at_ms > newest {
                info!(
                    from_node = request.node_id,
                    reason = %request.reason,
                    "a node asked for a snapshot"
                );
                return true;
            }
        }
        if let Some(interval) = self.cfg.snapshot_interval() {
            let since = match &self.newest {
                Some(m) => Duration::from_millis(now_ms().saturating_sub(m.created_ms)),
                None => self.leading_since.map_or(Duration::ZERO, |t| t.elapsed()),
            };
            if since >= interval {
                return true;
            }
        }
        self.grown().await
    }

    /// Logs and counts the snapshots of a listing that are not authentic; returns how many.
    /// Called once per leadership, when the newest snapshot is first read.
    fn report_refused(&self, list: &[Listed]) -> usize {
        let mut refused = 0;
        for l in list {
            if let Some(reason) = &l.refused {
                warn!(
                    id = %l.manifest.id,
                    from_node = l.manifest.node_id,
                    error = %reason,
                    "snapshot in the store refused as not authentic; it is never restored"
                );
                self.metrics
                    .snapshot_refused
                    .with_label_values(&[reason.kind()])
                    .inc();
                refused += 1;
            }
        }
        refused
    }

    /// Whether some stream grew by half of `max_entries` since the newest snapshot.
    async fn grown(&mut self) -> bool {
        if self
            .last_growth_check
            .is_some_and(|t| t.elapsed() < GROWTH_CHECK)
            || self
                .last_growth_snapshot
                .is_some_and(|t| t.elapsed() < GROWTH_MIN_GAP)
        {
            return false;
        }
        self.last_growth_check = Some(Instant::now());
        let threshold = (self.cfg.replication_log.max_entries.max(0) as u64 / 2).max(1);
        for n in 0..self.cfg.replication_log.shards {
            let name = self.cfg.stream_name(ShardId(n));
            let Ok(mut stream) = self.js.get_stream(&name).await else {
                continue;
            };
            let Ok(info) = stream.info().await else {
                continue;
            };
            let covered = self
                .newest
                .as_ref()
                .and_then(|m| m.sequences.get(&name).copied())
                .unwrap_or(0);
            if info.state.last_sequence.saturating_sub(covered) >= threshold {
                info!(
                    stream = %name,
                    last = info.state.last_sequence,
                    covered,
                    "stream grew by half of max_entries since the newest snapshot"
                );
                self.last_growth_snapshot = Some(Instant::now());
                return true;
            }
        }
        false
    }

    async fn store(&mut self) -> Result<&Store, SnapshotError> {
        if self.store.is_none() {
            self.store = Some(Store::open(&self.cfg, Some(&self.js)).await?);
        }
        // Just filled when it was empty.
        self.store
            .as_ref()
            .ok_or_else(|| SnapshotError::Task("store not open".to_owned()))
    }

    /// Takes, uploads and prunes one snapshot.
    async fn snapshot(&mut self, progress: Option<&ProgressFn>) -> Result<Manifest, SnapshotError> {
        self.snapshot_covering(progress, None).await
    }

    /// A snapshot for the cluster (`covering`: `None`), or one that only has to cover these
    /// streams for a requester (this node may have gaps on others).
    async fn snapshot_covering(
        &mut self,
        progress: Option<&ProgressFn>,
        covering: Option<&[(String, u64)]>,
    ) -> Result<Manifest, SnapshotError> {
        let started = Instant::now();
        let result = self.snapshot_inner(progress, covering).await;
        match &result {
            Ok(m) => {
                self.metrics.observe_snapshot(started.elapsed(), m.size);
                self.metrics.set_newest_snapshot(m.created_ms);
                self.newest = Some(m.clone());
                self.newest_loaded = true;
            }
            Err(_) => self.metrics.snapshot_failures.inc(),
        }
        result
    }

    async fn snapshot_inner(
        &mut self,
        progress: Option<&ProgressFn>,
        covering: Option<&[(String, u64)]>,
    ) -> Result<Manifest, SnapshotError> {
        let recovery = self.status.recovery.facts();
        let lacks = match covering {
            None => recovery.lacks_data(),
            Some(streams) => {
                recovery.waiting_for_snapshot.is_some()
                    || recovery
                        .gaps
                        .iter()
                        .any(|g| streams.iter().any(|(s, _)| *s == g.stream))
            }
        };
        if lacks {
            return Err(SnapshotError::Task(
                "this node lacks data (an open gap, or a new database waiting for its snapshot): \
                 its snapshot would not speak for the cluster"
                    .to_owned(),
            ));
        }
        if let Ok(Some(gap)) = self.writer.state(STATE_GAP_ACCEPTED).await {
            return Err(SnapshotError::Task(format!(
                "this node went on past a gap ({gap}), so its database may miss changes; restore it from a snapshot first"
            )));
        }
        // The store first: when it is down, copying the database would be wasted work.
        self.store().await?;
        let (db, dir) = (self.cfg.db_path.clone(), work_dir(&self.cfg));
        let (node, ignore) = (self.status.node_id, self.cfg.sharding.ignore_tables.clone());
        if let Some(p) = progress {
            p("copy", 0, 1);
        }
        let taken =
            tokio::task::spawn_blocking(move || create::take(&db, &dir, node, &ignore, now_ms()))
                .await
                .map_err(|e| SnapshotError::Task(e.to_string()))??;
        let max_bytes = self.cfg.snapshot.max_size_bytes();
        if taken.manifest.raw_size > max_bytes || taken.manifest.size > max_bytes {
            create::remove_quietly(&taken.file);
            // Every node would refuse it: better said here, by the node that can act on it.
            return Err(SnapshotError::TooLarge {
                id: taken.manifest.id.clone(),
                size: taken.manifest.size,
                raw_size: taken.manifest.raw_size,
                limit_mb: self.cfg.snapshot.max_size_mb,
            });
        }
        let keep = self.cfg.snapshot.keep as usize;
        let store = match self.store().await {
            Ok(store) => store,
            Err(e) => {
                create::remove_quietly(&taken.file);
                return Err(e);
            }
        };
        let describe = store.describe().to_owned();
        let report = |done: u64, total: u64| {
            if let Some(p) = progress {
                p("upload", done, total);
            }
        };
        let uploaded = history::publish(store, &taken, &report).await;
        create::remove_quietly(&taken.file);
        let m = uploaded?;
        // A snapshot that covers only some streams pushes no complete one out of the store.
        if covering.is_none()
            && let Err(error) = history::prune(store, keep, &m.id).await
        {
            warn!(store = %describe, error = %Chain(&error), "cannot prune old snapshots");
        }
        info!(
            store = %describe,
            id = %m.id,
            size = m.size,
            raw_size = m.raw_size,
            sequences = ?m.sequences,
            "snapshot uploaded"
        );
        Ok(m)
    }
}

/// Why this node is still catching up, if it is: a restore is under way, or a consumer has not
/// yet compared its floor with its stream (right after a start or a restore, before a gap it
/// has would be known). Such a node never speaks for the cluster.
fn catching_up(status: &NodeStatus) -> Option<String> {
    if status.restoring.load(Ordering::Relaxed) {
        return Some("this node is restoring a snapshot".to_owned());
    }
    let unchecked = status.unchecked_lanes();
    let lane = unchecked.first()?;
    Some(format!(
        "shard {lane} has not yet compared its position with the stream (catching up)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Lane, NodeId};

    #[test]
    fn a_node_catching_up_never_leads() {
        let status = NodeStatus::new(NodeId(1));
        assert_eq!(catching_up(&status), None, "no consumers expected yet");
        let lanes = [Lane::Native(ShardId(0)), Lane::Native(ShardId(1))];
        status.expect_consumers(&lanes);
        assert!(catching_up(&status).is_some_and(|why| why.contains("compared")));
        status.set_position_checked(lanes[0]);
        assert!(
            catching_up(&status).is_some(),
            "one shard is still unchecked"
        );
        status.set_position_checked(lanes[1]);
        assert_eq!(catching_up(&status), None);
        status.restoring.store(true, Ordering::Relaxed);
        assert!(catching_up(&status).is_some_and(|why| why.contains("restoring")));
    }
}
