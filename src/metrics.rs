//! Every Prometheus metric of a node, declared once here with its help text, in one registry per
//! node (tests run several nodes in one process, so there is no global registry). `node` builds
//! it and hands it explicitly to every part that counts or observes.
//!
//! Each counter exists once: the Prometheus counter itself is the engine's count (a clone of an
//! `IntCounter` shares its value), incremented where the event happens and read back by the
//! dashboard. Histograms are observed where the event happens. Gauges describe state that
//! `status::NodeStatus` owns; they are set from a `Gauges` snapshot when the registry is
//! rendered, except the held-chunk gauges, which the consumers holding the chunks move (no status
//! owns that memory). Names are `<namespace>_[<subsystem>_]<name>_<unit>[_total]`; every series
//! carries a `node_id` label. Labels come from bounded sets only: shard, stream, conflict kind,
//! and table names of the local schema; any other table a message names is `UNKNOWN_TABLE`, so a
//! peer cannot grow the label set.

use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::PrometheusConfig;
use crate::hlc::now_ms;
use crate::ids::NodeId;

/// Publish rounds and apply transactions take milliseconds; a stalled one takes seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The `table` label of a table this node does not capture: messages may name any table, and a
/// label value per name would let a peer grow the series without bound.
pub const UNKNOWN_TABLE: &str = "(unknown)";
/// Snapshots take seconds to an hour.
const SNAPSHOT_BUCKETS: [f64; 10] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The node's metrics and their registry. Counters are public: increment them where the event
/// happens, read them with `get()`.
pub struct Metrics {
    registry: Registry,
    pub published_changes: IntCounter,
    pub published_batches: IntCounter,
    pub publish_failures: IntCounter,
    pub unpublishable_rows: IntCounter,
    pub applied_changes: IntCounter,
    pub applied_batches: IntCounter,
    pub stale_changes: IntCounter,
    pub malformed_messages: IntCounter,
    pub stream_gaps: IntCounter,
    pub consumer_stalls: IntCounter,
    pub gaps_accepted: IntCounter,
    pub quarantined_changes: IntCounter,
    pub schema_pauses: IntCounter,
    pub go_format_pauses: IntCounter,
    pub go_format_applied: IntCounter,
    pub go_format_published: IntCounter,
    pub snapshot_failures: IntCounter,
    pub snapshot_restores: IntCounter,
    /// By `reason`: `unsigned`, `malformed`, `unknown_key`, `mismatch`, `too_large`.
    pub snapshot_refused: IntCounterVec,
    /// By `reason`: `wrong_token`, `rate_limited` (`web::limiter`).
    pub admin_auth_failures: IntCounterVec,
    pub nats_disconnects: IntCounter,
    pub nats_server_restarts: IntCounter,
    pub chunk_duplicates: IntCounter,
    pub chunks_requeued: IntCounter,
    pub chunks_held: IntGauge,
    pub chunks_held_bytes: IntGauge,
    /// Tables the last comparison of the content digests found differing (`consistency`).
    pub diverged_tables: IntGauge,
    /// By `kind`: `adopted`, `equal_version`, `newer` (`consistency::repair`).
    pub repairs: IntCounterVec,
    conflicts: IntCounterVec,
    pending_changes: IntGauge,
    publish_latency: Histogram,
    apply_latency: Histogram,
    consumer_lag_messages: IntGaugeVec,
    consumer_lag_seconds: GaugeVec,
    schema_paused: IntGauge,
    stream_gap_missing: IntGaugeVec,
    waiting_for_snapshot: IntGauge,
    quarantine_held: IntGauge,
    /// Snapshots this node took (its count) and how long each took.
    pub snapshot_duration: Histogram,
    snapshot_size: IntGauge,
    snapshot_last_success: Gauge,
    snapshot_newest: Gauge,
    snapshot_interval: Gauge,
    nats_connected: IntGauge,
    tables_tracked: IntGauge,
    cdc_installed: IntGauge,
    ready: IntGauge,
    start_time: Gauge,
    build_info: IntGaugeVec,
}

/// Consumer lag of one shard, sampled from JetStream by `web::sampler`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ShardLag {
    pub shard: u32,
    /// Messages in the stream this node has not applied (pending + unacknowledged).
    pub messages: u64,
    /// Age of the oldest message this node has not applied (0 when caught up).
    pub seconds: f64,
}

