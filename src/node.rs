//! Wiring: builds every subsystem, owns the root cancellation token and the task set, and stops
//! everything in order.
//!
//! Start order: web listeners (bound first: a taken port fails fast) → database writer and
//! capture (so local writes are captured even while NATS is unreachable) → schema hash (previous
//! one restored) → NATS (bundled server, client) → streams → tasks (watcher, publisher, one
//! consumer per shard, schema tracker, schema registry, housekeeping, web sampler and servers).
//!
//! Shutdown order: stop intake (watcher, web servers) and every task — the publisher finishes
//! the round it is in, so its in-flight publishes are acked; consumers commit and ack the batch
//! they hold — then the sequence map is flushed, the writer thread closes, the NATS client
//! flushes, and the bundled nats-server gets SIGTERM (SIGKILL past its grace). One deadline
//! covers the task drain.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cdc;
use crate::config::Config;
use crate::db::{Reader, WriterHandle};
use crate::ids::ShardId;
use crate::metrics::Metrics;
use crate::nats::client::{self, ConnectionState};
use crate::nats::server::{EmbeddedOptions, EmbeddedServer, ServerAuth, ServerSpec};
use crate::nats::setup;
use crate::replication::consumer::GapDetected;
use crate::replication::consumer::ShardConsumer;
use crate::replication::publisher::Publisher;
use crate::replication::seq_map;
use crate::schema::{SchemaTracker, registry};
use crate::snapshot::{self, SnapshotHandle, Snapshotter, service::ProgressFn};
use crate::status::NodeStatus;
use crate::tasks::Tasks;
use crate::web;

const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);
/// How long a node behind a trimmed stream waits for a snapshot that covers the gap (the
/// leader takes one as the stream grows) before it goes on without one.
const GAP_WAIT: Duration = Duration::from_secs(90);
const GAP_RETRY: Duration = Duration::from_secs(3);

