//! The health check: `GET <path>` answers 200 or 503 with HarmonyLite's JSON, and
//! `GET <path>/ready` also fails while the node restores a snapshot, has not finished starting,
//! or lags beyond `health_check.ready_max_lag_*`. With `detailed = false` both answer with the
//! status code alone. `GET <path>/live` is the liveness probe (`live`).
//!
//! Healthy means, as in HarmonyLite: the database answers, NATS is connected (and JetStream
//! answered the sampler's last round trip), and capture is installed.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;

use super::{WebState, rfc3339_opt, with_reader};
use crate::config::HealthCheckConfig;
use crate::status::NodeStatus;

/// A probe of the database that takes longer than this counts as not connected.
const DB_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// HarmonyLite's health JSON.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub status: &'static str,
    pub node_id: u64,
    pub uptime_seconds: u64,
    pub db_connected: bool,
    pub nats_connected: bool,
    pub cdc_installed: bool,
    pub tables_tracked: u64,
    pub last_replicated_event_timestamp: Option<String>,
    pub last_published_event_timestamp: Option<String>,
    pub schema: SchemaState,
    pub version: &'static str,
    /// What the node lacks (open gaps, a snapshot it waits for) and the changes it holds in
    /// the quarantine. Not a HarmonyLite field; added for operators and probes.
    pub recovery: RecoveryState,
    /// Insecure settings the node was allowed to start with (an existing installation that the
    /// secure defaults would refuse; `docs/security.md`). Not a HarmonyLite field. They do not
    /// make the node unhealthy: a probe must not take down a node an upgrade kept running.
    pub security_warnings: Vec<String>,
    /// The last comparison of every node's content digests. Not a HarmonyLite field.
    pub consistency: ConsistencyState,
}

/// The consistency block of the health report: the last comparison of every node's content
/// digests, in short (the Consistency page has the buckets).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConsistencyState {
    /// RFC 3339; none before the first comparison (or with digests off).
    pub compared_at: Option<String>,
    pub nodes: Vec<u64>,
    /// Why the digests could not be compared.
    pub cannot_tell: Option<String>,
    /// Tables whose content differs between nodes (not changes in flight).
    pub diverged_tables: Vec<String>,
    pub tables_in_flight: usize,
    /// Rows this node repaired since it started: adopted, newer, equal_version.
    pub repaired: BTreeMap<&'static str, u64>,
}

/// The consistency block from the node's live state.
pub fn consistency_state(s: &NodeStatus) -> ConsistencyState {
    let c = s.consistency();
    ConsistencyState {
        compared_at: c.compared_at_ms.and_then(rfc3339_opt),
        nodes: c.nodes.clone(),
        cannot_tell: c.cannot_tell.clone(),
        diverged_tables: c
            .tables
            .iter()
            .filter(|t| t.state == "differ")
            .map(|t| t.table.clone())
            .collect(),
        tables_in_flight: c.tables.iter().filter(|t| t.state == "in flight").count(),
        repaired: [
            ("adopted", c.adopted),
            ("newer", c.newer),
            ("equal_version", c.equal_version),
        ]
        .into(),
    }
}

/// The recovery block of the health report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryState {
    pub lacks_data: bool,
    pub gaps: Vec<crate::status::OpenGap>,
    pub waiting_for_snapshot: Option<String>,
    pub blocked: Option<String>,
    pub quarantined_changes: u64,
}

impl HealthReport {
    pub fn healthy(&self) -> bool {
        self.db_connected && self.nats_connected && self.cdc_installed
    }
}

/// The node's schema versioning state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SchemaState {
    pub hash: String,
    pub previous_hash: Option<String>,
    pub paused: bool,
}

/// The readiness answer: healthy, started, not restoring, not lagging.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, one line per failed check.
    pub reasons: Vec<String>,
    pub health: HealthReport,
}

/// The one place that reads schema state from `NodeStatus`.
pub fn schema_state(status: &NodeStatus) -> SchemaState {
    SchemaState {
        hash: status.schema_hash(),
        previous_hash: status.schema_previous_hash(),
        paused: status.schema_paused(),
    }
}

pub(super) fn router(state: WebState) -> Router {
    let path = state.cfg().health_check.path.clone();
    let ready = ready_path(&path);
    let live = super::live::live_path(&path);
    Router::new()
        .route(&path, get(health))
        .route(&ready, get(readiness))
        .route(&live, get(super::live::liveness))
        .with_state(state)
}