/// The state the gauges show, read from the node's status when the registry is rendered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    pub pending_changes: u64,
    pub tables_tracked: u64,
    pub cdc_installed: bool,
    pub ready: bool,
    pub schema_paused: bool,
    pub nats_connected: bool,
    pub shard_lag: Vec<ShardLag>,
    /// Per stream the node reads: messages it misses that the stream no longer holds (0: none).
    pub gap_missing: Vec<(String, u64)>,
    pub waiting_for_snapshot: bool,
    /// Remote changes held in the quarantine now.
    pub quarantine_held: u64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Builds metrics under one namespace, subsystem and `node_id` label, registering each.
struct Builder<'a> {
    cfg: &'a PrometheusConfig,
    node_id: String,
    registry: Registry,
}

impl Builder<'_> {
    fn opts(&self, name: &str, help: &str) -> Opts {
        Opts::new(name, help)
            .namespace(self.cfg.namespace.clone())
            .subsystem(self.cfg.subsystem.clone())
            .const_label("node_id", self.node_id.clone())
    }

    fn register<M: Collector + Clone + 'static>(
        &self,
        metric: prometheus::Result<M>,
    ) -> prometheus::Result<M> {
        let metric = metric?;
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.register(IntCounter::with_opts(self.opts(name, help)))
    }
    fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        self.register(IntCounterVec::new(self.opts(name, help), labels))
    }
    fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.register(IntGauge::with_opts(self.opts(name, help)))
    }
    fn float_gauge(&self, name: &str, help: &str) -> prometheus::Result<Gauge> {
        self.register(Gauge::with_opts(self.opts(name, help)))
    }
    fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        self.register(IntGaugeVec::new(self.opts(name, help), labels))
    }
    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<Histogram> {
        let opts = HistogramOpts::from(self.opts(name, help)).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(opts))
    }
}