/// What `run` needs besides the config file: the bundled server's cluster flags.
#[derive(Clone)]
pub struct Settings {
    pub config: Config,
    pub embedded: EmbeddedOptions,
    /// `-save-snapshot`: take one snapshot once ready, report progress here, then stop.
    pub save_snapshot: Option<ProgressFn>,
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

/// Runs a node until `stop` resolves or a task fails.
pub async fn run(
    settings: Settings,
    status: Arc<NodeStatus>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    let span = tracing::info_span!("node", id = %status.node_id);
    tracing::Instrument::instrument(run_node(settings, status, stop), span).await
}

async fn run_node(
    settings: Settings,
    status: Arc<NodeStatus>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    crate::install_crypto_provider();
    let cfg = Arc::new(settings.config);
    let local = cfg.node_id();
    let data_dir = cfg.data_dir();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", data_dir.display()))?;
    // Web listeners first: a taken port fails the start before anything else runs.
    let listeners = web::Listeners::bind(&cfg).await?;
    status.set_web_addrs(listeners.addrs());
    status.set_metrics(Arc::new(Metrics::new(&cfg.prometheus, local)?));

    // Decided before anything opens (and so creates) the database.
    let restore_reason = snapshot::restore::needed_at_start(&cfg);
    let writer = WriterHandle::spawn(&cfg.db_path, local, cfg.sharding.ignore_tables.clone())?;
    let capture = writer.install_capture().await?;
    status.cdc_installed.store(true, Ordering::Relaxed);
    status
        .tables_tracked
        .store(capture.tables.len() as u64, Ordering::Relaxed);
    info!(node_id = %local, tables = capture.tables.len(), db = %cfg.db_path.display(), "capture installed");
    let schema = SchemaTracker::start(&cfg, writer.clone(), status.clone()).await?;

    let server = if cfg.nats.urls.is_empty() {
        let spec = embedded_spec(&cfg, &settings.embedded)?;
        let server = EmbeddedServer::start(spec, &data_dir.join("nats")).await?;
        status.set_server(server.state());
        Some(server)
    } else {
        None
    };
    let urls = match &server {
        Some(s) => vec![s.client_url()],
        None => cfg.nats.urls.clone(),
    };
    let connection = Arc::new(ConnectionState::default());
    let client = match client::connect(&cfg.nats, &urls, connection.clone()).await {
        Ok(c) => c,
        Err(e) => {
            stop_server(server).await;
            return Err(e.into());
        }
    };
    status.set_nats(urls, connection);
    let js = jetstream::new(client.clone());
    if let Err(e) = setup::ensure_streams(&js, &cfg).await {
        stop_server(server).await;
        return Err(e.into());
    }

    let cancel = CancellationToken::new();
    let mut tasks = Tasks::new(cancel.clone());
    let wake = Arc::new(Notify::new());
    tasks.spawn(
        "cdc-watch",
        cdc::watch::run(
            cfg.db_path.clone(),
            cfg.polling_interval(),
            wake.clone(),
            tasks.token(),
        ),
    );
    let engine = Engine {
        cfg: cfg.clone(),
        js: js.clone(),
        writer: writer.clone(),
        status: status.clone(),
        wake: wake.clone(),
        schema: schema.clone(),
    };
    if let Some(reason) = restore_reason
        && let Err(error) =
            snapshot::restore::restore_latest(&cfg, &js, &writer, &status, reason, None).await
    {
        error!(error = %format!("{error:#}"), "cannot restore a snapshot at start; replicating from the stream");
    }
    let (snapshotter, snapshots) =
        Snapshotter::new(cfg.clone(), js.clone(), status.clone(), writer.clone());
    tasks.spawn("snapshot", snapshotter.run(tasks.token()));
    if let Some(idle) = cfg.sleep_timeout() {
        tasks.spawn(
            "sleep",
            sleep_when_idle(idle, status.clone(), snapshots.clone(), tasks.token()),
        );
    }
    let mut running = engine.spawn(tasks.token(), !cfg.snapshot.enabled)?;
    tasks.spawn(
        "schema-registry",
        registry::run(
            cfg.clone(),
            js.clone(),
            schema.gate().clone(),
            tasks.token(),
        ),
    );
    tasks.spawn("schema", schema.run(tasks.token()));
    tasks.spawn(
        "housekeeping",
        housekeeping(cfg.clone(), writer.clone(), tasks.token()),
    );
    let web = web::WebState::new(cfg.clone(), status.clone(), js.clone(), settings.embedded)?;
    web.set_snapshots(snapshots.clone());
    tasks.spawn("web-sampler", web::sampler::run(web.clone(), tasks.token()));
    if let Some(l) = listeners.health {
        tasks.spawn("health", web::serve_health(l, web.clone(), tasks.token()));
    }
    if let Some(l) = listeners.metrics {
        tasks.spawn("metrics", web::serve_metrics(l, web.clone(), tasks.token()));
    }
    if let Some(l) = listeners.admin {
        tasks.spawn("admin", web::serve_admin(l, web, tasks.token()));
    }
    status.ready.store(true, Ordering::Relaxed);
    info!(node_id = %local, "node ready");

    if let Some(save) = settings.save_snapshot {
        tasks.spawn("save-snapshot", save_and_stop(snapshots.clone(), save));
    }
    tokio::pin!(stop);
    let outcome = loop {
        tokio::select! {
            _ = &mut stop => break Outcome::Stopped,
            exit = tasks.next_exit() => break task_outcome(exit),
            exit = running.next_exit() => {
                let Some(gap) = exit.result.as_ref().err().and_then(|e| e.downcast_ref::<GapDetected>()) else {
                    break task_outcome(exit);
                };
                let gap = gap.clone();
                running.drain(SHUTDOWN_DEADLINE).await;
                let accept_gaps = tokio::select! {
                    _ = &mut stop => break Outcome::Stopped,
                    closed = close_gap(&cfg, &js, &writer, &status, &gap) => !closed,
                };
                running = engine.spawn(tasks.token(), accept_gaps)?;
            }
        }
    };
    if let Outcome::Slept = outcome {
        info!("idle for sleep_timeout, exiting");
    }
    info!("shutting down");
    status.ready.store(false, Ordering::Relaxed);
    let drained = running.drain(SHUTDOWN_DEADLINE).await & tasks.drain(SHUTDOWN_DEADLINE).await;
    if let Err(error) = flush_seq_map(&cfg, &writer).await {
        warn!(%error, "cannot write the sequence map at shutdown");
    }
    drop(writer);
    // Drain: flush what is buffered and close the connection before the bundled server stops,
    // so the client does not see the server vanish and start reconnecting.
    match tokio::time::timeout(Duration::from_secs(5), client.drain()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "cannot drain the NATS connection"),
        Err(_) => warn!("draining the NATS connection timed out"),
    }
    drop(client);
    stop_server(server).await;
    info!("stopped");
    Ok(match outcome {
        Outcome::Stopped if !drained => Outcome::Fatal("shutdown deadline passed".to_owned()),
        other => other,
    })
}