/// `<path>/ready`, or `/ready` when the health path is `/`.
pub fn ready_path(path: &str) -> String {
    format!("{}/ready", path.trim_end_matches('/'))
}

async fn health(State(state): State<WebState>) -> Response {
    let report = report(&state).await;
    let code = if report.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    answer(&state.cfg().health_check, code, report)
}

async fn readiness(State(state): State<WebState>) -> Response {
    let health = report(&state).await;
    let reasons = not_ready_reasons(state.status(), &state.cfg().health_check, &health);
    let ready = reasons.is_empty();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        reasons,
        health,
    };
    answer(&state.cfg().health_check, code, body)
}

fn answer(cfg: &HealthCheckConfig, code: StatusCode, body: impl Serialize) -> Response {
    if cfg.detailed {
        (code, Json(body)).into_response()
    } else {
        code.into_response()
    }
}

/// The health report, probing the database on the health check's own connection.
pub async fn report(state: &WebState) -> HealthReport {
    let probe = with_reader(state.0.health_db.clone(), |r| r.data_version());
    let db_connected = matches!(
        tokio::time::timeout(DB_PROBE_TIMEOUT, probe).await,
        Ok(Ok(_))
    );
    build_report(state.status(), db_connected)
}

/// The report from the node's live state and a database probe result.
pub fn build_report(s: &NodeStatus, db_connected: bool) -> HealthReport {
    let mut report = HealthReport {
        status: "healthy",
        node_id: s.node_id.0,
        uptime_seconds: s.started.elapsed().as_secs(),
        db_connected,
        nats_connected: s.nats_connected() && s.nats_responsive.load(Ordering::Relaxed),
        cdc_installed: s.cdc_installed.load(Ordering::Relaxed),
        tables_tracked: NodeStatus::get(&s.tables_tracked),
        last_replicated_event_timestamp: rfc3339_opt(NodeStatus::get(&s.last_applied_ms)),
        last_published_event_timestamp: rfc3339_opt(NodeStatus::get(&s.last_published_ms)),
        schema: schema_state(s),
        version: crate::VERSION,
        recovery: recovery_state(s),
        security_warnings: s.security_warnings(),
        consistency: consistency_state(s),
    };
    if !report.healthy() {
        report.status = "unhealthy";
    }
    report
}

/// The recovery block from the node's live state.
pub fn recovery_state(s: &NodeStatus) -> RecoveryState {
    let facts = s.recovery.facts();
    RecoveryState {
        lacks_data: facts.lacks_data(),
        gaps: facts.gaps,
        waiting_for_snapshot: facts.waiting_for_snapshot,
        blocked: facts.blocked,
        quarantined_changes: s.quarantine_held(),
    }
}

