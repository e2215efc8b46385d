//! Wiring: builds every subsystem, owns the root cancellation token and the task sets, and stops
//! everything in order. `start` starts the parts (its module doc gives the order), `supervise`
//! watches them while the node runs, `stop` takes them down.
//!
//! Shutdown order: stop intake (watcher, web servers) and every task — the publisher finishes
//! the round it is in, so its in-flight publishes are acked; consumers commit and ack the batch
//! they hold — then the sequence map is flushed, the writer thread closes, the NATS client
//! flushes, and the bundled nats-server gets SIGTERM (SIGKILL past its grace). One deadline
//! covers the task drain.

mod chores;
mod engine;
mod recovery;
mod start;
mod systemd;

pub use start::Insecure;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::task::AbortOnDropHandle;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::db::AcceptedGap;
use crate::db::WriterHandle;
use crate::error::Chain;
use crate::instance::InstanceLock;
use crate::maintenance::Maintenance;
use crate::metrics::Metrics;
use crate::nats::server::{EmbeddedOptions, EmbeddedServer};
use crate::snapshot::service::ProgressFn;
use crate::status::NodeStatus;
use crate::tasks::{TaskExit, Tasks};
use engine::Engine;
use systemd::Systemd;

const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// What `run` needs besides the config file: the bundled server's cluster flags.
#[derive(Clone)]
pub struct Settings {
    pub config: Config,
    pub embedded: EmbeddedOptions,
    /// `-save-snapshot`: take one snapshot once ready, report progress here, then stop.
    pub save_snapshot: Option<ProgressFn>,
    /// `-accept-gaps`: the operator accepts, for this run, the loss of what a gap misses.
    pub accept_gaps: bool,
    /// `-force-restore`: a snapshot replaces the database (whatever its floors and schema)
    /// instead of being merged into it.
    pub force_restore: bool,
}

