//! The writer actor: one OS thread owns the engine's one read-write connection. Handles send
//! commands on a bounded channel and await a oneshot reply, so SQLite never runs on an async
//! worker and writes are serialised without locks. The thread ends when the last handle is
//! dropped or `close` is called.
//!
//! The writer also folds the capture logs into the clocks (`cdc::fold`): on request (the
//! publisher before each scan), inside every apply transaction, on close, and every
//! [`FOLD_EVERY`] from a timer thread of its own, so the logs stay short whether or not NATS is
//! reachable or anything publishes.
//!
//! A connection keeps the whole parsed schema once it read any table (about 21 KB a captured
//! table). After [`RELEASE_IDLE`] without work the writer replaces its connection with a fresh
//! one, which parses nothing until the next command needs it; the timer's check for commits
//! (`PRAGMA data_version`) parses nothing either.
//!
//! While the schema holds no trigger but capture's, the applier turns this connection's
//! triggers off (they would only skip under the guard); its one write meant to be captured, a
//! repair adopting rows written with capture off, turns them on first (`apply::run_triggers`,
//! decision 001). A new write of that kind must do the same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use crate::apply::{Applier, ApplyReport, ApplyWork, quarantine};
use crate::catalog::{SchemaHash, schema_hash};
use crate::cdc::scan::tracked_tables;
use crate::cdc::{self, CaptureInfo};
use crate::change::TableChanges;
use crate::db::idle::ReadCache;
use crate::db::restore::{RestoreAs, RestoreMode, RestoreReport, restore_into};
use crate::db::{DbError, pragmas};
use crate::ids::{NodeId, StreamSeq};
use crate::position::StreamPosition;
use crate::sql::internal::{self, ACCEPTED_GAPS, CONFLICTS, FORMAT_VERSION, STATE};
use crate::sql::quote_ident;

/// Commands waiting for the writer; senders wait (backpressure) when it is full.
const QUEUE_DEPTH: usize = 64;
/// Statements are cached per distinct SQL text: a few per captured table.
const STATEMENT_CACHE: usize = 256;
/// How often the timer folds capture logs that the application wrote to since the last fold.
pub const FOLD_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// How long the writer keeps its parsed schema without work (21 MB at 1,000 tables).
pub const RELEASE_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

type Reply<T> = oneshot::Sender<Result<T, DbError>>;

enum Command {
    Install(Reply<CaptureInfo>),
    Apply(Arc<ApplyWork>, Reply<ApplyReport>),
    MarkPublished(Vec<(String, u64)>, i64, Reply<()>),
    Positions(Reply<Vec<StreamPosition>>),
    AcceptGap(AcceptedGap, Reply<()>),
    Release(i64, bool, Reply<bool>),
    PruneConflicts(u64, Reply<u64>),
    SchemaHash(Reply<SchemaHash>),
    Restore(PathBuf, RestoreMode, Reply<RestoreReport>),
    GetState(&'static str, Reply<Option<String>>),
    SetState(&'static str, Option<String>, Reply<()>),
    /// Fold the capture logs; without a reply (the timer), only when another connection
    /// committed since the last fold.
    Fold(Option<Reply<u64>>),
    Repair(Repair, Reply<u64>),
    /// Bytes of parsed schema the connection holds and its `synchronous` setting, read
    /// without parsing (tests of the idle release).
    #[cfg(test)]
    Probe(Reply<(i64, i64)>),
    Close(Reply<()>),
}

impl Command {
    /// Whether it keeps the writer from idling: everything but the timer's tick (which checks
    /// `data_version` before it folds) and test probes.
    fn is_work(&self) -> bool {
        match self {
            Command::Fold(None) => false,
            #[cfg(test)]
            Command::Probe(_) => false,
            _ => true,
        }
    }

    /// A periodic read the writer answers from `db::idle::ReadCache` while nothing was written.
    fn is_cached_read(&self) -> bool {
        matches!(
            self,
            Command::Positions(_) | Command::GetState(..) | Command::PruneConflicts(..)
        )
    }
}

/// A repair the consistency digests call for (`apply::repair`).
#[derive(Debug, Clone, PartialEq)]
pub enum Repair {
    /// Adopt every row without a clock row, in every captured table, as this node's writes.
    AdoptUnclocked,
    /// Write these winning rows where this node holds their version with other content.
    EqualVersions(TableChanges),
}

/// A gap an operator accepts: stream `stream` (of `incarnation`) misses
/// `first_missing..=last_missing` for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedGap {
    pub stream: String,
    pub incarnation: String,
    pub first_missing: u64,
    pub last_missing: u64,
    /// How the operator decided (`flag -accept-gaps`, `dashboard`).
    pub how: String,
}

impl AcceptedGap {
    /// The stream of a decision that concerns every stream (a new database that replicates
    /// without the snapshot it waited for): recorded, no floor moves.
    pub const ALL_STREAMS: &str = "*";
}

/// A handle to the writer thread. Cloning is cheap; the thread stops with the last clone.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Command>,
    /// Wall-clock ms the thread started its current command (0 while idle): the liveness
    /// probe's view of a writer stuck in one command.
    busy_since_ms: Arc<AtomicU64>,
}