/// The replication engine: the publisher and one consumer per shard. It is restarted, apart
/// from everything else, after a snapshot restore, so every shard resumes from the snapshot's
/// sequences and the publisher re-reads its watermarks.
struct Engine {
    cfg: Arc<Config>,
    js: jetstream::Context,
    writer: WriterHandle,
    status: Arc<NodeStatus>,
    wake: Arc<Notify>,
    schema: SchemaTracker,
}

impl Engine {
    fn spawn(&self, cancel: CancellationToken, accept_gaps: bool) -> anyhow::Result<Tasks> {
        let cfg = &self.cfg;
        let mut tasks = Tasks::new(cancel);
        if cfg.publish {
            let publisher = Publisher {
                cfg: cfg.clone(),
                js: self.js.clone(),
                writer: self.writer.clone(),
                reader: Arc::new(std::sync::Mutex::new(Reader::open(&cfg.db_path)?)),
                status: self.status.clone(),
                wake: self.wake.clone(),
                schema: self.schema.clone(),
                unpersisted: Default::default(),
            };
            self.wake.notify_one();
            tasks.spawn("publisher", publisher.run(tasks.token()));
        }
        if cfg.replicate {
            for n in 0..cfg.replication_log.shards {
                let consumer = ShardConsumer {
                    cfg: cfg.clone(),
                    shard: ShardId(n),
                    js: self.js.clone(),
                    writer: self.writer.clone(),
                    status: self.status.clone(),
                    gate: self.schema.gate().clone(),
                    accept_gaps,
                };
                tasks.spawn("consumer", consumer.run(tasks.token()));
            }
        }
        Ok(tasks)
    }
}

/// Restores a snapshot that covers `gap`, waiting up to `GAP_WAIT` for one to appear; false when
/// none did (snapshots off, store failing, or no snapshot new enough).
async fn close_gap(
    cfg: &Config,
    js: &jetstream::Context,
    writer: &WriterHandle,
    status: &Arc<NodeStatus>,
    gap: &GapDetected,
) -> bool {
    if !cfg.snapshot.enabled {
        return false;
    }
    let needs = snapshot::restore::Needs {
        stream: gap.stream.clone(),
        first: gap.first,
    };
    let deadline = std::time::Instant::now() + GAP_WAIT;
    let reason = gap.to_string();
    loop {
        status.restoring.store(true, Ordering::Relaxed);
        match snapshot::restore::restore_latest(cfg, js, writer, status, &reason, Some(&needs))
            .await
        {
            Ok(snapshot::restore::Restored::From(_)) => return true,
            Ok(snapshot::restore::Restored::NothingToRestore) => {}
            Err(error) => {
                error!(error = %format!("{error:#}"), "cannot restore a snapshot to close the gap")
            }
        }
        if std::time::Instant::now() >= deadline {
            status.restoring.store(false, Ordering::Relaxed);
            error!(
                wait_s = GAP_WAIT.as_secs(),
                "no snapshot covers the gap; going on without one"
            );
            return false;
        }
        status.restoring.store(true, Ordering::Relaxed);
        tokio::time::sleep(GAP_RETRY).await;
    }
}

/// How the node ends when a task ends.
fn task_outcome(exit: crate::tasks::TaskExit) -> Outcome {
    let reason = match exit.result {
        Ok(()) if exit.name == "save-snapshot" => return Outcome::Stopped,
        Ok(()) if exit.name == "sleep" => return Outcome::Slept,
        Ok(()) => format!("task {} ended unexpectedly", exit.name),
        Err(e) => format!("task {} failed: {e:#}", exit.name),
    };
    error!(%reason, "stopping the node");
    Outcome::Fatal(reason)
}

