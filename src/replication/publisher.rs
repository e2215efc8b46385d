//! The publisher: local changes → per-shard batches → JetStream, acks awaited together.
//!
//! A round folds the capture logs (`cdc::fold`), scans stamped keys above the watermarks (one
//! read transaction), groups the rows by
//! shard, encodes each shard's rows into messages under the payload limit, publishes them all
//! before awaiting any ack, and only then raises the watermarks. A failed publish raises nothing,
//! so the same rows are scanned again; `Nats-Msg-Id` (a hash of the payload) lets JetStream drop
//! the copies it already stored.
//!
//! Every message carries the schema hash of the schema its rows were read under: a scan whose
//! `PRAGMA schema_version` differs from the one the tracker's hash belongs to publishes nothing,
//! refreshes the hash (and capture) and scans again. A node on the old schema therefore never
//! mistakes rows with a new column for rows it can apply in full.
//!
//! With `replication_log.go_compat`, every row also goes out in the Go HarmonyLite format, one
//! message per row as the Go peer expects, on the Go shard the Go peer's hash picks; the round's
//! watermarks wait for those acks too.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::chunk;
use super::go_format;
use super::own_seqs::OwnSeqs;
use super::shard::shard_of;
use super::wire::{self, Encoded};
use crate::cdc::Scan;
use crate::cdc::baseline::BASELINE_CEILING;
use crate::cdc::scan::Budget;
use crate::change::{ChangeBatch, RowChange, TableChanges};
use crate::config::Config;
use crate::db::{Reader, WriterHandle};
use crate::error::Chain;
use crate::hlc::now_ms;
use crate::ids::{NodeId, ShardId};
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::schema::SchemaTracker;
use crate::status::NodeStatus;

/// Room left in each message for headers and protocol framing.
const PAYLOAD_HEADROOM: usize = 4 * 1024;
/// Waits between attempts of a publish round that failed (NATS unreachable, no stream). A
/// failed attempt costs one request the local server answers at once, so the cap stays at a
/// second: after a heal (an edge's leaf connection back) publishing resumes within it.
const PUBLISH_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// Messages per shard one round publishes before awaiting their acks together. Under a backlog
/// each round waits for its acks (a quorum round trip) before the next one scans, so bigger
/// rounds publish faster: 32 reached 148-165k rows/s with one writer against 137-138k for 8
/// and 16 (`docs/benchmarks.md`, runs I and J). A node under such a burst holds 85-90 MB
/// instead of 40-47, nearly all of it memory the allocator keeps after the rounds freed it;
/// the idle release of the writer's and the scan's connections trims it (`db::writer`,
/// `RELEASE_IDLE`), and both builds are back at 27 MB 10 s after the burst.
const MESSAGES_IN_FLIGHT_PER_SHARD: usize = 32;
/// Bytes of values one round reads (beyond that, it stops at the next version): rows of a few
/// MiB are published a few at a time instead of all that were written, so the publisher holds
/// a small multiple of the largest row. Small rows reach the row budget long before this.
const ROUND_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Everything a publisher round needs.
pub struct Publisher {
    pub cfg: Arc<Config>,
    pub js: jetstream::Context,
    pub writer: WriterHandle,
    /// The scan connection; used on blocking threads only, hence the std mutex. Its schema is
    /// let go after `RELEASE_IDLE` without a scan.
    pub reader: Arc<Mutex<Reader>>,
    /// A connection that only reads `PRAGMA data_version` (it never parses the schema), so
    /// commits are noticed whether or not the scan connection holds its schema.
    pub watch: Arc<Mutex<Reader>>,
    pub status: Arc<NodeStatus>,
    pub metrics: Arc<Metrics>,
    /// Where each acknowledged publish's sequence is remembered (see `own_seqs`).
    pub own_seqs: Arc<OwnSeqs>,
    pub wake: Arc<Notify>,
    /// The local schema hash, stamped on every message.
    pub schema: SchemaTracker,
    /// Watermarks that moved over remote rows only, not yet written to the database.
    pub unpersisted: Mutex<Unpersisted>,
}