struct Writer {
    conn: Connection,
    path: PathBuf,
    local: NodeId,
    ignore: Vec<String>,
    applier: Applier,
    /// `PRAGMA schema_version` right after the last install; a different value means the
    /// application changed its schema and capture must be re-checked before applying.
    installed_at: Option<i64>,
    /// The tracked tables as of a schema version (what a fold walks).
    tracked: Option<(i64, Vec<crate::catalog::TableMeta>)>,
    /// `PRAGMA data_version` at the last timer fold: unchanged means nobody else committed.
    folded_at_data_version: Option<i64>,
    /// When the writer last did work; `None` once its connection's schema was let go.
    last_work: Option<std::time::Instant>,
    release_idle: std::time::Duration,
    /// A replacement connection's `synchronous` is set before its first work (setting it
    /// parses the schema).
    synchronous_pending: bool,
    /// Answers to periodic reads, while nothing was written (`db::idle`).
    cache: ReadCache,
}

impl WriterHandle {
    /// Opens (creating if missing) the database, sets the pragmas, creates our internal tables
    /// and starts the writer thread.
    pub fn spawn(
        db_path: &Path,
        local: NodeId,
        ignore_tables: Vec<String>,
    ) -> Result<WriterHandle, DbError> {
        Self::spawn_releasing_after(db_path, local, ignore_tables, RELEASE_IDLE)
    }

    /// `spawn`, letting the schema go after `release_idle` without work.
    fn spawn_releasing_after(
        db_path: &Path,
        local: NodeId,
        ignore_tables: Vec<String>,
        release_idle: std::time::Duration,
    ) -> Result<WriterHandle, DbError> {
        let path = db_path.to_path_buf();
        let conn = open_connection(&path, true)?;
        let found = internal::create_internal(&conn).map_err(|source| DbError::Sqlite {
            what: "creating internal tables",
            path: path.clone(),
            source,
        })?;
        if found > FORMAT_VERSION {
            return Err(DbError::NewerFormat {
                path,
                found,
                supported: FORMAT_VERSION,
            });
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let busy_since_ms = Arc::new(AtomicU64::new(0));
        let busy = busy_since_ms.clone();
        let writer = Writer {
            conn,
            path,
            local,
            ignore: ignore_tables,
            applier: Applier::new(),
            installed_at: None,
            tracked: None,
            folded_at_data_version: None,
            last_work: Some(std::time::Instant::now()),
            release_idle,
            synchronous_pending: false,
            cache: ReadCache::default(),
        };
        let timer = tx.downgrade();
        std::thread::Builder::new()
            .name("harmonylite-writer".into())
            .spawn(move || writer.run(rx, &busy))
            .map_err(DbError::Spawn)?;
        std::thread::Builder::new()
            .name("harmonylite-fold".into())
            .spawn(move || fold_timer(timer))
            .map_err(DbError::Spawn)?;
        Ok(WriterHandle { tx, busy_since_ms })
    }

    /// When the writer started the command it is busy with (ms since the epoch; 0 = idle).
    pub fn busy_since(&self) -> Arc<AtomicU64> {
        self.busy_since_ms.clone()
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, DbError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| DbError::WriterGone)?;
        rx.await.map_err(|_| DbError::WriterGone)?
    }

    /// Folds every capture log into its clock now; returns the records folded.
    pub async fn fold(&self) -> Result<u64, DbError> {
        self.call(|r| Command::Fold(Some(r))).await
    }

    /// Carries out a repair; returns the rows it changed.
    pub async fn repair(&self, repair: Repair) -> Result<u64, DbError> {
        self.call(|r| Command::Repair(repair, r)).await
    }

    /// Installs (or re-checks) capture: clock tables, triggers, baseline.
    pub async fn install_capture(&self) -> Result<CaptureInfo, DbError> {
        self.call(Command::Install).await
    }

    /// Applies `work` in one transaction (re-installing capture first if the schema changed).
    pub async fn apply(&self, work: impl Into<Arc<ApplyWork>>) -> Result<ApplyReport, DbError> {
        let work = work.into();
        self.call(|r| Command::Apply(work, r)).await
    }

    /// Raises publisher watermarks (never lowers them) found by a scan at `schema_version`
    /// (`cdc::mark_published`).
    pub async fn mark_published(
        &self,
        marks: Vec<(String, u64)>,
        schema_version: i64,
    ) -> Result<(), DbError> {
        self.call(|r| Command::MarkPublished(marks, schema_version, r))
            .await
    }

    /// Every stream position, as committed with the applied rows.
    pub async fn positions(&self) -> Result<Vec<StreamPosition>, DbError> {
        self.call(Command::Positions).await
    }

