//! Keeping the local schema hash current: at start, within a second of any DDL (a
//! `PRAGMA schema_version` poll; the publisher also asks as soon as a scan sees a new version),
//! and on every `schema.recheck_interval_ms`.
//!
//! A refresh re-installs capture through the writer (triggers and clock tables follow the new
//! tables and keys; new tables are captured, dropped ones forgotten), then hashes the schema and
//! reads `schema_version` in one read transaction. It repeats while the two disagree (DDL landed
//! in between), so the gate's `(hash, schema_version)` pair always describes one schema and
//! capture was installed for it. A changed hash moves the old one to `previous` (see
//! `gate::SchemaVersions::advance`); the state file keeps both across restarts.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::gate::{Gate, GateState, SchemaVersions};
use super::store::{self, StoredState};
use crate::config::Config;
use crate::db::read::SchemaProbe;
use crate::db::{DbError, Reader, WriterHandle};
use crate::error::Chain;
use crate::hlc::now_ms;
use crate::status::NodeStatus;

/// How often `PRAGMA schema_version` is polled: DDL is noticed within this.
const SCHEMA_POLL: Duration = Duration::from_secs(1);
/// Install-then-probe rounds before giving up on a schema that keeps changing; the next poll
/// tries again.
const MAX_SETTLE_ROUNDS: usize = 5;

/// Handle to the node's schema tracking. Cloning is cheap.
#[derive(Clone)]
pub struct SchemaTracker {
    inner: Arc<Inner>,
}

struct Inner {
    writer: WriterHandle,
    /// Used on blocking threads only, hence the std mutex.
    reader: Arc<Mutex<Reader>>,
    ignore: Vec<String>,
    gate: Gate,
    state_path: PathBuf,
    recheck: Option<Duration>,
    status: Arc<NodeStatus>,
    /// One refresh at a time (held across the writer's install, hence tokio's mutex).
    refreshing: tokio::sync::Mutex<()>,
}

impl SchemaTracker {
    /// Computes the local schema (installing capture for it) and restores the previous hash from
    /// the state file. Call once capture was first installed. Schema pauses count on `pauses`.
    pub async fn start(
        cfg: &Config,
        writer: WriterHandle,
        status: Arc<NodeStatus>,
        pauses: IntCounter,
    ) -> Result<SchemaTracker, DbError> {
        let reader = Arc::new(Mutex::new(Reader::open(&cfg.db_path)?));
        let ignore = cfg.sharding.ignore_tables.clone();
        let probe = settle(&writer, &reader, &ignore, &status).await?;
        let state_path = store::state_path(&cfg.data_dir());
        let stored = match store::load(&state_path) {
            Ok(s) => s,
            Err(error) => {
                warn!(
                    error = %Chain(&error),
                    path = %state_path.display(),
                    "cannot read the schema state file, starting without a previous hash"
                );
                None
            }
        };
        let versions = restored_versions(stored.as_ref(), &probe);
        info!(
            hash = %versions.current,
            previous = %versions.previous.as_ref().map(|p| p.0.as_str()).unwrap_or("none"),
            tables = probe.tables.len(),
            "schema hash computed"
        );
        let gate = Gate::new(status.clone(), pauses, versions, probe.schema_version);
        let tracker = SchemaTracker {
            inner: Arc::new(Inner {
                writer,
                reader,
                ignore,
                gate,
                state_path,
                recheck: cfg.schema_recheck_interval(),
                status,
                refreshing: tokio::sync::Mutex::new(()),
            }),
        };
        tracker.persist(tracker.inner.gate.state()).await;
        Ok(tracker)
    }

    pub fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    /// The tracker's read-only connection, for other occasional readers (the dashboard) to
    /// share: each connection keeps its own copy of the parsed schema.
    pub fn reader(&self) -> Arc<Mutex<Reader>> {
        self.inner.reader.clone()
    }

    /// Refreshes unless the gate already describes `schema_version` (someone else refreshed
    /// while we waited). Returns whether the hash changed.
    pub async fn refresh_unless_at(&self, schema_version: i64) -> Result<bool, DbError> {
        let _one = self.inner.refreshing.lock().await;
        if self.inner.gate.schema_version() == schema_version {
            return Ok(false);
        }
        self.refresh_locked("schema_version moved").await
    }

    /// Re-installs capture and recomputes the hash now. Returns whether the hash changed.
    pub async fn refresh(&self, reason: &'static str) -> Result<bool, DbError> {
        let _one = self.inner.refreshing.lock().await;
        self.refresh_locked(reason).await
    }

