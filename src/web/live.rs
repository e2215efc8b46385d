//! The liveness probe: `GET <health path>/live` answers 200 while the process runs and is not
//! stuck, 503 with the reasons otherwise. It never looks at NATS or at what the node holds
//! (that is `/health` and `/health/ready`): a restart would not bring NATS back, and a node keeps
//! capturing writes through an outage, so an outage must not get it restarted.
//!
//! Stuck means: the runtime's heartbeat task (`node::chores::heartbeat`, one beat a second) has
//! not beaten for `HEARTBEAT_STALE`, so some worker thread is blocked; or the database writer has
//! been in one command for `WRITER_STUCK` (a snapshot restore excepted: it may take that long).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde::Serialize;

use super::WebState;
use crate::hlc::now_ms;
use crate::status::NodeStatus;

/// A heartbeat older than this means the runtime is blocked.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(15);
/// A writer command running longer than this (outside a restore) means the writer is stuck.
pub const WRITER_STUCK: Duration = Duration::from_secs(300);

/// The liveness answer.
#[derive(Debug, Clone, Serialize)]
pub struct Alive {
    pub alive: bool,
    /// Why not, one line per failed check.
    pub reasons: Vec<String>,
}

/// `<path>/live`, or `/live` when the health path is `/`.
pub fn live_path(path: &str) -> String {
    format!("{}/live", path.trim_end_matches('/'))
}

pub(super) async fn liveness(State(state): State<WebState>) -> Response {
    let reasons = not_alive_reasons(state.status(), now_ms());
    let alive = reasons.is_empty();
    let code = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if state.cfg().health_check.detailed {
        (code, Json(Alive { alive, reasons })).into_response()
    } else {
        code.into_response()
    }
}

/// What is stuck at wall-clock `now` (ms).
pub fn not_alive_reasons(s: &NodeStatus, now: u64) -> Vec<String> {
    let mut reasons = Vec::new();
    let beat = s.liveness.heartbeat_ms.load(Ordering::Relaxed);
    if beat > 0 && now.saturating_sub(beat) > HEARTBEAT_STALE.as_millis() as u64 {
        reasons.push(format!(
            "the runtime has not run its heartbeat for {} s",
            now.saturating_sub(beat) / 1000
        ));
    }
    if let Some(since) = s.liveness.writer_busy_since_ms()
        && now.saturating_sub(since) > WRITER_STUCK.as_millis() as u64
        && !s.restoring.load(Ordering::Relaxed)
    {
        reasons.push(format!(
            "the database writer has been in one command for {} s",
            now.saturating_sub(since) / 1000
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::ids::NodeId;

    #[test]
    fn a_stale_heartbeat_or_a_stuck_writer_is_not_alive() {
        let s = NodeStatus::new(NodeId(1));
        let now = 1_000_000_000;
        assert!(not_alive_reasons(&s, now).is_empty(), "not started yet");
        s.liveness
            .heartbeat_ms
            .store(now - 1_000, Ordering::Relaxed);
        let busy = Arc::new(AtomicU64::new(0));
        s.liveness.attach_writer(busy.clone());
        assert!(not_alive_reasons(&s, now).is_empty());

        s.liveness
            .heartbeat_ms
            .store(now - 20_000, Ordering::Relaxed);
        let reasons = not_alive_reasons(&s, now);
        assert_eq!(reasons, ["the runtime has not run its heartbeat for 20 s"]);

        s.liveness.heartbeat_ms.store(now, Ordering::Relaxed);
        busy.store(now - 301_000, Ordering::Relaxed);
        let reasons = not_alive_reasons(&s, now);
        assert_eq!(
            reasons,
            ["the database writer has been in one command for 301 s"]
        );
        s.restoring.store(true, Ordering::Relaxed);
        assert!(
            not_alive_reasons(&s, now).is_empty(),
            "a restore may take that long"
        );
    }

    #[test]
    fn the_path_sits_under_the_health_path() {
        assert_eq!(live_path("/health"), "/health/live");
        assert_eq!(live_path("/"), "/live");
    }
}