    /// The contiguous applied floor per stream.
    pub async fn floors(&self) -> Result<BTreeMap<String, StreamSeq>, DbError> {
        Ok(self
            .positions()
            .await?
            .into_iter()
            .map(|p| (p.stream, StreamSeq(p.position.floor())))
            .collect())
    }

    /// Gives up the missing range of `gap` on an operator's decision: the floor moves over it,
    /// the decision is journaled, and the node stops being a source for snapshots until a
    /// restore (`STATE_GAP_ACCEPTED`).
    pub async fn accept_gap(&self, gap: AcceptedGap) -> Result<(), DbError> {
        self.call(|r| Command::AcceptGap(gap, r)).await
    }

    /// Applies (`apply`) or discards a quarantined change; false when there is no such id.
    pub async fn release_quarantined(&self, id: i64, apply: bool) -> Result<bool, DbError> {
        self.call(|r| Command::Release(id, apply, r)).await
    }

    /// Deletes all but the newest `keep` conflict journal entries; returns how many went.
    pub async fn prune_conflicts(&self, keep: u64) -> Result<u64, DbError> {
        self.call(|r| Command::PruneConflicts(keep, r)).await
    }

    /// The current schema hash, without installing anything.
    pub async fn schema_hash(&self) -> Result<SchemaHash, DbError> {
        self.call(Command::SchemaHash).await
    }

    /// Restores the verified snapshot database at `snapshot` (`crate::db::restore`): merged
    /// into a database that holds data (a snapshot of another schema is refused,
    /// `DbError::RestoreRefused`), or, for one without data or with `RestoreMode::Replace`,
    /// written over it with the unpublished local changes merged in and capture installed.
    pub async fn restore(
        &self,
        snapshot: PathBuf,
        mode: RestoreMode,
    ) -> Result<RestoreReport, DbError> {
        self.call(|r| Command::Restore(snapshot, mode, r)).await
    }

    /// A small fact from our state table (`__harmonylite__state`).
    pub async fn state(&self, key: &'static str) -> Result<Option<String>, DbError> {
        self.call(|r| Command::GetState(key, r)).await
    }

    /// Sets (`Some`) or removes (`None`) a fact in our state table.
    pub async fn set_state(&self, key: &'static str, value: Option<String>) -> Result<(), DbError> {
        self.call(|r| Command::SetState(key, value, r)).await
    }