/// `-save-snapshot`: one snapshot, then the node stops (the task ending is the signal).
async fn save_and_stop(snapshots: SnapshotHandle, progress: ProgressFn) -> anyhow::Result<()> {
    let manifest = snapshots.take_now(Some(progress)).await?;
    info!(id = %manifest.id, size = manifest.size, "snapshot saved");
    Ok(())
}

/// `sleep_timeout`: once nothing was published or applied for `idle`, take a snapshot if
/// leader, then end (the node exits 0).
async fn sleep_when_idle(
    idle: Duration,
    status: Arc<NodeStatus>,
    snapshots: SnapshotHandle,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let started = crate::hlc::now_ms();
    loop {
        let last = status
            .last_published_ms
            .load(Ordering::Relaxed)
            .max(status.last_applied_ms.load(Ordering::Relaxed))
            .max(started);
        let quiet = Duration::from_millis(crate::hlc::now_ms().saturating_sub(last));
        if quiet >= idle {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep((idle - quiet).max(Duration::from_millis(100))) => {}
        }
    }
    if snapshots.is_leader() {
        match snapshots.take_now(None).await {
            Ok(m) => info!(id = %m.id, "snapshot taken before sleeping"),
            Err(error) => warn!(error = %format!("{error:#}"), "snapshot before sleeping failed"),
        }
    }
    Ok(())
}

async fn stop_server(server: Option<EmbeddedServer>) {
    if let Some(server) = server {
        server.stop().await;
    }
}

/// The bundled server's config, from `[nats]`, `[replication]` and the cluster flags.
fn embedded_spec(cfg: &Config, flags: &EmbeddedOptions) -> anyhow::Result<ServerSpec> {
    if flags.cluster_addr.is_some() && flags.cluster_peers.is_empty() {
        warn!("-cluster-addr without -cluster-peers: the bundled server runs standalone");
    }
    let (host, port) = crate::config::parse_nats_bind(&cfg.nats.bind_address)?;
    let auth = if !cfg.nats.seed_file.is_empty() {
        let seed = client::read_seed(&cfg.nats.seed_file)?;
        ServerAuth::Nkey {
            public: client::public_key_of_seed(&seed, &cfg.nats.seed_file)?,
        }
    } else if !cfg.nats.user_name.is_empty() {
        ServerAuth::UserPassword {
            user: cfg.nats.user_name.clone(),
            password: cfg.nats.user_password.expose().clone(),
        }
    } else {
        ServerAuth::None
    };
    Ok(ServerSpec {
        name: format!("harmonylite-node-{}", cfg.node_id()),
        host,
        port,
        store_dir: cfg.data_dir().join("nats").join("jetstream"),
        cluster_listen: flags.cluster_addr.clone(),
        routes: flags.cluster_peers.clone(),
        leaf_remotes: flags.leaf_servers.clone(),
        auth,
        max_payload: cfg.max_payload_bytes(),
        operator_config: (!cfg.nats.server_config.is_empty())
            .then(|| cfg.nats.server_config.clone().into()),
    })
}

/// Every `cleanup_interval`: mirror applied sequences into the seq map file and trim the
/// conflict journal.
async fn housekeeping(
    cfg: Arc<Config>,
    writer: WriterHandle,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    const KEEP_CONFLICTS: u64 = 10_000;
    let mut tick = tokio::time::interval(cfg.cleanup_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(error) = flush_seq_map(&cfg, &writer).await {
            warn!(%error, "cannot write the sequence map");
        }
        if let Err(error) = writer.prune_conflicts(KEEP_CONFLICTS).await {
            warn!(%error, "cannot trim the conflict journal");
        }
    }
}

async fn flush_seq_map(cfg: &Config, writer: &WriterHandle) -> anyhow::Result<()> {
    let seqs = writer.applied_seqs().await?;
    let path = cfg.seq_map_path();
    tokio::task::spawn_blocking(move || seq_map::save(&path, &seqs)).await??;
    Ok(())
}