impl Metrics {
    /// Declares every metric. Fails only on an invalid namespace or subsystem, which config
    /// validation already refuses.
    // A list of declarations, one per metric: longer than a function should be, on purpose.
    #[allow(clippy::too_many_lines)]
    pub fn new(cfg: &PrometheusConfig, node_id: NodeId) -> prometheus::Result<Metrics> {
        let b = Builder {
            cfg,
            node_id: node_id.to_string(),
            registry: Registry::new(),
        };
        let metrics = Metrics {
            published_changes: b.counter(
                "published_changes_total",
                "Row changes of this node published to JetStream and acknowledged.",
            )?,
            published_batches: b.counter(
                "published_batches_total",
                "Messages (batches of row changes) published to JetStream and acknowledged.",
            )?,
            publish_failures: b.counter(
                "publish_failures_total",
                "Publish rounds that failed and were retried; the changes stayed queued locally.",
            )?,
            applied_changes: b.counter(
                "applied_changes_total",
                "Remote row changes written to the local database.",
            )?,
            applied_batches: b.counter(
                "applied_batches_total",
                "Remote messages (batches of row changes) applied and acknowledged.",
            )?,
            stale_changes: b.counter(
                "stale_changes_total",
                "Remote row changes skipped because the local row has a newer version.",
            )?,
            unpublishable_rows: b.counter(
                "unpublishable_rows_total",
                "Local rows too large for any receiver to decode, left out of replication.",
            )?,
            stream_gaps: b.counter(
                "stream_gaps_total",
                "Gaps found: a stream no longer held what this node needed next (history \
                 trimmed past its floor).",
            )?,
            consumer_stalls: b.counter(
                "consumer_stalls_total",
                "Times a shard's consumer delivered nothing for two idle checks while its \
                 stream held more, and was set up again.",
            )?,
            gaps_accepted: b.counter(
                "gaps_accepted_total",
                "Gaps an operator accepted (the missing range given up, recorded).",
            )?,
            quarantined_changes: b.counter(
                "quarantined_changes_total",
                "Remote changes quarantined because their version was too far in the future.",
            )?,
            stream_gap_missing: b.gauge_vec(
                "stream_gap_missing_messages",
                "Messages of the stream this node misses and the stream no longer holds (an \
                 open gap; 0 when none).",
                &["stream"],
            )?,
            waiting_for_snapshot: b.gauge(
                "waiting_for_snapshot",
                "1 while this node waits for a snapshot to restore (a gap, or a new database \
                 without tables), else 0.",
            )?,
            quarantine_held: b.gauge(
                "quarantined_changes",
                "Remote changes held in the quarantine, waiting for an operator.",
            )?,
            schema_pauses: b.counter(
                "schema_pauses_total",
                "Times a shard paused on a message from a schema this node does not have.",
            )?,
            go_format_pauses: b.counter(
                "go_format_pauses_total",
                "Times a shard paused on a message in the Go HarmonyLite format (without \
                 replication_log.go_compat).",
            )?,
            go_format_applied: b.counter(
                "go_format_messages_applied_total",
                "Go HarmonyLite messages applied from the Go peer's streams (go_compat).",
            )?,
            go_format_published: b.counter(
                "go_format_messages_published_total",
                "Local changes published in the Go HarmonyLite format (go_compat).",
            )?,
            snapshot_restores: b.counter(
                "snapshot_restores_total",
                "Snapshots restored into this node's database.",
            )?,
            malformed_messages: b.counter(
                "malformed_messages_total",
                "Messages that could not be decoded, skipped and terminated.",
            )?,
            chunk_duplicates: b.counter(
                "chunk_duplicates_total",
                "Chunks of oversized messages received again while their set was held; held \
                 once.",
            )?,
            chunks_requeued: b.counter(
                "chunks_requeued_total",
                "Chunks handed back to JetStream for later delivery because the shard's chunk \
                 memory was full (never dropped).",
            )?,
            chunks_held: b.gauge(
                "chunks_held",
                "Chunks of incomplete oversized messages held in memory, over every shard.",
            )?,
            chunks_held_bytes: b.gauge(
                "chunks_held_bytes",
                "Bytes of incomplete oversized messages held in memory, over every shard.",
            )?,
            diverged_tables: b.gauge(
                "diverged_tables",
                "Tables whose content this node's last comparison of every node's digests \
                 found differing (not changes in flight).",
            )?,
            repairs: b.counter_vec(
                "repairs_total",
                "Rows this node repaired after a comparison of the digests, by kind: adopted \
                 (written with capture off), equal_version (same version, other content), \
                 newer (a newer version a peer held).",
                &["kind"],
            )?,
            conflicts: b.counter_vec(
                "conflicts_total",
                "Entries added to the conflict journal since start, by table and kind.",
                &["table", "kind"],
            )?,
            pending_changes: b.gauge(
                "pending_changes",
                "Local row changes captured but not yet published.",
            )?,
            publish_latency: b.histogram(
                "publish_latency_seconds",
                "Duration of a publish round: encode, publish every message, await every ack.",
                &LATENCY_BUCKETS,
            )?,
            apply_latency: b.histogram(
                "apply_latency_seconds",
                "Duration of applying one group of remote messages in one transaction.",
                &LATENCY_BUCKETS,
            )?,
            consumer_lag_messages: b.gauge_vec(
                "consumer_lag_messages",
                "Messages in the shard's stream this node has not applied yet.",
                &["shard"],
            )?,
            consumer_lag_seconds: b.register(GaugeVec::new(
                b.opts(
                    "consumer_lag_seconds",
                    "Age of the oldest message in the shard's stream this node has not applied \
                     (0 when caught up).",
                ),
                &["shard"],
            ))?,
            schema_paused: b.gauge(
                "schema_mismatch_paused",
                "1 while replication is paused by a schema mismatch, else 0.",
            )?,
            snapshot_duration: b.histogram(
                "snapshot_duration_seconds",
                "Duration of taking and uploading a snapshot.",
                &SNAPSHOT_BUCKETS,
            )?,
            snapshot_size: b.gauge(
                "snapshot_size_bytes",
                "Size of the last snapshot this node uploaded.",
            )?,
            snapshot_failures: b.counter(
                "snapshot_failures_total",
                "Snapshots that failed to be taken, uploaded or restored.",
            )?,
            snapshot_refused: b.counter_vec(
                "snapshot_refused_total",
                "Snapshots refused before download, by reason: not authentic (unsigned, \
                 malformed, unknown_key, mismatch; with snapshot.signing_key set) or larger \
                 than snapshot.max_size_mb (too_large).",
                &["reason"],
            )?,
            snapshot_last_success: b.float_gauge(
                "snapshot_last_success_timestamp_seconds",
                "Unix time of the last snapshot this node uploaded (0 = none yet).",
            )?,
            snapshot_newest: b.float_gauge(
                "snapshot_newest_timestamp_seconds",
                "Unix time of the newest snapshot in the store, read by every node (0 = none \
                 yet, or snapshots disabled).",
            )?,
            snapshot_interval: b.float_gauge(
                "snapshot_interval_seconds",
                "The configured snapshot.interval in seconds; 0 = periodic snapshots off.",
            )?,
            nats_connected: b.gauge(
                "nats_connected",
                "1 while the NATS connection is up and JetStream answers, else 0.",
            )?,
            admin_auth_failures: b.counter_vec(
                "admin_auth_failures_total",
                "Dashboard requests refused for their admin token, by reason: a wrong token \
                 (wrong_token) or too many of them (rate_limited, answered 429).",
                &["reason"],
            )?,
            nats_disconnects: b.counter(
                "nats_disconnects_total",
                "Times the NATS connection was lost.",
            )?,
            nats_server_restarts: b.counter(
                "nats_server_restarts_total",
                "Times the bundled nats-server exited and was restarted.",
            )?,
            tables_tracked: b.gauge("tables_tracked", "Tables whose changes are captured.")?,
            cdc_installed: b.gauge("cdc_installed", "1 once capture triggers are installed.")?,
            ready: b.gauge("ready", "1 while the node is running and replicating.")?,
            start_time: b.float_gauge("start_time_seconds", "Unix time the node started.")?,
            build_info: b.gauge_vec(
                "build_info",
                "Always 1; the labels name the running build.",
                &["version", "commit"],
            )?,
            registry: b.registry,
        };
        metrics
            .build_info
            .with_label_values(&[crate::VERSION, crate::GIT_COMMIT])
            .set(1);
        metrics.start_time.set(crate::hlc::now_ms() as f64 / 1000.0);
        // Every kind exported from the start, at 0: a rate over a series that appears at its
        // first repair would miss that repair.
        for kind in ["adopted", "newer", "equal_version"] {
            metrics.repairs.with_label_values(&[kind]);
        }
        Ok(metrics)
    }

