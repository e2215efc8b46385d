//! Getting back what the node lacks: the task that closes gaps and fills a new database with a
//! snapshot, and the maintenance requests that stop the replication engine around a change of
//! its positions (a restore, an accepted gap).
//!
//! The rules (`docs/decisions/006-positions-and-recovery.md`):
//! - a gap closes only through a verified snapshot that covers it, or an operator's explicit,
//!   recorded decision (`-accept-gaps`, the dashboard); never by itself, also not with
//!   snapshots disabled;
//! - a new database without the application's tables restores a snapshot; with none in the
//!   store and nothing in the streams, there is nothing to restore and it starts as it is (an
//!   all-new cluster);
//! - when no snapshot covers what it needs, the node asks the snapshot leader for one, and
//!   keeps trying with backoff; meanwhile it is not ready and says why.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::db::restore::RestoreReport;
use crate::error::Chain;
use crate::ids::ShardId;
use crate::maintenance::{Maintenance, MaintenanceHandle};
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::snapshot::leader::Lease;
use crate::snapshot::restore::{Fetched, Needs, fetch_newest};
use crate::snapshot::store::Store;
use crate::status::{NodeStatus, RecoveryFacts};

/// Waits between attempts while the node lacks data. Capped low: such an attempt lists the
/// store and asks the leader, and a node that lacks data is not ready, so it looks again soon
/// after a snapshot it asked for can have been taken (the leader takes one at once, or as soon
/// as its store answers again after an outage).
const ATTEMPTS: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(5));
/// Waits after a snapshot was downloaded and not restored: the next attempt downloads it again.
const AFTER_FAILED_RESTORE: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(30));
/// After a request the supervisor carries out, the next look unless the facts change first.
const AFTER_DONE: Duration = Duration::from_secs(1);

/// What the recovery task works with.
pub(super) struct RecoveryTask {
    pub cfg: Arc<Config>,
    pub js: jetstream::Context,
    pub status: Arc<NodeStatus>,
    pub metrics: Arc<Metrics>,
    pub maintenance: MaintenanceHandle,
    /// `-accept-gaps`: the operator accepted, at start, every gap this run finds.
    pub accept_gaps: bool,
    /// `-force-restore`: a snapshot replaces the database instead of being merged into it.
    pub force_restore: bool,
}

/// How one attempt ended.
enum Attempt {
    Done,
    /// Still lacking; the reason is shown until the next attempt.
    Waiting(String),
    /// A downloaded snapshot was not restored; the reason is shown until the next attempt,
    /// which waits longer (`AFTER_FAILED_RESTORE`).
    Failed(String),
}