impl Settings {
    /// A plain run of `config`: no snapshot to save, nothing forced, no gap accepted.
    pub fn new(config: Config, embedded: EmbeddedOptions) -> Settings {
        Settings {
            config,
            embedded,
            save_snapshot: None,
            accept_gaps: false,
            force_restore: false,
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Stopped on request (signal, test or `-save-snapshot` done): exit 0.
    Stopped,
    /// Nothing was published or applied for `sleep_timeout`: exit 0.
    Slept,
    /// A task ended or failed: exit 1.
    Fatal(String),
}

/// Runs a node until `stop` resolves or a task fails. `status` and `metrics` are the caller's
/// view of the running node (health, dashboard, tests).
pub async fn run(
    settings: Settings,
    status: Arc<NodeStatus>,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    let span = tracing::info_span!("node", id = %status.node_id);
    tracing::Instrument::instrument(
        async move {
            let systemd = Systemd::from_env();
            // Short-lived: aborted when the start returns (or this future is dropped), so it
            // is not one of the node's tasks.
            let starting =
                systemd.map(|sd| AbortOnDropHandle::new(tokio::spawn(sd.keep_starting())));
            let started = start::start(settings, status, metrics).await;
            drop(starting);
            let mut node = started?;
            if let Some(sd) = systemd {
                let health = node.cfg.health_check.clone();
                sd.ready(&node.status, &health);
                let task = sd.run(node.status.clone(), health, node.tasks.token());
                node.tasks.spawn("systemd", task);
            }
            let outcome = node.supervise(stop).await;
            if let Some(sd) = systemd {
                sd.stopping();
            }
            Ok(node.stop(outcome).await)
        },
        span,
    )
    .await
}

/// A started node: everything `supervise` watches and `stop` takes down.
struct Running {
    cfg: Arc<Config>,
    status: Arc<NodeStatus>,
    writer: WriterHandle,
    client: async_nats::Client,
    server: Option<EmbeddedServer>,
    /// Every long-running task but the engine's.
    tasks: Tasks,
    /// What the engine is built from, to restart it.
    engine: Engine,
    /// The replication engine's tasks (publisher, consumers).
    running: Tasks,
    /// Maintenance requests (restores, accepted gaps, quarantine decisions).
    maintenance: tokio::sync::mpsc::Receiver<Maintenance>,
    /// One process per node: held until everything above has stopped.
    lock: InstanceLock,
}

impl Running {
    /// Runs until `stop` resolves or a task ends, carrying out maintenance requests with the
    /// engine stopped around them.
    async fn supervise(&mut self, stop: impl Future<Output = ()>) -> Outcome {
        tokio::pin!(stop);
        loop {
            let request = tokio::select! {
                _ = &mut stop => return Outcome::Stopped,
                exit = self.tasks.next_exit() => return task_outcome(exit),
                exit = self.running.next_exit() => return task_outcome(exit),
                request = self.maintenance.recv() => request,
            };
            let Some(request) = request else { continue };
            if let Err(error) = self.maintain(request).await {
                return Outcome::Fatal(format!("cannot restart the engine: {error:#}"));
            }
        }
    }

    /// Carries out one maintenance request; the engine is stopped while positions change.
    async fn maintain(&mut self, request: Maintenance) -> anyhow::Result<()> {
        match request {
            Maintenance::Quarantine { id, apply, reply } => {
                let done = self.writer.release_quarantined(id, apply).await;
                let _ = reply.send(done.map_err(|e| Chain(&e).to_string()));
                return Ok(());
            }
            Maintenance::Restore {
                fetched,
                force,
                reply,
            } => {
                self.running.drain(SHUTDOWN_DEADLINE).await;
                let e = &self.engine;
                e.status.restoring.store(true, Ordering::Relaxed);
                let restored = crate::snapshot::restore::install(
                    fetched, &e.cfg, &e.writer, &e.metrics, force,
                )
                .await;
                e.status.restoring.store(false, Ordering::Relaxed);
                if let Ok(report) = &restored {
                    e.status.recovery.clear();
                    // A replaced database no longer holds what this node published: a trimmed
                    // run of its own messages is a gap again (a merge keeps them all).
                    if report.merged.is_none() {
                        e.own_seqs.forget();
                    }
                }
                let _ = reply.send(restored.map_err(|e| Chain(&e).to_string()));
            }
            Maintenance::Accept { how, reply } => {
                self.running.drain(SHUTDOWN_DEADLINE).await;
                let accepted = self.accept(&how).await;
                let _ = reply.send(accepted);
            }
            Maintenance::StartConsumers => {
                self.running.drain(SHUTDOWN_DEADLINE).await;
                self.engine.status.recovery.set_waiting_for_snapshot(None);
            }
        }
        self.running = self.engine.spawn(self.tasks.token())?;
        Ok(())
    }

    /// Records every open gap as accepted (and lets a new database replicate without a
    /// snapshot); returns how many gaps.
    async fn accept(&self, how: &str) -> Result<usize, String> {
        let e = &self.engine;
        let facts = e.status.recovery.facts();
        if let Some(why) = &facts.waiting_for_snapshot {
            let accepted = AcceptedGap {
                stream: AcceptedGap::ALL_STREAMS.to_owned(),
                incarnation: String::new(),
                first_missing: 0,
                last_missing: 0,
                how: format!("{how}: replicating without a snapshot ({why})"),
            };
            e.writer
                .accept_gap(accepted)
                .await
                .map_err(|err| Chain(&err).to_string())?;
            e.metrics.gaps_accepted.inc();
            error!(
                how,
                "a new database replicates without a snapshot, on an operator's decision"
            );
        }
        for gap in &facts.gaps {
            let accepted = AcceptedGap {
                stream: gap.stream.clone(),
                incarnation: gap.incarnation.clone(),
                first_missing: gap.first_missing,
                last_missing: gap.last_missing,
                how: how.to_owned(),
            };
            e.writer
                .accept_gap(accepted)
                .await
                .map_err(|err| Chain(&err).to_string())?;
            e.metrics.gaps_accepted.inc();
            error!(
                stream = %gap.stream,
                first_missing = gap.first_missing,
                last_missing = gap.last_missing,
                how,
                "gap accepted: the changes in this range are missing on this node for good"
            );
        }
        e.status.recovery.clear();
        Ok(facts.gaps.len())
    }

    /// Stops everything in the shutdown order; past the drain deadline the outcome is fatal.
    async fn stop(mut self, outcome: Outcome) -> Outcome {
        if let Outcome::Slept = outcome {
            info!("idle for sleep_timeout, exiting");
        }
        info!("shutting down");
        self.status.ready.store(false, Ordering::Relaxed);
        let drained =
            self.running.drain(SHUTDOWN_DEADLINE).await & self.tasks.drain(SHUTDOWN_DEADLINE).await;
        if let Err(error) = chores::flush_seq_map(&self.cfg, &self.writer).await {
            warn!(error = %format!("{error:#}"), "cannot write the sequence map at shutdown");
        }
        drop(self.writer);
        drop(self.engine);
        // Drain: flush what is buffered and close the connection before the bundled server
        // stops, so the client does not see the server vanish and start reconnecting.
        match tokio::time::timeout(Duration::from_secs(5), self.client.drain()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(error = %Chain(&error), "cannot drain the NATS connection"),
            Err(_) => warn!("draining the NATS connection timed out"),
        }
        drop(self.client);
        stop_server(self.server).await;
        drop(self.lock);
        info!("stopped");
        match outcome {
            Outcome::Stopped if !drained => Outcome::Fatal("shutdown deadline passed".to_owned()),
            other => other,
        }
    }
}

/// How the node ends when a task ends.
fn task_outcome(exit: TaskExit) -> Outcome {
    let reason = match exit.result {
        Ok(()) if exit.name == "save-snapshot" => return Outcome::Stopped,
        Ok(()) if exit.name == "sleep" => return Outcome::Slept,
        Ok(()) => format!("task {} ended unexpectedly", exit.name),
        Err(e) => format!("task {} failed: {e:#}", exit.name),
    };
    error!(%reason, "stopping the node");
    Outcome::Fatal(reason)
}

async fn stop_server(server: Option<EmbeddedServer>) {
    if let Some(server) = server {
        server.stop().await;
    }
}