    /// Adds `n` journal entries of `kind` for `table`: `None` for a table outside the local
    /// schema, counted under `UNKNOWN_TABLE`.
    pub fn count_conflicts(&self, table: Option<&str>, kind: &str, n: u64) {
        let table = table.unwrap_or(UNKNOWN_TABLE);
        self.conflicts.with_label_values(&[table, kind]).inc_by(n);
    }

    /// Entries counted per table since start, for the dashboard.
    pub fn conflicts_by_table(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for family in self.conflicts.collect() {
            for m in family.get_metric() {
                let table = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "table")
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                *out.entry(table).or_default() += m.get_counter().get_value() as u64;
            }
        }
        out
    }

    /// Entries counted over every table and kind since start.
    pub fn conflicts_total(&self) -> u64 {
        self.conflicts_by_table().values().sum()
    }

    /// Sets the gauges from `gauges` and renders the text format.
    pub fn render(&self, gauges: &Gauges) -> prometheus::Result<String> {
        self.set_gauges(gauges);
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    fn set_gauges(&self, g: &Gauges) {
        let flag = |b: bool| i64::from(b);
        self.pending_changes.set(gauge(g.pending_changes));
        self.tables_tracked.set(gauge(g.tables_tracked));
        self.cdc_installed.set(flag(g.cdc_installed));
        self.ready.set(flag(g.ready));
        self.schema_paused.set(flag(g.schema_paused));
        self.nats_connected.set(flag(g.nats_connected));
        self.waiting_for_snapshot.set(flag(g.waiting_for_snapshot));
        self.quarantine_held.set(gauge(g.quarantine_held));
        for (stream, missing) in &g.gap_missing {
            self.stream_gap_missing
                .with_label_values(&[stream.as_str()])
                .set(gauge(*missing));
        }
        for lag in &g.shard_lag {
            let shard = lag.shard.to_string();
            self.consumer_lag_messages
                .with_label_values(&[shard.as_str()])
                .set(gauge(lag.messages));
            self.consumer_lag_seconds
                .with_label_values(&[shard.as_str()])
                .set(lag.seconds);
        }
    }

    /// Records a publish round that started at `started` (call after its acks arrived).
    pub fn observe_publish(&self, started: Instant) {
        self.publish_latency
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records an apply transaction that started at `started` (call after it committed).
    pub fn observe_apply(&self, started: Instant) {
        self.apply_latency.observe(started.elapsed().as_secs_f64());
    }

    /// The newest snapshot in the store was taken at `created_ms` (0: none).
    pub fn set_newest_snapshot(&self, created_ms: u64) {
        self.snapshot_newest.set(created_ms as f64 / 1000.0);
    }

    /// The configured snapshot interval (`None`: periodic snapshots off).
    pub fn set_snapshot_interval(&self, interval: Option<Duration>) {
        self.snapshot_interval
            .set(interval.map_or(0.0, |i| i.as_secs_f64()));
    }

    /// Records a snapshot this node took and uploaded.
    pub fn observe_snapshot(&self, took: Duration, size_bytes: u64) {
        self.snapshot_duration.observe(took.as_secs_f64());
        self.snapshot_size.set(gauge(size_bytes));
        self.snapshot_last_success.set(now_ms() as f64 / 1000.0);
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(subsystem: &str) -> PrometheusConfig {
        PrometheusConfig {
            subsystem: subsystem.to_owned(),
            ..PrometheusConfig::default()
        }
    }

    #[test]
    fn renders_every_metric_with_node_label() {
        let metrics = Metrics::new(&cfg(""), NodeId(7)).unwrap();
        metrics.published_changes.inc_by(5);
        metrics.observe_publish(Instant::now());
        metrics.observe_apply(Instant::now());
        metrics.count_conflicts(Some("books"), "unique", 2);
        let gauges = Gauges {
            pending_changes: 3,
            schema_paused: true,
            shard_lag: vec![ShardLag {
                shard: 1,
                messages: 4,
                seconds: 1.5,
            }],
            ..Gauges::default()
        };
        let text = metrics.render(&gauges).unwrap();
        for line in [
            "harmonylite_published_changes_total{node_id=\"7\"} 5",
            "harmonylite_pending_changes{node_id=\"7\"} 3",
            "harmonylite_consumer_lag_messages{node_id=\"7\",shard=\"1\"} 4",
            "harmonylite_consumer_lag_seconds{node_id=\"7\",shard=\"1\"} 1.5",
            "harmonylite_schema_mismatch_paused{node_id=\"7\"} 1",
            "harmonylite_publish_latency_seconds_count{node_id=\"7\"} 1",
            "harmonylite_apply_latency_seconds_count{node_id=\"7\"} 1",
            "harmonylite_conflicts_total{kind=\"unique\",node_id=\"7\",table=\"books\"} 2",
            "harmonylite_snapshot_failures_total{node_id=\"7\"} 0",
            "harmonylite_stream_gaps_total{node_id=\"7\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // Every family has help text, and counters end in _total.
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help"
            );
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        }
        // A second render does not count twice.
        let again = metrics.render(&gauges).unwrap();
        assert!(again.contains("harmonylite_published_changes_total{node_id=\"7\"} 5"));
        assert_eq!(metrics.conflicts_by_table().get("books"), Some(&2));
        assert_eq!(metrics.conflicts_total(), 2);
    }

    /// A peer naming many tables this node does not have adds one series, not one per name.
    #[test]
    fn tables_outside_the_local_schema_share_one_label() {
        let metrics = Metrics::new(&cfg(""), NodeId(7)).unwrap();
        metrics.count_conflicts(Some("books"), "unique", 1);
        for _ in 0..100 {
            metrics.count_conflicts(None, "missing_table", 1);
        }
        let text = metrics.render(&Gauges::default()).unwrap();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("harmonylite_conflicts_total{"))
            .collect();
        assert_eq!(series.len(), 2, "{series:?}");
        assert!(text.contains(
            "harmonylite_conflicts_total{kind=\"missing_table\",node_id=\"7\",table=\"(unknown)\"} 100"
        ));
    }

    #[test]
    fn subsystem_is_part_of_every_name() {
        let metrics = Metrics::new(&cfg("edge"), NodeId(1)).unwrap();
        let text = metrics.render(&Gauges::default()).unwrap();
        assert!(text.contains("harmonylite_edge_schema_mismatch_paused{node_id=\"1\"} 0"));
        assert!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .all(|l| l.starts_with("harmonylite_edge_"))
        );
    }
}