/// Watermarks raised in memory but not yet recorded through the writer. Recording them is only
/// an optimisation for restarts: a restart scans from the recorded ones, so a mark not yet
/// recorded only means rows published again (applied once: last-writer-wins). So marks are
/// recorded at most every `PERSIST_EVERY` instead of costing a write transaction (and the
/// wake and empty round its commit caused) after every round; with `go_compat` after every
/// round that published, as before, because a Go peer would apply a stale copy again.
#[derive(Debug, Default)]
pub struct Unpersisted {
    marks: BTreeMap<String, u64>,
    since: Option<std::time::Instant>,
    /// The schema version the marks were scanned at; marks of an older one are dropped.
    schema_version: i64,
}

impl Unpersisted {
    /// Adds a round's marks; returns every mark held when they are due: `PERSIST_EVERY` after
    /// the oldest was added, or at once when `now` is set.
    fn add(
        &mut self,
        marks: Vec<(String, u64)>,
        schema_version: i64,
        now: bool,
    ) -> Option<(Vec<(String, u64)>, i64)> {
        if self.schema_version != schema_version {
            self.marks.clear();
            self.schema_version = schema_version;
        }
        for (table, ver) in marks {
            let mark = self.marks.entry(table).or_default();
            *mark = (*mark).max(ver);
        }
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        (now || since.elapsed() >= PERSIST_EVERY)
            .then(|| self.take())
            .flatten()
    }

    /// Every mark held, and the schema version they were scanned at.
    fn take(&mut self) -> Option<(Vec<(String, u64)>, i64)> {
        self.since = None;
        let marks: Vec<_> = std::mem::take(&mut self.marks).into_iter().collect();
        (!marks.is_empty()).then_some((marks, self.schema_version))
    }

    /// When the marks held are due (none held: never).
    fn due_at(&self) -> Option<tokio::time::Instant> {
        self.since
            .map(|since| tokio::time::Instant::from_std(since + PERSIST_EVERY))
    }
}

/// How long the scan connection keeps its parsed schema without a scan (about 21 KB a captured
/// table: 21 MB at 1,000 tables). The next scan parses it again.
const RELEASE_IDLE: Duration = Duration::from_secs(10);

/// How long raised watermarks may stay in memory only.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// Whether a round left work behind.
enum Round {
    Idle,
    More,
}