    async fn refresh_locked(&self, reason: &'static str) -> Result<bool, DbError> {
        let i = &self.inner;
        let probe = settle(&i.writer, &i.reader, &i.ignore, &i.status).await?;
        let before = i.gate.versions();
        let (after, changed) = i.gate.set_schema(probe.hash, probe.schema_version);
        if changed {
            info!(
                reason,
                hash = %after.current,
                previous = %before.current,
                tables = probe.tables.len(),
                "schema changed: capture re-installed, hash recomputed"
            );
        }
        Ok(changed)
    }

    /// Task body: polls for DDL, rechecks periodically and writes the state file on every
    /// change of the gate. Transient errors are logged and retried on the
    /// next tick; a fatal database error ends the task (and the node).
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let i = &self.inner;
        let mut changes = i.gate.subscribe();
        let mut poll = tokio::time::interval(SCHEMA_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Without a recheck interval the timer never fires.
        let recheck_every = i.recheck.unwrap_or(Duration::from_secs(365 * 86_400));
        let mut recheck =
            tokio::time::interval_at(tokio::time::Instant::now() + recheck_every, recheck_every);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let state = changes.borrow_and_update().clone();
                    self.persist(state).await;
                    Ok(false)
                }
                _ = recheck.tick() => self.refresh("periodic recheck").await,
                _ = poll.tick() => self.poll().await,
            };
            if let Err(error) = result {
                if error.is_fatal() {
                    return Err(error.into());
                }
                warn!(error = %Chain(&error), "schema check failed, retrying");
            }
        }
    }

    /// Refreshes when `PRAGMA schema_version` differs from the one the hash belongs to.
    async fn poll(&self) -> Result<bool, DbError> {
        let reader = self.inner.reader.clone();
        let version = tokio::task::spawn_blocking(move || lock(&reader).schema_version())
            .await
            .map_err(|_| DbError::WriterGone)??;
        if version == self.inner.gate.schema_version() {
            return Ok(false);
        }
        self.refresh_unless_at(version).await
    }

    async fn persist(&self, state: GateState) {
        let i = &self.inner;
        let stored = StoredState {
            node_id: i.status.node_id,
            schema_hash: state.versions.current.clone(),
            previous_hash: state.versions.previous.clone(),
            paused_shards: state.paused_shards(),
            updated_at: store::rfc3339(now_ms()),
        };
        let path = i.state_path.clone();
        let saved = tokio::task::spawn_blocking(move || store::save(&path, &stored)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                warn!(error = %Chain(&error), path = %i.state_path.display(), "cannot write the schema state file")
            }
            Err(error) => warn!(%error, "schema state writer panicked"),
        }
    }
}