impl RecoveryTask {
    /// Task body: whenever the node lacks data, tries to get it back, with backoff.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let recovery = &self.status.recovery;
        let mut backoff = ATTEMPTS;
        let mut after_failure = AFTER_FAILED_RESTORE;
        loop {
            let facts = recovery.facts();
            let wait = if facts.lacks_data() {
                // Cancellable as a whole: a maintenance reply never comes once the node stops.
                let attempt = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(()),
                    attempt = self.attempt(&facts) => attempt,
                };
                match attempt {
                    Attempt::Done => {
                        backoff.reset();
                        after_failure.reset();
                        recovery.set_blocked(None);
                        // The supervisor changes the facts once it carried the request out.
                        AFTER_DONE
                    }
                    Attempt::Waiting(why) => {
                        recovery.set_blocked(Some(why));
                        backoff.next_delay()
                    }
                    Attempt::Failed(why) => {
                        recovery.set_blocked(Some(why));
                        after_failure.next_delay()
                    }
                }
            } else {
                backoff.reset();
                after_failure.reset();
                Duration::MAX
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                _ = recovery.changed() => {}
                _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => {}
            }
        }
    }

    async fn attempt(&self, facts: &RecoveryFacts) -> Attempt {
        let needs = Self::needs(facts);
        let fetched = if self.cfg.snapshot.enabled {
            match self.fetch(&needs).await {
                Ok(fetched) => fetched,
                Err(why) => return Attempt::Waiting(why),
            }
        } else {
            None
        };
        match fetched {
            Some(fetched) => self.restore(fetched, facts, &needs).await,
            None if facts.gaps.is_empty() && self.streams_empty().await => {
                info!("nothing to restore: no snapshot and nothing in the streams");
                let _ = self.maintenance.send(Maintenance::StartConsumers).await;
                Attempt::Done
            }
            // The operator accepted the loss at start: a snapshot that covers it is still
            // preferred (tried above); without one, the loss is taken and recorded.
            None if self.accept_gaps => {
                match self.maintenance.accept_gaps("flag -accept-gaps").await {
                    Ok(_) => Attempt::Done,
                    Err(why) => Attempt::Waiting(why),
                }
            }
            None => self.ask_for_snapshot(facts, needs).await,
        }
    }

    /// What a snapshot must cover: every open gap. Nothing else: a snapshot is merged into a
    /// database that holds data (`db::merge`), so its floors on other streams cannot take
    /// anything away, and any snapshot does for a new database.
    fn needs(facts: &RecoveryFacts) -> Needs {
        let covers = facts
            .gaps
            .iter()
            .map(|g| (g.stream.clone(), g.last_missing))
            .collect();
        Needs { covers }
    }

    async fn fetch(&self, needs: &Needs) -> Result<Option<Fetched>, String> {
        let store = Store::open(&self.cfg, Some(&self.js))
            .await
            .map_err(|e| format!("the snapshot store is unavailable: {}", Chain(&e)))?;
        fetch_newest(&store, &self.cfg, &self.metrics, needs)
            .await
            .map_err(|e| format!("cannot fetch a snapshot: {}", Chain(&e)))
    }

    async fn restore(&self, fetched: Fetched, facts: &RecoveryFacts, needs: &Needs) -> Attempt {
        let id = fetched.manifest.id.clone();
        let (reply, rx) = oneshot::channel();
        let asked = Maintenance::Restore {
            fetched,
            force: self.force_restore,
            reply,
        };
        if let Err(why) = self.maintenance.send(asked).await {
            return Attempt::Waiting(why);
        }
        match rx.await {
            Ok(Ok(report)) => match uncovered(needs, &report) {
                None => Attempt::Done,
                // The snapshot's floor was not taken (it read another incarnation of the
                // stream): ask for a new one instead of merging this one again.
                Some((stream, last)) => {
                    warn!(snapshot = %id, stream, "the restored snapshot did not close the gap");
                    let _ = self.ask_for_snapshot(facts, needs.clone()).await;
                    Attempt::Waiting(format!(
                        "snapshot {id} did not bring {stream} to {last}; asked the snapshot \
                         leader for a newer one"
                    ))
                }
            },
            Ok(Err(why)) => {
                warn!(snapshot = %id, reason = %why, "snapshot not restored");
                // Only a refusal is the operator's to override; other failures are retried.
                let hint = if why.starts_with("snapshot refused") {
                    "; restart with -force-restore to replace this database with it"
                } else {
                    ""
                };
                Attempt::Failed(format!("snapshot {id} not restored: {why}{hint}"))
            }
            Err(_) => Attempt::Waiting("the node is stopping".to_owned()),
        }
    }

    /// No snapshot meets what the node needs: asks the leader to take one now.
    async fn ask_for_snapshot(&self, facts: &RecoveryFacts, needs: Needs) -> Attempt {
        let what = match facts.gaps.first() {
            Some(g) => format!(
                "{} misses {}..={} (history trimmed)",
                g.stream, g.first_missing, g.last_missing
            ),
            None => facts.waiting_for_snapshot.clone().unwrap_or_default(),
        };
        if !self.cfg.snapshot.enabled {
            return Attempt::Waiting(format!(
                "{what}; snapshots are disabled: restore a copy by hand, or accept the loss \
                 (dashboard, or restart with -accept-gaps)"
            ));
        }
        let mut lease = Lease::new(
            self.js.clone(),
            self.status.node_id,
            self.cfg.snapshot_leader_ttl(),
            self.cfg.replicas(),
        );
        match lease.request(&what, needs.covers).await {
            Ok(()) => Attempt::Waiting(format!(
                "{what}; no snapshot covers it yet, asked the snapshot leader for one"
            )),
            Err(e) => Attempt::Waiting(format!(
                "{what}; cannot ask the snapshot leader for a snapshot: {e:#}"
            )),
        }
    }

    /// Whether every stream is empty (nothing was ever published, or all of it is gone).
    async fn streams_empty(&self) -> bool {
        for n in 0..self.cfg.replication_log.shards {
            let name = self.cfg.stream_name(ShardId(n));
            let Ok(mut stream) = self.js.get_stream(&name).await else {
                return false;
            };
            match stream.info().await {
                Ok(info) if info.state.messages == 0 => {}
                _ => return false,
            }
        }
        true
    }
}

/// The first stream of `needs` whose floor the restore did not bring far enough, if any.
fn uncovered(needs: &Needs, report: &RestoreReport) -> Option<(String, u64)> {
    needs
        .covers
        .iter()
        .find(|(stream, last)| report.sequences.get(stream).is_none_or(|f| f.0 < *last))
        .cloned()
}