impl Publisher {
    /// Task body: publish whenever woken, until cancelled. Publish failures are retried with
    /// backoff; captured changes wait in the clock tables meanwhile.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut last_data_version = None;
        // When the scan connection last scanned; `None` once its schema was let go.
        let mut last_scan = Some(tokio::time::Instant::now());
        loop {
            let release_at = last_scan.map(|at| at + RELEASE_IDLE);
            let persist_at = self.unpersisted().due_at();
            // The release before the wake: with a short `polling_interval` a wake is nearly
            // always pending, and would put the release off for good.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.persist_marks().await;
                    return Ok(());
                }
                _ = sleep_until_some(persist_at) => {
                    self.persist_marks().await;
                    continue;
                }
                _ = sleep_until_some(release_at) => {
                    self.release_schema().await;
                    last_scan = None;
                    continue;
                }
                _ = self.wake.notified() => {}
            }
            let mut backoff = PUBLISH_RETRY;
            loop {
                if cancel.is_cancelled() {
                    self.persist_marks().await;
                    return Ok(());
                }
                // Skip the scan when no connection committed anything since the last one.
                let version = self.data_version().await?;
                if version.is_some() && version == last_data_version {
                    break;
                }
                last_scan = Some(tokio::time::Instant::now());
                match self.round().await {
                    Ok(Round::More) => continue,
                    Ok(Round::Idle) => {
                        last_data_version = version;
                        break;
                    }
                    Err(error) => {
                        self.metrics.publish_failures.inc();
                        let delay = backoff.next_delay();
                        warn!(error = %format!("{error:#}"), retry_ms = delay.as_millis() as u64, "publish failed, changes stay queued locally");
                        if !crate::retry::sleep(delay, &cancel).await {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    fn unpersisted(&self) -> std::sync::MutexGuard<'_, Unpersisted> {
        self.unpersisted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the watermarks held in memory. A failure is left at that: the marks stay raised
    /// in memory, and only a restart before the next recording publishes their rows again.
    async fn persist_marks(&self) {
        let Some((marks, schema_version)) = self.unpersisted().take() else {
            return;
        };
        if let Err(error) = self.writer.mark_published(marks, schema_version).await {
            debug!(error = %Chain(&error), "publish watermarks not recorded");
        }
    }

    async fn data_version(&self) -> anyhow::Result<Option<i64>> {
        let watch = self.watch.clone();
        let version = tokio::task::spawn_blocking(move || lock(&watch).data_version()).await?;
        Ok(version.ok())
    }

    /// Lets the scan connection's schema go (idle); a failure only keeps it.
    async fn release_schema(&self) {
        let reader = self.reader.clone();
        match tokio::task::spawn_blocking(move || lock(&reader).release_schema()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(error = %Chain(&error), "the scan connection kept its schema"),
            Err(error) => debug!(error = %error, "the scan connection kept its schema"),
        }
    }

    async fn scan(&self, limit: usize) -> anyhow::Result<Scan> {
        let reader = self.reader.clone();
        let local = self.status.node_id;
        let budget = Budget {
            rows: limit,
            bytes: ROUND_MAX_BYTES,
        };
        Ok(tokio::task::spawn_blocking(move || lock(&reader).scan(local, budget)).await??)
    }

    async fn round(&self) -> anyhow::Result<Round> {
        let shards = self.cfg.replication_log.shards.max(1);
        let per_message = self.cfg.scan_max_changes.max(1) as usize;
        // Several messages per shard per round, so their publishes are in flight together.
        let limit = per_message * shards as usize * MESSAGES_IN_FLIGHT_PER_SHARD;
        // The scan sees unfolded changes too (`cdc::scan`), but reads them by grouping the
        // whole log; folded, they are one range read of the clock. A fold that cannot run now
        // (the application holds the write lock) only makes this scan read the log.
        if let Err(error) = self.writer.fold().await {
            debug!(error = %Chain(&error), "capture logs not folded before the scan");
        }
        let scan = self.scan(limit).await?;
        let seen = lock(&self.reader).scanned_schema_version();
        let gate = self.schema.gate().state();
        if let Some(seen) = seen
            && seen != gate.schema_version
        {
            self.schema.refresh_unless_at(seen).await?;
            return Ok(Round::More);
        }
        let schema_hash = gate.versions.current.0;
        self.status
            .pending_local
            .store(scan.pending, std::sync::atomic::Ordering::Relaxed);
        let scanned = scan.row_count();
        let more = scan.pending > 0;
        if scanned > 0 {
            let batches = group_by_shard(self.status.node_id, &schema_hash, scan.tables, shards);
            let started = std::time::Instant::now();
            self.publish(batches, per_message).await?;
            self.metrics.observe_publish(started);
            self.metrics.published_changes.inc_by(scanned as u64);
            self.status
                .last_published_ms
                .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        }
        if !scan.watermarks.is_empty() {
            lock(&self.reader).advance(&scan.watermarks);
            let now = scanned > 0 && self.cfg.replication_log.go_compat;
            let due = self
                .unpersisted()
                .add(scan.watermarks, scan.schema_version, now);
            if let Some((marks, schema_version)) = due {
                self.writer.mark_published(marks, schema_version).await?;
            }
        }
        Ok(if more { Round::More } else { Round::Idle })
    }

    /// Encodes and publishes every shard's rows, all in flight before the first ack is awaited.
    async fn publish(
        &self,
        batches: BTreeMap<ShardId, ChangeBatch>,
        per_message: usize,
    ) -> anyhow::Result<()> {
        let max_bytes = self
            .cfg
            .max_payload_bytes()
            .saturating_sub(PAYLOAD_HEADROOM);
        let mut acks = Vec::new();
        if self.cfg.replication_log.go_compat {
            for (subject, headers, payload) in self.go_copies(&batches, max_bytes) {
                acks.push(
                    self.js
                        .publish_with_headers(subject, headers, payload.into())
                        .await?,
                );
            }
        }
        let mut published_bytes = 0;
        for (shard, batch) in batches {
            let subject = self.cfg.subject(shard);
            for part in batch.split_every(per_message) {
                let compress = self.cfg.replication_log.compress;
                for message in wire::encode_fitting(part, compress, max_bytes)? {
                    if let Encoded::Unpublishable { table, error } = &message {
                        // Publishing it would only get it skipped on every node, and refusing
                        // it would stop this node's publishing for good: it is left out,
                        // loudly and counted.
                        tracing::error!(%table, error = %Chain(error), "a row too large to replicate was left out; it stays only on this node");
                        self.metrics.unpublishable_rows.inc();
                    }
                    for (headers, payload) in nats_messages(message, self.status.node_id, max_bytes)
                    {
                        published_bytes += payload.len();
                        let ack = self
                            .js
                            .publish_with_headers(subject.clone(), headers, payload)
                            .await?;
                        acks.push(ack);
                    }
                }
            }
        }
        let messages = acks.len() as u64;
        for ack in acks {
            let ack = ack.await?;
            self.own_seqs.record(&ack.stream, ack.sequence);
            if ack.duplicate {
                debug!(stream = %ack.stream, seq = ack.sequence, "duplicate publish dropped by JetStream");
            }
        }
        self.metrics.published_batches.inc_by(messages);
        debug!(messages, "published");
        // The rows, their encodings and the payloads are gone (acknowledged and dropped).
        crate::memory::return_free_memory_after(published_bytes);
        Ok(())
    }
}

impl Publisher {
    /// Every row of `batches` as the Go peer publishes a change: one message per row, on the Go
    /// shard its hash routes it to, marked as a copy (`go_format::COPY_HEADER`) so our nodes,
    /// which get the change natively, skip it.
    fn go_copies(
        &self,
        batches: &BTreeMap<ShardId, ChangeBatch>,
        max_bytes: usize,
    ) -> Vec<(String, HeaderMap, Vec<u8>)> {
        let origin = self.status.node_id;
        let log = &self.cfg.replication_log;
        let mut out = Vec::new();
        for table in batches.values().flat_map(|b| &b.tables) {
            if table.key_columns.is_empty() {
                warn!(table = %table.table, rows = table.rows.len(), "a table without a primary key is not sent to Go peers");
                continue;
            }
            // A Go peer applies whatever arrives last, so only this node's own writes go to it:
            // not baselined rows (`cdc::baseline`; they lose to every real write among our nodes,
            // at a Go peer a stale one would win) and not the changes of the Go node this one
            // replaced, applied again here (`NodeStatus::go_own_replayed`).
            let replayed = self.status.go_own_replayed.load(Ordering::Relaxed);
            let real =
                |r: &&RowChange| r.version >= BASELINE_CEILING as u64 && r.version > replayed;
            for row in table.rows.iter().filter(real) {
                let Some((hash, change)) = go_format::from_row(origin, table, row) else {
                    continue;
                };
                let payload = match go_format::encode(&change, log.compress) {
                    Ok(p) if p.len() <= max_bytes => p,
                    Ok(_) | Err(_) => {
                        tracing::error!(table = %table.table, "a row too large for the Go format was not sent to Go peers");
                        self.metrics.unpublishable_rows.inc();
                        continue;
                    }
                };
                let mut headers = HeaderMap::new();
                let id = format!("go-{}", message_id(origin, &payload));
                headers.insert("Nats-Msg-Id", id.as_str());
                headers.insert(go_format::COPY_HEADER, origin.to_string().as_str());
                let shard = go_format::shard_of_hash(hash, log.shards);
                out.push((self.cfg.go_subject(shard), headers, payload));
            }
        }
        self.metrics.go_format_published.inc_by(out.len() as u64);
        out
    }
}

/// The reader's lock; a panic while scanning leaves nothing half-done in it, so a poisoned lock
/// is still usable.
fn lock(reader: &Mutex<Reader>) -> std::sync::MutexGuard<'_, Reader> {
    reader.lock().unwrap_or_else(|p| p.into_inner())
}

/// Groups scanned rows by shard, keeping each table's header.
fn group_by_shard(
    origin: NodeId,
    schema_hash: &str,
    tables: Vec<TableChanges>,
    shards: u32,
) -> BTreeMap<ShardId, ChangeBatch> {
    let mut out: BTreeMap<ShardId, ChangeBatch> = BTreeMap::new();
    for table in tables {
        let mut by_shard: BTreeMap<ShardId, TableChanges> = BTreeMap::new();
        for row in table.rows {
            let shard = shard_of(&table.table, &row.key, shards);
            by_shard
                .entry(shard)
                .or_insert_with(|| TableChanges {
                    table: table.table.clone(),
                    key_columns: table.key_columns.clone(),
                    columns: table.columns.clone(),
                    rows: Vec::new(),
                })
                .rows
                .push(row);
        }
        for (shard, part) in by_shard {
            out.entry(shard)
                .or_insert_with(|| ChangeBatch {
                    origin,
                    schema_hash: schema_hash.to_owned(),
                    tables: Vec::new(),
                })
                .tables
                .push(part);
        }
    }
    out
}

/// The NATS messages that carry one encoded message: headers (message id, chunk headers) and
/// payload; none for a row that cannot be sent. Chunks share the payload's memory.
fn nats_messages(message: Encoded, origin: NodeId, max_bytes: usize) -> Vec<(HeaderMap, Bytes)> {
    match message {
        Encoded::Whole(payload) => {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", message_id(origin, &payload).as_str());
            vec![(headers, payload.into())]
        }
        Encoded::Oversized { payload, .. } => {
            let id = message_id(origin, &payload);
            let pieces = chunk::split(&Bytes::from(payload), max_bytes);
            let total = pieces.len();
            pieces
                .into_iter()
                .enumerate()
                .map(|(i, piece)| {
                    let mut headers = HeaderMap::new();
                    headers.insert("Nats-Msg-Id", format!("{id}-{i}").as_str());
                    headers.insert(chunk::CHUNK_ID_HEADER, id.as_str());
                    headers.insert(chunk::CHUNK_HEADER, format!("{i}/{total}").as_str());
                    (headers, piece)
                })
                .collect()
        }
        Encoded::Unpublishable { .. } => Vec::new(),
    }
}

/// A deterministic id per payload: a republish of identical content is dropped by JetStream.
fn message_id(origin: NodeId, payload: &[u8]) -> String {
    let digest = Sha256::digest(payload);
    format!("{origin}-{}", hex::encode(&digest[..16]))
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs.iter().map(|&(t, v)| (t.to_owned(), v)).collect()
    }

    /// Raised watermarks wait in memory until `PERSIST_EVERY` after the first of them (or are
    /// due at once when asked), keep the highest per table, and are dropped when the schema
    /// they were scanned at changed.
    #[test]
    fn raised_watermarks_are_recorded_in_batches() {
        let mut held = Unpersisted::default();
        assert_eq!(held.due_at(), None);
        assert_eq!(held.add(marks(&[("a", 5), ("b", 3)]), 1, false), None);
        assert_eq!(held.add(marks(&[("a", 4), ("b", 9)]), 1, false), None);
        let due = held.due_at().unwrap();
        assert!(due > tokio::time::Instant::now());
        assert!(due <= tokio::time::Instant::now() + PERSIST_EVERY);

        // A mark of another schema version drops the older ones.
        assert_eq!(held.add(marks(&[("c", 7)]), 2, false), None);
        assert_eq!(
            held.add(marks(&[("a", 8)]), 2, true),
            Some((marks(&[("a", 8), ("c", 7)]), 2))
        );
        assert_eq!(held.due_at(), None);
        assert_eq!(held.take(), None);

        // Due once the oldest waited `PERSIST_EVERY`.
        assert_eq!(held.add(marks(&[("a", 10)]), 2, false), None);
        held.since = held.since.map(|since| since - PERSIST_EVERY);
        assert_eq!(
            held.add(marks(&[("b", 11)]), 2, false),
            Some((marks(&[("a", 10), ("b", 11)]), 2))
        );
    }
}