    /// Commands queued for the writer (for a gauge).
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Closes the connection and stops the thread (other handles then get `WriterGone`).
    pub async fn close(self) -> Result<(), DbError> {
        self.call(Command::Close).await
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>, busy_since_ms: &AtomicU64) {
        while let Some(cmd) = rx.blocking_recv() {
            if let Command::Close(r) = cmd {
                // What the application wrote last goes into the clocks before the connection
                // closes (the next start would fold it too; this keeps the file tidy).
                if let Err(error) = self.fold() {
                    tracing::warn!(error = %crate::error::Chain(&error), "cannot fold the capture logs on close");
                }
                let result = self.conn.close().map_err(|(_, source)| DbError::Sqlite {
                    what: "closing",
                    path: self.path,
                    source,
                });
                let _ = r.send(result);
                return;
            }
            busy_since_ms.store(crate::hlc::now_ms(), Ordering::Relaxed);
            if let Some(cmd) = self.answer_from_cache(cmd) {
                if cmd.is_work() {
                    self.last_work = Some(std::time::Instant::now());
                    self.prepare_for_work();
                    if !cmd.is_cached_read() {
                        self.cache.clear();
                    }
                }
                self.handle(cmd);
            }
            busy_since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Carries out one command (every one but `Close`).
    fn handle(&mut self, cmd: Command) {
        {
            // A dropped reply receiver means the caller gave up; nothing to tell it.
            match cmd {
                Command::Install(r) => {
                    let _ = r.send(self.install());
                }
                Command::Apply(work, r) => {
                    let _ = r.send(self.apply(&work));
                }
                Command::MarkPublished(marks, schema_version, r) => {
                    let _ = r.send(
                        cdc::mark_published(&self.conn, &marks, schema_version)
                            .map_err(|source| DbError::capture(&self.path, source)),
                    );
                }
                Command::Positions(r) => {
                    let at = self.data_version();
                    let positions = self.positions();
                    if let Ok(p) = &positions {
                        self.cache.at(at).positions = Some(p.clone());
                    }
                    let _ = r.send(positions);
                }
                Command::AcceptGap(gap, r) => {
                    let _ = r.send(self.accept_gap(&gap));
                }
                Command::Release(id, apply, r) => {
                    let _ = r.send(self.release(id, apply));
                }
                Command::PruneConflicts(keep, r) => {
                    let at = self.data_version();
                    let pruned = self.prune_conflicts(keep);
                    // Its own delete does not count as a write that needs another trim.
                    self.cache.at(at).trimmed_to = pruned.is_ok().then_some(keep);
                    let _ = r.send(pruned);
                }
                Command::SchemaHash(r) => {
                    let _ = r.send(
                        schema_hash(&self.conn, &self.ignore)
                            .map_err(|source| DbError::capture(&self.path, source)),
                    );
                }
                Command::GetState(key, r) => {
                    let at = self.data_version();
                    let value = self.get_state(key);
                    if let Ok(v) = &value {
                        self.cache.at(at).state.insert(key, v.clone());
                    }
                    let _ = r.send(value);
                }
                Command::SetState(key, value, r) => {
                    let _ = r.send(self.set_state(key, value));
                }
                Command::Restore(snapshot, mode, r) => {
                    let _ = r.send(self.restore(&snapshot, &mode));
                }
                Command::Fold(Some(r)) => {
                    let _ = r.send(self.fold());
                }
                Command::Fold(None) => self.on_timer(),
                Command::Repair(repair, r) => {
                    let _ = r.send(self.repair(&repair));
                }
                #[cfg(test)]
                Command::Probe(r) => {
                    let schema = crate::db::testutil::schema_memory(&self.conn);
                    // Reading `synchronous` parses the schema too: only once it was parsed.
                    let synchronous = if schema > 0 {
                        self.conn
                            .query_row("PRAGMA synchronous", [], |r| r.get(0))
                            .unwrap_or(-1)
                    } else {
                        -1
                    };
                    let _ = r.send(Ok((schema, synchronous)));
                }
                // `run` closes the connection itself: closing takes the writer by value.
                Command::Close(_) => {}
            }
        }
    }

    fn sqlite(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> DbError + '_ {
        move |source| DbError::Sqlite {
            what,
            path: self.path.clone(),
            source,
        }
    }

    fn schema_version(&self) -> Result<i64, DbError> {
        self.conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(self.sqlite("reading schema_version"))
    }

    fn install(&mut self) -> Result<CaptureInfo, DbError> {
        let info = cdc::install(&self.conn, self.local, &self.ignore)
            .map_err(|source| DbError::capture(&self.path, source))?;
        self.installed_at = Some(self.schema_version()?);
        Ok(info)
    }

    fn apply(&mut self, work: &ApplyWork) -> Result<ApplyReport, DbError> {
        let reinstalled = if self.installed_at != Some(self.schema_version()?) {
            let info = self.install()?;
            tracing::info!(
                tables = info.tables.len(),
                "schema changed: capture re-checked before applying"
            );
            Some(info)
        } else {
            None
        };
        let mut report = self
            .applier
            .apply(&self.conn, work)
            .map_err(|source| DbError::apply(&self.path, source))?;
        report.reinstalled = reinstalled;
        Ok(report)
    }

    /// Folds every tracked table's capture log in one write transaction; takes no write lock
    /// when every log is empty.
    fn fold(&mut self) -> Result<u64, DbError> {
        let version = self.schema_version()?;
        if self.tracked.as_ref().is_none_or(|(at, _)| *at != version) {
            let tables = cdc::scan::tracked_tables(&self.conn)
                .map_err(|source| DbError::capture(&self.path, source))?;
            self.tracked = Some((version, tables));
        }
        let Some((_, tables)) = &self.tracked else {
            return Ok(0);
        };
        let capture = |source| DbError::capture(&self.path, source);
        let mut logged = Vec::new();
        for meta in tables {
            if cdc::fold::has_records(&self.conn, &meta.name).map_err(capture)? {
                logged.push(meta);
            }
        }
        if logged.is_empty() {
            return Ok(0);
        }
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(self.sqlite("starting a fold"))?;
        let mut folded = 0;
        for meta in logged {
            folded += cdc::fold::fold_table(&tx, meta).map_err(capture)?;
        }
        tx.commit().map_err(self.sqlite("committing a fold"))?;
        Ok(folded)
    }

    /// The timer's fold: skipped while no other connection committed since the last one.
    /// The timer's tick: folds what another connection committed since the last fold, or,
    /// idle for `release_idle`, lets the schema go.
    fn on_timer(&mut self) {
        if self.fold_if_written() {
            self.last_work = Some(std::time::Instant::now());
        } else if self
            .last_work
            .is_some_and(|at| at.elapsed() >= self.release_idle)
        {
            self.release_schema();
        }
    }

    /// Folds when another connection committed since the last fold; whether it tried.
    fn fold_if_written(&mut self) -> bool {
        let data_version = self.data_version();
        if data_version.is_some() && data_version == self.folded_at_data_version {
            return false;
        }
        self.prepare_for_work();
        match self.fold() {
            Ok(_) => self.folded_at_data_version = data_version,
            // The application may hold the write lock past the busy timeout; the next tick
            // tries again.
            Err(error) => {
                tracing::debug!(error = %crate::error::Chain(&error), "capture logs not folded")
            }
        }
        true
    }

    /// Answers a periodic read from the cache when nothing was written since it was read
    /// (`None`: answered); any other command comes back to be handled.
    fn answer_from_cache(&mut self, cmd: Command) -> Option<Command> {
        if !cmd.is_cached_read() {
            return Some(cmd);
        }
        let cache = self.cache.at(self.data_version());
        match cmd {
            Command::Positions(r) if cache.positions.is_some() => {
                let _ = r.send(Ok(cache.positions.clone().unwrap_or_default()));
                None
            }
            Command::GetState(key, r) if cache.state.contains_key(key) => {
                let _ = r.send(Ok(cache.state.get(key).cloned().flatten()));
                None
            }
            // Trimmed to `keep` or fewer, and nothing written since: nothing to trim.
            Command::PruneConflicts(keep, r) if cache.trimmed_to.is_some_and(|to| to <= keep) => {
                let _ = r.send(Ok(0));
                None
            }
            cmd => Some(cmd),
        }
    }

    /// Sets what a replacement connection left for its first work.
    fn prepare_for_work(&mut self) {
        if !self.synchronous_pending {
            return;
        }
        match pragmas::set_writer_synchronous(&self.conn) {
            Ok(()) => self.synchronous_pending = false,
            // SQLite's default (FULL) stays meanwhile: slower, not less safe.
            Err(error) => tracing::debug!(error = %error, "synchronous not set, retried later"),
        }
    }

    /// `PRAGMA data_version` (parses nothing): changes when another connection commits.
    fn data_version(&self) -> Option<i64> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .ok()
    }

    /// Replaces the connection with a fresh one that has parsed nothing. What the writer
    /// cached stays (it is keyed by schema versions, which belong to the database). The new
    /// connection's `data_version` is read first, then the old one's again: a commit in
    /// between shows on the old one, and the swap waits for the next tick (after its fold).
    fn release_schema(&mut self) {
        let conn = match open_connection(&self.path, false) {
            Ok(conn) => conn,
            Err(error) => {
                tracing::debug!(error = %crate::error::Chain(&error), "the writer kept its schema");
                return;
            }
        };
        let fresh: Option<i64> = conn.query_row("PRAGMA data_version", [], |r| r.get(0)).ok();
        let now = self.data_version();
        if fresh.is_none() || now.is_none() || now != self.folded_at_data_version {
            return;
        }
        self.cache.at(now);
        self.conn = conn;
        self.folded_at_data_version = fresh;
        self.cache.carry_to(fresh);
        self.last_work = None;
        self.synchronous_pending = true;
        crate::memory::return_free_memory();
    }

    fn restore(&mut self, snapshot: &Path, mode: &RestoreMode) -> Result<RestoreReport, DbError> {
        // A merge applies into the tables capture knows: bring it up to the schema first, as
        // every apply does.
        if self.installed_at != Some(self.schema_version()?) {
            self.install()?;
        }
        let who = RestoreAs {
            local: self.local,
            ignore: &self.ignore,
            mode,
        };
        let report = restore_into(&mut self.conn, &self.path, snapshot, &who)?;
        // The tables and their metadata are the snapshot's now; capture came with the copy,
        // this only records the schema version it belongs to.
        self.applier = Applier::new();
        self.install()?;
        Ok(report)
    }

    fn repair(&mut self, repair: &Repair) -> Result<u64, DbError> {
        let capture = |path: &Path, e| DbError::capture(path, e);
        let tables = tracked_tables(&self.conn).map_err(|e| capture(&self.path, e))?;
        let mut changed = 0;
        match repair {
            Repair::AdoptUnclocked => {
                for meta in &tables {
                    changed += crate::apply::repair::adopt_unclocked(&self.conn, meta)
                        .map_err(|e| DbError::apply(&self.path, e))?;
                }
            }
            Repair::EqualVersions(rows) => {
                if let Some(meta) = tables
                    .iter()
                    .find(|m| m.name.eq_ignore_ascii_case(&rows.table))
                {
                    changed = crate::apply::repair::settle_equal_versions(&self.conn, meta, rows)
                        .map_err(|e| DbError::apply(&self.path, e))?;
                }
            }
        }
        Ok(changed)
    }

    fn get_state(&self, key: &str) -> Result<Option<String>, DbError> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row(
                &format!(
                    "SELECT CAST(value AS TEXT) FROM {} WHERE key = ?1",
                    quote_ident(STATE)
                ),
                [key],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sqlite("reading our state"))
    }