/// Every reason the node is not ready; empty when it is.
pub fn not_ready_reasons(
    s: &NodeStatus,
    cfg: &HealthCheckConfig,
    health: &HealthReport,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if !health.db_connected {
        reasons.push("the database does not answer".to_owned());
    }
    if !health.nats_connected {
        reasons.push("NATS is not connected".to_owned());
    }
    if !health.cdc_installed {
        reasons.push("capture is not installed".to_owned());
    }
    if !s.ready.load(Ordering::Relaxed) {
        reasons.push("the node is starting or stopping".to_owned());
    }
    for lane in s.unchecked_lanes() {
        reasons.push(format!(
            "shard {lane} has not yet compared its position with the stream"
        ));
    }
    if s.restoring.load(Ordering::Relaxed) {
        reasons.push("a snapshot is being restored".to_owned());
    }
    for gap in &health.recovery.gaps {
        reasons.push(format!(
            "stream {} no longer holds {}..={}, which this node misses (a gap): waiting for a \
             snapshot that covers it",
            gap.stream, gap.first_missing, gap.last_missing
        ));
    }
    if let Some(why) = &health.recovery.waiting_for_snapshot {
        reasons.push(format!("waiting for a snapshot: {why}"));
    }
    if let Some(other) = s.identity_conflict() {
        reasons.push(format!(
            "node id {} is also held by a live node on {other}: give one of them another node_id",
            s.node_id
        ));
    }
    for pause in s.foreign_pauses() {
        reasons.push(pause.to_string());
    }
    for lag in s.shard_lag() {
        if cfg.ready_max_lag_messages > 0 && lag.messages > cfg.ready_max_lag_messages {
            reasons.push(format!(
                "shard {} lags {} messages (limit {})",
                lag.shard, lag.messages, cfg.ready_max_lag_messages
            ));
        }
        if cfg.ready_max_lag_seconds > 0 && lag.seconds > cfg.ready_max_lag_seconds as f64 {
            reasons.push(format!(
                "shard {} lags {:.1} s (limit {} s)",
                lag.shard, lag.seconds, cfg.ready_max_lag_seconds
            ));
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Lane, NodeId, ShardId};
    use crate::metrics::ShardLag;

    #[test]
    fn report_fields_and_readiness() {
        let s = NodeStatus::new(NodeId(3));
        let cfg = HealthCheckConfig {
            ready_max_lag_messages: 10,
            ..HealthCheckConfig::default()
        };
        let report = build_report(&s, true);
        assert_eq!(report.status, "unhealthy", "not connected, no capture");
        assert_eq!(report.last_published_event_timestamp, None);
        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "status",
            "node_id",
            "uptime_seconds",
            "db_connected",
            "nats_connected",
            "cdc_installed",
            "tables_tracked",
            "last_replicated_event_timestamp",
            "last_published_event_timestamp",
            "version",
        ] {
            assert!(json.get(field).is_some(), "{field} missing in {json}");
        }
        assert_eq!(json["schema"]["paused"], false);

        s.cdc_installed.store(true, Ordering::Relaxed);
        s.ready.store(true, Ordering::Relaxed);
        s.last_applied_ms
            .store(1_742_571_045_123, Ordering::Relaxed);
        s.set_shard_lag(vec![ShardLag {
            shard: 0,
            messages: 11,
            seconds: 61.0,
        }]);
        let report = build_report(&s, true);
        assert_eq!(
            report.last_replicated_event_timestamp.as_deref(),
            Some("2025-03-21T15:30:45.123Z")
        );
        let reasons = not_ready_reasons(&s, &cfg, &report);
        assert_eq!(
            reasons,
            [
                "NATS is not connected",
                "shard 0 lags 11 messages (limit 10)",
                "shard 0 lags 61.0 s (limit 60 s)"
            ]
        );
        let pause = crate::status::ForeignPause {
            stream: "harmonylite-changes-1".into(),
            seq: 4,
            from_node: NodeId(77),
        };
        assert!(s.pause_foreign(pause.clone()));
        assert!(!s.pause_foreign(pause), "reported once");
        let reasons = not_ready_reasons(&s, &cfg, &report);
        assert!(reasons.iter().any(|r| r.starts_with(
            "stream harmonylite-changes-1 is paused at sequence 4: a Go HarmonyLite change from \
             node 77; set replication_log.go_compat = true"
        )));
        s.resume_foreign("harmonylite-changes-1");
        assert_eq!(not_ready_reasons(&s, &cfg, &report).len(), 3);
        s.restoring.store(true, Ordering::Relaxed);
        assert!(
            not_ready_reasons(&s, &cfg, &report)
                .contains(&"a snapshot is being restored".to_owned())
        );
        assert_eq!(ready_path("/health"), "/health/ready");
        assert_eq!(ready_path("/"), "/ready");
    }

    /// Until every running consumer compared its floor with the stream, the node cannot know
    /// it lacks nothing (seen in the fault program: ready for a moment before a gap was found).
    #[test]
    fn a_consumer_that_has_not_checked_its_position_keeps_the_node_not_ready() {
        let s = NodeStatus::new(NodeId(3));
        let cfg = HealthCheckConfig::default();
        let report = build_report(&s, true);
        let unchecked = |s: &NodeStatus| {
            not_ready_reasons(s, &cfg, &report)
                .into_iter()
                .filter(|r| r.contains("compared its position"))
                .collect::<Vec<_>>()
        };
        assert!(
            unchecked(&s).is_empty(),
            "no consumers, nothing to wait for"
        );
        let lanes = [Lane::Native(ShardId(0)), Lane::Native(ShardId(1))];
        s.expect_consumers(&lanes);
        assert_eq!(
            unchecked(&s),
            [
                "shard 0 has not yet compared its position with the stream",
                "shard 1 has not yet compared its position with the stream"
            ]
        );
        s.set_position_checked(lanes[1]);
        assert_eq!(unchecked(&s).len(), 1);
        s.set_position_checked(lanes[0]);
        assert!(unchecked(&s).is_empty());
        s.expect_consumers(&lanes);
        assert_eq!(unchecked(&s).len(), 2, "a new engine start checks again");
    }
}
