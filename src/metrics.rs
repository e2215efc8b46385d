//! Every Prometheus metric of a node, declared once here with its help text, in one registry per
//! node (tests run several nodes in one process, so there is no global registry).
//!
//! Counters the engine already keeps in `NodeStatus` (atomics written by the publisher, the
//! consumers and the node) are copied into their Prometheus twins when the registry is rendered,
//! so there is one source of truth. Histograms are observed where the event happens, through the
//! `observe_*` functions below (one call at each site). Names are
//! `<namespace>_[<subsystem>_]<name>_<unit>[_total]`; every series carries a `node_id` label.
//! Labels come from bounded sets only: shard, table, conflict kind.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::PrometheusConfig;
use crate::ids::NodeId;
use crate::status::NodeStatus;

/// Publish rounds and apply transactions take milliseconds; a stalled one takes seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Snapshots take seconds to an hour.
const SNAPSHOT_BUCKETS: [f64; 10] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The node's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    /// Serialises the copy from `NodeStatus`, so two concurrent scrapes cannot add a delta twice.
    sync: Mutex<()>,
    published_changes: IntCounter,
    published_batches: IntCounter,
    publish_failures: IntCounter,
    applied_changes: IntCounter,
    applied_batches: IntCounter,
    stale_changes: IntCounter,
    malformed_messages: IntCounter,
    conflicts: IntCounterVec,
    pending_changes: IntGauge,
    publish_latency: Histogram,
    apply_latency: Histogram,
    consumer_lag_messages: IntGaugeVec,
    consumer_lag_seconds: GaugeVec,
    schema_paused: IntGauge,
    snapshot_duration: Histogram,
    snapshot_size: IntGauge,
    snapshot_failures: IntCounter,
    snapshot_last_success: Gauge,
    nats_connected: IntGauge,
    nats_disconnects: IntCounter,
    nats_server_restarts: IntCounter,
    tables_tracked: IntGauge,
    cdc_installed: IntGauge,
    ready: IntGauge,
    start_time: Gauge,
    build_info: IntGaugeVec,
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
            malformed_messages: b.counter(
                "malformed_messages_total",
                "Messages that could not be decoded, skipped and terminated.",
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
            snapshot_last_success: b.float_gauge(
                "snapshot_last_success_timestamp_seconds",
                "Unix time of the last snapshot this node uploaded (0 = none yet).",
            )?,
            nats_connected: b.gauge(
                "nats_connected",
                "1 while the NATS connection is up and JetStream answers, else 0.",
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
            sync: Mutex::new(()),
        };
        metrics
            .build_info
            .with_label_values(&[crate::VERSION, crate::GIT_COMMIT])
            .set(1);
        metrics.start_time.set(crate::hlc::now_ms() as f64 / 1000.0);
        Ok(metrics)
    }

    /// Adds `n` journal entries of `kind` for `table`.
    pub fn count_conflicts(&self, table: &str, kind: &str, n: u64) {
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

    /// Copies the node's counters and gauges into the registry and renders the text format.
    pub fn render(&self, status: &NodeStatus, paused: bool) -> prometheus::Result<String> {
        self.refresh(status, paused);
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    fn refresh(&self, s: &NodeStatus, paused: bool) {
        let _guard = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        let get = NodeStatus::get;
        catch_up(&self.published_changes, get(&s.published_changes));
        catch_up(&self.published_batches, get(&s.published_batches));
        catch_up(&self.publish_failures, get(&s.publish_failures));
        catch_up(&self.applied_changes, get(&s.applied_changes));
        catch_up(&self.applied_batches, get(&s.applied_batches));
        catch_up(&self.stale_changes, get(&s.stale_changes));
        catch_up(&self.malformed_messages, get(&s.malformed_messages));
        catch_up(&self.nats_disconnects, s.nats_disconnects());
        catch_up(
            &self.nats_server_restarts,
            s.server().map(|srv| srv.restarts()).unwrap_or(0),
        );
        self.pending_changes.set(gauge(get(&s.pending_local)));
        self.tables_tracked.set(gauge(get(&s.tables_tracked)));
        let flag = |b: bool| i64::from(b);
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.cdc_installed.set(flag(s.cdc_installed.load(relaxed)));
        self.ready.set(flag(s.ready.load(relaxed)));
        self.schema_paused.set(flag(paused));
        self.nats_connected
            .set(flag(s.nats_connected() && s.nats_responsive.load(relaxed)));
        for lag in s.shard_lag() {
            let shard = lag.shard.to_string();
            self.consumer_lag_messages
                .with_label_values(&[shard.as_str()])
                .set(gauge(lag.messages));
            self.consumer_lag_seconds
                .with_label_values(&[shard.as_str()])
                .set(lag.seconds);
        }
    }
}

/// Raises a Prometheus counter to the engine's value (both only ever grow).
fn catch_up(counter: &IntCounter, value: u64) {
    let delta = value.saturating_sub(counter.get());
    if delta > 0 {
        counter.inc_by(delta);
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Records a publish round that started at `started` (call after its acks arrived).
pub fn observe_publish(status: &NodeStatus, started: Instant) {
    if let Some(m) = status.metrics() {
        m.publish_latency.observe(started.elapsed().as_secs_f64());
    }
}

/// Records an apply transaction that started at `started` (call after it committed).
pub fn observe_apply(status: &NodeStatus, started: Instant) {
    if let Some(m) = status.metrics() {
        m.apply_latency.observe(started.elapsed().as_secs_f64());
    }
}

/// Records a snapshot this node took and uploaded.
pub fn observe_snapshot(status: &NodeStatus, took: Duration, size_bytes: u64) {
    if let Some(m) = status.metrics() {
        m.snapshot_duration.observe(took.as_secs_f64());
        m.snapshot_size.set(gauge(size_bytes));
        m.snapshot_last_success
            .set(crate::hlc::now_ms() as f64 / 1000.0);
    }
}

/// Counts a snapshot that failed to be taken, uploaded or restored.
pub fn count_snapshot_failure(status: &NodeStatus) {
    if let Some(m) = status.metrics() {
        m.snapshot_failures.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn cfg(subsystem: &str) -> PrometheusConfig {
        PrometheusConfig {
            subsystem: subsystem.to_owned(),
            ..PrometheusConfig::default()
        }
    }

    #[test]
    fn renders_every_metric_with_node_label() {
        let status = NodeStatus::new(NodeId(7));
        let metrics = std::sync::Arc::new(Metrics::new(&cfg(""), NodeId(7)).unwrap());
        status.set_metrics(metrics.clone());
        NodeStatus::add(&status.published_changes, 5);
        status.pending_local.store(3, Ordering::Relaxed);
        status.set_shard_lag(vec![crate::status::ShardLag {
            shard: 1,
            messages: 4,
            seconds: 1.5,
        }]);
        observe_publish(&status, Instant::now());
        observe_apply(&status, Instant::now());
        metrics.count_conflicts("books", "unique", 2);
        let text = metrics.render(&status, true).unwrap();
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
        let again = metrics.render(&status, true).unwrap();
        assert!(again.contains("harmonylite_published_changes_total{node_id=\"7\"} 5"));
        assert_eq!(metrics.conflicts_by_table().get("books"), Some(&2));
    }

    #[test]
    fn subsystem_is_part_of_every_name() {
        let metrics = Metrics::new(&cfg("edge"), NodeId(1)).unwrap();
        let text = metrics.render(&NodeStatus::new(NodeId(1)), false).unwrap();
        assert!(text.contains("harmonylite_edge_schema_mismatch_paused{node_id=\"1\"} 0"));
        assert!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .all(|l| l.starts_with("harmonylite_edge_"))
        );
    }
}