/// Installs capture and probes the schema until both saw the same hash.
async fn settle(
    writer: &WriterHandle,
    reader: &Arc<Mutex<Reader>>,
    ignore: &[String],
    status: &NodeStatus,
) -> Result<SchemaProbe, DbError> {
    let mut rounds = 0;
    loop {
        let info = writer.install_capture().await?;
        status.tables_tracked.store(
            info.tables.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let reader = reader.clone();
        let ignore = ignore.to_vec();
        // The probe is rare (start, DDL): the schema it parsed is not kept between probes.
        let probe = tokio::task::spawn_blocking(move || {
            let mut reader = lock(&reader);
            let probe = reader.probe_schema(&ignore)?;
            reader.release_schema()?;
            Ok::<_, DbError>(probe)
        })
        .await
        .map_err(|_| DbError::WriterGone)??;
        rounds += 1;
        if probe.hash == info.schema_hash() || rounds >= MAX_SETTLE_ROUNDS {
            return Ok(probe);
        }
    }
}

/// The versions at start: the stored previous hash while the schema is unchanged; the stored
/// hash as the previous one when the schema changed while the node was down.
pub(crate) fn restored_versions(
    stored: Option<&StoredState>,
    probe: &SchemaProbe,
) -> SchemaVersions {
    match stored {
        Some(s) if s.schema_hash == probe.hash => SchemaVersions {
            current: probe.hash.clone(),
            previous: s.previous_hash.clone().filter(|p| *p != probe.hash),
        },
        Some(s) => SchemaVersions {
            current: s.schema_hash.clone(),
            previous: s.previous_hash.clone(),
        }
        .advance(probe.hash.clone()),
        None => SchemaVersions {
            current: probe.hash.clone(),
            previous: None,
        },
    }
}

/// The probe connection's lock; a panic while probing leaves nothing half-done in it.
fn lock(reader: &Mutex<Reader>) -> std::sync::MutexGuard<'_, Reader> {
    reader.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pauses() -> IntCounter {
        IntCounter::new("pauses", "test").unwrap()
    }
    use crate::catalog::SchemaHash;
    use crate::db::testutil::TempDb;
    use crate::ids::NodeId;

    fn probe(hash: &str) -> SchemaProbe {
        SchemaProbe {
            schema_version: 1,
            hash: SchemaHash(hash.into()),
            tables: vec![],
        }
    }

    fn stored(hash: &str, previous: Option<&str>) -> StoredState {
        StoredState {
            node_id: NodeId(1),
            schema_hash: SchemaHash(hash.into()),
            previous_hash: previous.map(|p| SchemaHash(p.into())),
            paused_shards: vec![],
            updated_at: String::new(),
        }
    }

    #[test]
    fn previous_hash_survives_restarts_and_offline_ddl() {
        let v = restored_versions(None, &probe("a"));
        assert_eq!((v.current.0.as_str(), v.previous), ("a", None));
        let v = restored_versions(Some(&stored("b", Some("a"))), &probe("b"));
        assert_eq!(v.previous, Some(SchemaHash("a".into())), "unchanged schema");
        let v = restored_versions(Some(&stored("b", Some("a"))), &probe("c"));
        assert_eq!(v.current.0, "c");
        assert_eq!(
            v.previous,
            Some(SchemaHash("b".into())),
            "DDL while stopped"
        );
    }

    fn test_config(db: &TempDb) -> Config {
        Config {
            db_path: db.path.clone(),
            node_id: Some(1),
            data_dir: Some(db.dir.path().join("data")),
            ..Config::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_notices_ddl_and_writes_the_state_file() {
        let db = TempDb::new();
        let app = db.open();
        app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY);")
            .unwrap();
        let cfg = test_config(&db);
        std::fs::create_dir_all(cfg.data_dir()).unwrap();
        let writer = WriterHandle::spawn(&db.path, NodeId(1), vec![]).unwrap();
        let tracker = SchemaTracker::start(&cfg, writer, NodeStatus::new(NodeId(1)), pauses())
            .await
            .unwrap();
        let mut changes = tracker.gate().subscribe();
        let before = tracker.gate().versions().current;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(tracker.clone().run(cancel.clone()));
        app.execute_batch("ALTER TABLE t ADD COLUMN v TEXT")
            .unwrap();
        // Virtual time: the poll fires as soon as the runtime is idle.
        while tracker.gate().versions().current == before {
            changes.changed().await.unwrap();
        }
        let path = store::state_path(&cfg.data_dir());
        let mut written = false;
        for _ in 0..500 {
            let stored = store::load(&path).unwrap().unwrap();
            if stored.previous_hash.as_ref() == Some(&before) {
                assert_eq!(stored.schema_hash, tracker.gate().versions().current);
                written = true;
                break;
            }
            // Real time for the blocking writer: virtual sleeps would not wait for it.
            std::thread::sleep(Duration::from_millis(10));
            tokio::task::yield_now().await;
        }
        assert!(written, "the state file records the change");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn ddl_is_detected_captured_and_remembered_across_restarts() {
        let db = TempDb::new();
        let app = db.open();
        app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
        let cfg = test_config(&db);
        std::fs::create_dir_all(cfg.data_dir()).unwrap();
        let status = NodeStatus::new(NodeId(1));
        let writer = WriterHandle::spawn(&db.path, NodeId(1), vec![]).unwrap();
        let tracker = SchemaTracker::start(&cfg, writer.clone(), status.clone(), pauses())
            .await
            .unwrap();
        let first = tracker.gate().versions();
        assert_eq!(first.previous, None);
        let at = tracker.gate().schema_version();
        assert!(
            !tracker.refresh_unless_at(at).await.unwrap(),
            "nothing moved"
        );

        // A new table and a new column: captured, hashed, the old hash kept as previous.
        app.execute_batch(
            "CREATE TABLE later(id INTEGER PRIMARY KEY); ALTER TABLE t ADD COLUMN email TEXT;",
        )
        .unwrap();
        assert!(tracker.poll().await.unwrap());
        let second = tracker.gate().versions();
        assert_eq!(second.previous, Some(first.current.clone()));
        assert_eq!(NodeStatus::get(&status.tables_tracked), 2);
        let clocks: i64 = app
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = '__harmonylite__later_clock'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(clocks, 1, "the new table is captured");
        assert!(
            !tracker.poll().await.unwrap(),
            "our own install is not a change"
        );
        tracker.persist(tracker.gate().state()).await;

        // Restart: the previous hash comes back from the state file.
        let again = SchemaTracker::start(&cfg, writer.clone(), status.clone(), pauses())
            .await
            .unwrap();
        assert_eq!(again.gate().versions(), second);

        // A dropped table while stopped: the stored hash becomes the previous one.
        app.execute_batch("DROP TABLE later;").unwrap();
        let third = SchemaTracker::start(&cfg, writer, status, pauses())
            .await
            .unwrap();
        let v = third.gate().versions();
        assert_ne!(v.current, second.current);
        assert_eq!(v.previous, Some(second.current));
    }
}