    fn set_state(&self, key: &str, value: Option<String>) -> Result<(), DbError> {
        let result = match value {
            Some(v) => self.conn.execute(
                &format!(
                    "INSERT INTO {}(key, value) VALUES (?1, ?2) \
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    quote_ident(STATE)
                ),
                [key, v.as_str()],
            ),
            None => self.conn.execute(
                &format!("DELETE FROM {} WHERE key = ?1", quote_ident(STATE)),
                [key],
            ),
        };
        result.map(|_| ()).map_err(self.sqlite("writing our state"))
    }

    fn positions(&self) -> Result<Vec<StreamPosition>, DbError> {
        internal::read_positions(&self.conn).map_err(self.sqlite("reading stream positions"))
    }

    fn accept_gap(&self, gap: &AcceptedGap) -> Result<(), DbError> {
        let fail = self.sqlite("accepting a gap");
        let tx = self.conn.unchecked_transaction().map_err(&fail)?;
        if gap.stream != AcceptedGap::ALL_STREAMS {
            raise_floor(&tx, gap).map_err(&fail)?;
        }
        tx.execute(
            &format!(
                "INSERT INTO {}(at_ms, stream, first_missing, last_missing, how) \
                 VALUES(?1, ?2, ?3, ?4, ?5)",
                quote_ident(ACCEPTED_GAPS)
            ),
            rusqlite::params![
                crate::hlc::now_ms() as i64,
                gap.stream,
                i64::try_from(gap.first_missing).unwrap_or(i64::MAX),
                i64::try_from(gap.last_missing).unwrap_or(i64::MAX),
                gap.how
            ],
        )
        .map_err(&fail)?;
        let mark = format!(
            "{} missing {}..={} accepted ({})",
            gap.stream, gap.first_missing, gap.last_missing, gap.how
        );
        tx.execute(
            &format!(
                "INSERT INTO {}(key, value) VALUES (?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                quote_ident(STATE)
            ),
            [internal::STATE_GAP_ACCEPTED, mark.as_str()],
        )
        .map_err(&fail)?;
        tx.commit().map_err(&fail)
    }

