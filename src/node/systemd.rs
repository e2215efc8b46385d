//! The systemd service protocol (`Type=notify`, `WatchdogSec=`), spoken only when systemd asks
//! for it (`NOTIFY_SOCKET` set); without it every call here does nothing.
//!
//! - While the node starts, `keep_starting` extends the start timeout (`EXTEND_TIMEOUT_USEC`)
//!   every few seconds and says what the start waits for (`STATUS=`): connecting to NATS or
//!   claiming the node id may legitimately take longer than `TimeoutStartSec`, and a start that
//!   fails exits by itself. It also feeds the watchdog, which runs from the process's start.
//! - `READY=1` once `start` returned: listeners bound, NATS connected, streams and tasks up.
//!   Readiness in the `/health/ready` sense is not required (a node waiting for a snapshot or
//!   for its peers is up and must not be restarted); `run` reports it in `STATUS=` lines
//!   ("replicating, 3 tables, lag 0.2 s" or "not ready: …") that `systemctl status` shows.
//! - The watchdog (`WATCHDOG=1`) is fed only while the runtime's heartbeat is fresh
//!   (`node::chores::heartbeat`, the same sign of life as `/health/live`), so a frozen or
//!   blocked process is restarted by systemd. Long legitimate waits (a restore, the application
//!   holding the write lock) run on other threads and do not stop the heartbeat.
//! - `STOPPING=1` when the node begins to stop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::HealthCheckConfig;
use crate::hlc::now_ms;
use crate::status::NodeStatus;
use crate::web::health::{build_report, not_ready_reasons};
use crate::web::live::HEARTBEAT_STALE;

/// How often the start extends its timeout, and by how much.
const EXTEND_EVERY: Duration = Duration::from_secs(5);
const EXTEND_BY: Duration = Duration::from_secs(30);
/// How often `STATUS=` is refreshed once running.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The service manager, when it asked for notifications.
#[derive(Debug, Clone, Copy)]
pub(super) struct Systemd {
    /// Feed the watchdog this often (a third of `WatchdogSec`); `None`: no watchdog.
    watchdog_every: Option<Duration>,
}

impl Systemd {
    /// `Some` when the process runs under `Type=notify` (`NOTIFY_SOCKET` is set).
    pub(super) fn from_env() -> Option<Systemd> {
        std::env::var_os("NOTIFY_SOCKET")?;
        let usec = watchdog_usec(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        Some(Systemd {
            watchdog_every: usec
                .map(|u| Duration::from_micros(u / 3).max(Duration::from_millis(100))),
        })
    }

    /// Task body while `start` runs (aborted when it returns): extends the start timeout and
    /// feeds the watchdog.
    pub(super) async fn keep_starting(self) {
        let mut tick = tokio::time::interval(self.tick(EXTEND_EVERY));
        let mut ticks = 0u64;
        loop {
            tick.tick().await;
            let mut states = vec![NotifyState::Status("starting")];
            if self.watchdog_every.is_some() {
                states.push(NotifyState::Watchdog);
            }
            // The first beat needs no extension: the unit's own timeout covers it.
            let extend = u32::try_from(EXTEND_BY.as_micros()).unwrap_or(u32::MAX);
            if ticks > 0 {
                states.push(NotifyState::ExtendTimeoutUsec(extend));
            }
            ticks += 1;
            send(&states);
        }
    }

    pub(super) fn ready(&self, status: &NodeStatus, health: &HealthCheckConfig) {
        send(&[
            NotifyState::Ready,
            NotifyState::Status(&status_line(status, health)),
        ]);
    }

    pub(super) fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Task body once running: `STATUS=` every few seconds, and the watchdog while the
    /// heartbeat is fresh.
    pub(super) async fn run(
        self,
        status: Arc<NodeStatus>,
        health: HealthCheckConfig,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.tick(STATUS_EVERY));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let line = status_line(&status, &health);
            let mut states = vec![NotifyState::Status(&line)];
            if self.watchdog_every.is_some() {
                if alive(&status) {
                    states.push(NotifyState::Watchdog);
                } else {
                    warn!("the runtime's heartbeat is stale: not feeding the systemd watchdog");
                }
            }
            send(&states);
        }
    }

    /// The loop period: `every`, or the watchdog's when that is shorter.
    fn tick(&self, every: Duration) -> Duration {
        self.watchdog_every.map_or(every, |w| w.min(every))
    }
}

/// `WATCHDOG_USEC` when the watchdog applies to `pid` (sd_watchdog_enabled(3): a
/// `WATCHDOG_PID` naming another process means it is not ours).
fn watchdog_usec(usec: Option<&str>, watchdog_pid: Option<&str>, pid: u32) -> Option<u64> {
    let usec = usec?.parse::<u64>().ok().filter(|u| *u > 0)?;
    match watchdog_pid {
        Some(p) if p.parse::<u32>().ok() != Some(pid) => None,
        _ => Some(usec),
    }
}

/// The runtime's heartbeat beat recently (`/health/live`'s rule).
fn alive(status: &NodeStatus) -> bool {
    let beat = status.liveness.heartbeat_ms.load(Ordering::Relaxed);
    beat > 0 && now_ms().saturating_sub(beat) < HEARTBEAT_STALE.as_millis() as u64
}

/// One line for `systemctl status`: "replicating, 3 tables, lag 0.2 s", or "not ready: …"
/// with the first reason (and how many more).
fn status_line(status: &NodeStatus, health: &HealthCheckConfig) -> String {
    // The writer's own errors stop the node; the database is taken as answering here.
    let report = build_report(status, true);
    let reasons = not_ready_reasons(status, health, &report);
    match reasons.split_first() {
        None => {
            let tables = status.tables_tracked.load(Ordering::Relaxed);
            let lag = status
                .shard_lag()
                .iter()
                .map(|l| l.seconds)
                .fold(0.0_f64, f64::max);
            format!("replicating, {tables} tables, lag {lag:.1} s")
        }
        Some((first, [])) => format!("not ready: {first}"),
        Some((first, rest)) => format!("not ready: {first} (and {} more)", rest.len()),
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;

    #[test]
    fn the_watchdog_is_ours_unless_another_pid_is_named() {
        assert_eq!(watchdog_usec(Some("30000000"), None, 7), Some(30_000_000));
        assert_eq!(
            watchdog_usec(Some("30000000"), Some("7"), 7),
            Some(30_000_000)
        );
        assert_eq!(watchdog_usec(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_usec(Some("0"), None, 7), None);
        assert_eq!(watchdog_usec(Some("x"), None, 7), None);
        assert_eq!(watchdog_usec(None, Some("7"), 7), None);
    }

    #[test]
    fn status_line_says_why_not_ready() {
        let status = NodeStatus::new(NodeId(1));
        let line = status_line(&status, &HealthCheckConfig::default());
        assert!(line.starts_with("not ready: "), "{line}");
        assert!(line.contains("more)"), "{line}");
    }

    #[test]
    fn a_stale_heartbeat_is_not_alive() {
        let status = NodeStatus::new(NodeId(1));
        assert!(!alive(&status), "never beat");
        status
            .liveness
            .heartbeat_ms
            .store(now_ms(), Ordering::Relaxed);
        assert!(alive(&status));
        let stale = now_ms() - HEARTBEAT_STALE.as_millis() as u64 - 1;
        status.liveness.heartbeat_ms.store(stale, Ordering::Relaxed);
        assert!(!alive(&status));
    }
}