    fn release(&mut self, id: i64, apply: bool) -> Result<bool, DbError> {
        let capture = |source| DbError::capture(&self.path, source);
        let Some(changes) = quarantine::load(&self.conn, id).map_err(capture)? else {
            return Ok(false);
        };
        if apply {
            let work = ApplyWork {
                batches: vec![crate::change::ChangeBatch {
                    origin: self.local,
                    schema_hash: String::new(),
                    tables: vec![changes],
                }],
                ..ApplyWork::default()
            };
            self.apply(&work)?;
        }
        quarantine::remove(&self.conn, id).map_err(|source| DbError::capture(&self.path, source))
    }

    fn prune_conflicts(&self, keep: u64) -> Result<u64, DbError> {
        let q = format!(
            "DELETE FROM {0} WHERE id <= (SELECT id FROM {0} ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            quote_ident(CONFLICTS)
        );
        let n = self
            .conn
            .execute(&q, [i64::try_from(keep).unwrap_or(i64::MAX)])
            .map_err(self.sqlite("pruning the conflict journal"))?;
        Ok(n as u64)
    }
}

/// The writer's read-write connection to `path`, configured. `first` creates the database if
/// missing and sets its journal mode (which parses the schema); a replacement connection never
/// creates one (a file deleted under the node is not silently swapped for an empty one).
fn open_connection(path: &Path, first: bool) -> Result<Connection, DbError> {
    let open_err = |source| DbError::Open {
        path: path.to_path_buf(),
        source,
    };
    let create = if first {
        OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::empty()
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | create | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    if first {
        pragmas::configure_writer(&conn).map_err(open_err)?;
    } else {
        pragmas::configure_writer_connection(&conn).map_err(open_err)?;
    }
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Moves `gap.stream`'s floor over the accepted range (and what was applied above it).
/// Asks the writer to fold every [`FOLD_EVERY`] until the writer is gone. Holds only a weak
/// sender, so it never keeps the writer alive.
fn fold_timer(writer: mpsc::WeakSender<Command>) {
    loop {
        std::thread::sleep(FOLD_EVERY);
        let Some(tx) = writer.upgrade() else {
            return;
        };
        // A full queue means the writer is busy anyway; skip this tick rather than wait.
        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Command::Fold(None)) {
            return;
        }
    }
}

fn raise_floor(tx: &rusqlite::Transaction<'_>, gap: &AcceptedGap) -> rusqlite::Result<()> {
    let mut position = internal::read_positions(tx)?
        .into_iter()
        .find(|p| p.stream == gap.stream)
        .unwrap_or_else(|| StreamPosition {
            stream: gap.stream.clone(),
            ..StreamPosition::default()
        });
    position.incarnation = gap.incarnation.clone();
    position.position.raise_floor(gap.last_missing);
    internal::write_position(tx, &position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{ChangeBatch, RowChange, TableChanges, Value};
    use crate::db::Reader;
    use crate::db::testutil::TempDb;

    fn batch(table: &str, key: i64, version: u64) -> ChangeBatch {
        ChangeBatch {
            origin: NodeId(2),
            schema_hash: String::new(),
            tables: vec![TableChanges {
                table: table.into(),
                key_columns: vec!["id".into()],
                columns: vec!["id".into(), "v".into()],
                rows: vec![RowChange {
                    version,
                    node: NodeId(2),
                    origin: NodeId(2),
                    deleted: false,
                    key: vec![Value::Integer(key)],
                    values: vec![Value::Integer(key), Value::text("remote")],
                }],
            }],
        }
    }

    /// Idle, the writer lets its parsed schema go; it comes back with the next command, and
    /// what the application writes meanwhile is still folded by the timer.
    #[tokio::test]
    async fn an_idle_writer_lets_its_schema_go_and_goes_on() {
        let db = TempDb::new();
        let app = db.open();
        app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
        let idle = std::time::Duration::from_millis(300);
        let writer =
            WriterHandle::spawn_releasing_after(&db.path, NodeId(1), vec![], idle).unwrap();
        writer.install_capture().await.unwrap();
        let probe = async || writer.call(Command::Probe).await.unwrap();
        let schema = async || probe().await.0;
        assert!(schema().await > 0, "the install parsed the schema");
        // What housekeeping and the snapshot leader ask every few seconds.
        let periodic = async || {
            writer.floors().await.unwrap();
            writer.state(internal::STATE_GAP_ACCEPTED).await.unwrap();
            writer.prune_conflicts(10).await.unwrap();
        };
        periodic().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while schema().await > 0 {
            periodic().await;
            assert!(
                std::time::Instant::now() < deadline,
                "the schema was never let go"
            );
            tokio::time::sleep(FOLD_EVERY).await;
        }
        periodic().await;
        assert_eq!(schema().await, 0, "a periodic read parsed the schema again");
        // An application write after the release: the timer notices it and folds it.
        app.execute("INSERT INTO t VALUES (1, 'a')", []).unwrap();
        let log =
            || crate::db::testutil::count(&app, "SELECT count(*) FROM __harmonylite__t_changes");
        while log() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the write was never folded"
            );
            tokio::time::sleep(FOLD_EVERY).await;
        }
        assert_eq!(crate::db::testutil::clock_rows(&app, "t").len(), 1);
        assert_eq!(probe().await.1, 1, "synchronous = NORMAL before the fold");
        // A fact written behind the writer's back (an operator's hand) is read, not answered
        // from what the writer read before.
        app.execute(
            "INSERT INTO __harmonylite__state(key, value) VALUES (?1, 'by hand')",
            [internal::STATE_GAP_ACCEPTED],
        )
        .unwrap();
        assert_eq!(
            writer.state(internal::STATE_GAP_ACCEPTED).await.unwrap(),
            Some("by hand".to_owned())
        );
        let version = crate::hlc::now_ms() << 16;
        let work = ApplyWork {
            batches: vec![batch("t", 2, version)],
            positions: vec![StreamPosition {
                stream: "s".into(),
                incarnation: "i".into(),
                position: crate::position::Position::at(7),
            }],
            ..ApplyWork::default()
        };
        assert_eq!(writer.apply(work).await.unwrap().applied, 1);
        // The apply wrote: the floors are read again, not answered from before it.
        assert_eq!(writer.floors().await.unwrap().get("s"), Some(&StreamSeq(7)));
        assert_eq!(
            crate::db::testutil::count(&app, "SELECT count(*) FROM t"),
            2
        );
    }

    #[tokio::test]
    async fn writer_round_trip() {
        let db = TempDb::new();
        let app = db.open();
        app.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
        )
        .unwrap();
        let writer = WriterHandle::spawn(&db.path, NodeId(1), vec!["ignored".into()]).unwrap();
        let info = writer.install_capture().await.unwrap();
        assert_eq!(info.tables.len(), 1);
        assert_eq!(info.baselined, 1);
        assert_eq!(writer.schema_hash().await.unwrap(), info.schema_hash());

        let version = crate::hlc::Hlc::next(crate::hlc::Hlc(0), crate::hlc::now_ms()).0 + 1_000_000;
        let work = |tables: &[(&str, i64)], floor| ApplyWork {
            batches: tables.iter().map(|(t, k)| batch(t, *k, version)).collect(),
            positions: vec![StreamPosition {
                stream: "harmonylite-changes-0".into(),
                incarnation: "inc".into(),
                position: crate::position::Position::at(floor),
            }],
            horizon_ms: None,
        };
        let report = writer.apply(work(&[("t", 2), ("t", 3)], 6)).await.unwrap();
        assert_eq!(report.applied, 2);
        assert_eq!(report.newest_version, version);
        assert!(report.reinstalled.is_none());
        let floors = writer.floors().await.unwrap();
        assert_eq!(floors.get("harmonylite-changes-0"), Some(&StreamSeq(6)));

        // The application changes its schema: the next apply re-installs capture first.
        app.execute_batch("CREATE TABLE later(id INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
        let report = writer.apply(work(&[("later", 1)], 7)).await.unwrap();
        assert_eq!(report.applied, 1);
        assert!(report.reinstalled.is_some_and(|i| i.tables.len() == 2));

        // Only the local row is published; watermarks only go up.
        let mut reader = Reader::open(&db.path).unwrap();
        let scan = reader.scan(NodeId(1), 100).unwrap();
        assert_eq!(scan.row_count(), 1);
        writer
            .mark_published(scan.watermarks.clone(), scan.schema_version)
            .await
            .unwrap();
        writer
            .mark_published(vec![("t".into(), 1)], scan.schema_version)
            .await
            .unwrap();
        let again = reader.scan(NodeId(1), 100).unwrap();
        assert_eq!((again.row_count(), again.pending), (0, 0));

        // A missing table is journaled; the journal can be read and pruned.
        writer.apply(work(&[("nope", 1)], 8)).await.unwrap();
        let journal = reader.conflict_page(0, 10).unwrap().entries;
        assert_eq!(journal.len(), 1);
        assert_eq!(journal[0].kind, "missing_table");
        assert_eq!(writer.prune_conflicts(0).await.unwrap(), 1);
        assert_eq!(writer.prune_conflicts(0).await.unwrap(), 0);

        let other = writer.clone();
        assert_eq!(writer.queue_depth(), 0);
        writer.close().await.unwrap();
        assert!(matches!(other.positions().await, Err(DbError::WriterGone)));
    }

    /// The writer folds the application's writes on its own timer: no publisher, no NATS, so
    /// an outage cannot grow the capture log without bound. A write then applies against the
    /// folded clock.
    #[tokio::test]
    async fn the_timer_folds_the_capture_log_without_nats() {
        let db = TempDb::new();
        let app = db.open();
        app.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
        let writer = WriterHandle::spawn(&db.path, NodeId(1), vec![]).unwrap();
        writer.install_capture().await.unwrap();
        let logged = |c: &rusqlite::Connection| -> i64 {
            c.query_row(
                r#"SELECT count(*) FROM "__harmonylite__t_changes""#,
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        let clocked = |c: &rusqlite::Connection| -> i64 {
            c.query_row(
                r#"SELECT count(*) FROM "__harmonylite__t_clock""#,
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        for round in 0..3i64 {
            app.execute_batch(&format!(
                "INSERT INTO t VALUES ({0}, 'a'); UPDATE t SET v = 'b' WHERE id = {0};",
                round + 1
            ))
            .unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while logged(&app) > 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: the log was not folded within 10 s"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert_eq!(clocked(&app), round + 1);
        }
        writer.close().await.unwrap();
    }

    #[tokio::test]
    async fn an_accepted_gap_moves_the_floor_and_is_recorded() {
        let db = TempDb::new();
        let writer = WriterHandle::spawn(&db.path, NodeId(1), vec![]).unwrap();
        writer.install_capture().await.unwrap();
        let mut position = crate::position::Position::at(10);
        position.mark_range(30, 35);
        let stream = StreamPosition {
            stream: "s-0".into(),
            incarnation: "inc".into(),
            position,
        };
        writer
            .apply(ApplyWork::positions(vec![stream]))
            .await
            .unwrap();
        writer
            .accept_gap(AcceptedGap {
                stream: "s-0".into(),
                incarnation: "inc".into(),
                first_missing: 11,
                last_missing: 29,
                how: "test".into(),
            })
            .await
            .unwrap();
        let floors = writer.floors().await.unwrap();
        assert_eq!(
            floors.get("s-0"),
            Some(&StreamSeq(35)),
            "over the gap and what followed"
        );
        let mark = writer.state(internal::STATE_GAP_ACCEPTED).await.unwrap();
        assert!(mark.is_some_and(|m| m.contains("11..=29")));
        let mut reader = Reader::open(&db.path).unwrap();
        let recorded = reader.accepted_gaps(10).unwrap();
        assert_eq!(recorded.len(), 1);
        assert_eq!(
            (recorded[0].first_missing, recorded[0].how.as_str()),
            (11, "test")
        );
    }

    #[tokio::test]
    async fn refuses_a_newer_format_and_unopenable_paths() {
        let db = TempDb::new();
        let conn = db.open();
        internal::create_internal(&conn).unwrap();
        conn.execute(
            "UPDATE __harmonylite__state SET value = 99 WHERE key = 'format'",
            [],
        )
        .unwrap();
        let err = WriterHandle::spawn(&db.path, NodeId(1), vec![])
            .err()
            .unwrap();
        assert!(
            matches!(err, DbError::NewerFormat { found: 99, .. }),
            "{err}"
        );
        let missing = db.dir.path().join("no/such/dir/db.sqlite");
        let err = WriterHandle::spawn(&missing, NodeId(1), vec![])
            .err()
            .unwrap();
        assert!(err.to_string().contains("no/such/dir"), "{err}");
        assert!(err.is_fatal());
    }

    #[test]
    fn cleanup_command_removes_everything_of_ours() {
        let db = TempDb::new();
        let conn = db.open();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        cdc::install(&conn, NodeId(1), &[]).unwrap();
        drop(conn);
        let report = crate::db::remove_all(&db.path).unwrap();
        assert_eq!(report.triggers, 4);
        let conn = db.open();
        let left: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE substr(name,1,15) = '__harmonylite__'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
    }
}
