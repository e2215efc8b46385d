//! Starting a node, in order: web listeners (bound first: a taken port fails fast) → database
//! writer and capture (so local writes are captured even while NATS is unreachable) → schema
//! hash (previous one restored) → NATS (bundled server, client) → streams → tasks (recovery
//! among them: a new database without the application's tables waits for a snapshot, decided
//! from the database alone).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long the start tries to claim the node id in the registry.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);
const CLAIM_RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

use super::chores::{heartbeat, housekeeping, save_and_stop, sleep_when_idle};
use super::engine::Engine;
use super::recovery::RecoveryTask;
use super::{Outcome, Running, Settings, stop_server};
use crate::config::Config;
use crate::db::WriterHandle;
use crate::error::Chain;
use crate::instance::Instance;
use crate::instance::InstanceLock;
use crate::maintenance::MaintenanceHandle;
use crate::metrics::Metrics;
use crate::nats::client::{self, ConnectionState};
use crate::nats::exposure::{self, Exposure};
use crate::nats::server::{EmbeddedOptions, EmbeddedServer};
use crate::nats::setup;
use crate::nats::spec::ServerSpec;
use crate::retry::Backoff;
use crate::schema::registry::{RegistryEntry, RegistryError};
use crate::schema::{SchemaTracker, identity, registry};
use crate::snapshot::{SnapshotHandle, Snapshotter};
use crate::status::NodeStatus;
use crate::tasks::Tasks;
use crate::{cdc, web};

/// The configuration with what start-up resolves (unset replicas), once its exposure to the
/// network was checked; the streams it reads are recorded in `status`.
fn effective_config(
    mut config: Config,
    embedded: &EmbeddedOptions,
    status: &NodeStatus,
) -> anyhow::Result<Config> {
    let edge = !embedded.leaf_servers.is_empty() && config.nats.urls.is_empty();
    if edge {
        config.check_edge()?;
    }
    config.resolve_replicas(embedded.cluster_peers.len(), edge)?;
    check_insecure(&config, embedded, status)?;
    check_snapshot_signing(&config, status)?;
    let streams = config
        .lanes()
        .into_iter()
        .map(|lane| config.lane_stream(lane));
    status.set_streams(streams.collect());
    Ok(config)
}

/// Starts every part of the node; on an error, what was started is stopped again.
pub(super) async fn start(
    settings: Settings,
    status: Arc<NodeStatus>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Running> {
    crate::install_crypto_provider();
    let cfg = Arc::new(effective_config(
        settings.config,
        &settings.embedded,
        &status,
    )?);
    let lock = take_data_dir(&cfg)?;
    let listeners = web::Listeners::bind(&cfg).await?;
    status.set_web_addrs(listeners.addrs());
    // Decided before anything opens (and so creates) the database.
    let new_database = !crate::db::has_internal_state(&cfg.db_path);
    let (writer, schema, server) =
        open_database_and_server(&cfg, &settings.embedded, &status, &metrics).await?;
    if new_database && status.tables_tracked.load(Ordering::Relaxed) == 0 && cfg.replicate {
        status.recovery.set_waiting_for_snapshot(Some(
            "this database is new and has none of the application's tables".to_owned(),
        ));
    }
    let (server, client) = connect_nats(&cfg, server, &status, &metrics).await?;
    let js = client::jetstream(client.clone(), &cfg.nats);
    let engine = Engine {
        cfg: cfg.clone(),
        js,
        writer: writer.clone(),
        status: status.clone(),
        metrics,
        wake: Arc::new(Notify::new()),
        schema,
        own_seqs: Default::default(),
    };
    let cancel = CancellationToken::new();
    let (maintenance_handle, maintenance) = MaintenanceHandle::channel();
    let mut node = Running {
        cfg,
        status,
        writer,
        client,
        server,
        tasks: Tasks::new(cancel.clone()),
        running: Tasks::new(cancel.child_token()),
        engine,
        maintenance,
        lock,
    };
    let recovery = RecoveryTask {
        cfg: node.cfg.clone(),
        js: node.engine.js.clone(),
        status: node.status.clone(),
        metrics: node.engine.metrics.clone(),
        maintenance: maintenance_handle.clone(),
        accept_gaps: settings.accept_gaps,
        force_restore: settings.force_restore,
    };
    let launched = launch(
        &mut node,
        &settings.embedded,
        listeners,
        recovery,
        maintenance_handle,
    )
    .await;
    let snapshots = match launched {
        Ok(snapshots) => snapshots,
        Err(error) => {
            node.stop(Outcome::Fatal(format!("{error:#}"))).await;
            return Err(error);
        }
    };
    node.status.ready.store(true, Ordering::Relaxed);
    info!(node_id = %node.status.node_id, "node ready");
    if let Some(save) = settings.save_snapshot {
        node.tasks
            .spawn("save-snapshot", save_and_stop(snapshots, save));
    }
    Ok(node)
}

/// A setting the secure defaults refuse on a new installation; `main` exits 2 on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Insecure {
    #[error(transparent)]
    Exposure(#[from] Exposure),
    #[error(transparent)]
    AdminToken(#[from] web::WeakToken),
}

/// Refuses to cluster (or take leaf nodes) beyond loopback without authentication
/// (`nats::exposure`) and a guessable `admin.auth_token` (`web::weak_token`), except on an
/// existing installation (a database that already holds our internal tables): an upgrade must
/// not leave a node down, so it starts with an error in the log at every start and a warning on
/// `/health` and the dashboard.
fn check_insecure(
    cfg: &Config,
    flags: &EmbeddedOptions,
    status: &NodeStatus,
) -> Result<(), Insecure> {
    if exposure::operator_config(cfg).is_some_and(|o| o.cluster.is_some()) {
        warn!(
            server_config = %cfg.nats.server_config,
            "nats.server_config has a cluster block: it replaces the generated one entirely \
             (listen, routes, authorization, tls)"
        );
    }
    let mut found: Vec<Insecure> = exposure::exposures(cfg, flags)
        .into_iter()
        .map(Insecure::from)
        .collect();
    found.extend(web::weak_token(&cfg.admin).map(Insecure::from));
    let existing = !found.is_empty() && crate::db::has_internal_state(&cfg.db_path);
    for insecure in found {
        if !existing {
            return Err(insecure);
        }
        error!(
            "INSECURE: {insecure}. This node starts anyway because its database predates this \
             check; a new installation with these settings is refused"
        );
        status.add_security_warning(insecure.to_string());
    }
    Ok(())
}

/// Reads the snapshot signing keys once, so a bad key file stops the start rather than the first
/// restore; without keys, warns when snapshots leave the cluster unsigned (`snapshot::signing`).
fn check_snapshot_signing(cfg: &Config, status: &NodeStatus) -> anyhow::Result<()> {
    let keys = crate::snapshot::signing::Keys::load(&cfg.snapshot)?;
    if keys.enabled() {
        info!(key_ids = ?keys.ids(), "snapshot manifests are signed and checked");
    } else if let Some(warning) = crate::snapshot::signing::unsigned_store_warning(cfg) {
        warn!("INSECURE: {warning}");
        status.add_security_warning(warning);
    }
    Ok(())
}

/// The data directory, created if missing and locked for this process (`instance`).
fn take_data_dir(cfg: &Config) -> anyhow::Result<InstanceLock> {
    let data_dir = cfg.data_dir();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", data_dir.display()))?;
    let lock = InstanceLock::acquire(&data_dir, &cfg.db_path)?;
    if let Some(source) = &cfg.node_id_source {
        info!(node_id = %cfg.node_id(), from = %source, "node id");
    }
    Ok(lock)
}

/// With NATS connected: the streams, the commit watcher, the recovery task, the services and
/// the replication engine.
async fn launch(
    node: &mut Running,
    embedded: &EmbeddedOptions,
    listeners: web::Listeners,
    recovery: RecoveryTask,
    maintenance: MaintenanceHandle,
) -> anyhow::Result<SnapshotHandle> {
    let engine = &node.engine;
    setup::ensure_streams(&engine.js, &node.cfg).await?;
    let me = Instance::here(&node.cfg.data_dir());
    claim_node_id(engine, &me).await?;
    let tasks = &mut node.tasks;
    tasks.spawn(
        "cdc-watch",
        cdc::watch::run(
            node.cfg.db_path.clone(),
            node.cfg.polling_interval(),
            engine.wake.clone(),
            tasks.token(),
        ),
    );
    tasks.spawn("recovery", recovery.run(tasks.token()));
    let snapshots = spawn_services(tasks, engine, embedded, listeners, maintenance, me)?;
    node.running = engine.spawn(tasks.token())?;
    Ok(snapshots)
}

/// Claims the node id in the registry before this node publishes anything
/// (`schema::identity`): another live instance holding it stops the start. When the registry
/// cannot be reached in time the node starts anyway; the registry task keeps checking.
async fn claim_node_id(engine: &Engine, me: &Instance) -> anyhow::Result<()> {
    let cfg = &engine.cfg;
    let deadline = Instant::now() + CLAIM_TIMEOUT;
    let mut backoff = CLAIM_RETRY;
    loop {
        let attempt = setup::first_answer(&engine.js, |js| async move {
            let store = registry::ensure_bucket(&js, cfg.replicas()).await?;
            let gate = engine.schema.gate();
            let entry = RegistryEntry::of(gate.local(), &gate.state(), me);
            identity::claim(&store, &entry, me, registry::live_within(cfg)).await
        });
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(held @ RegistryError::Held { .. }) => return Err(held.into()),
            Err(error) if Instant::now() < deadline => {
                warn!(error = %Chain(&error), "cannot claim the node id in the registry yet, retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => {
                warn!(error = %Chain(&error), "cannot claim the node id in the registry; starting anyway");
                return Ok(());
            }
        }
    }
}

/// The writer (creating the database if missing), capture installed, and the schema tracker.
async fn open_database(
    cfg: &Config,
    status: &Arc<NodeStatus>,
    metrics: &Metrics,
) -> anyhow::Result<(WriterHandle, SchemaTracker)> {
    let writer = WriterHandle::spawn(
        &cfg.db_path,
        cfg.node_id(),
        cfg.sharding.ignore_tables.clone(),
    )?;
    status.liveness.attach_writer(writer.busy_since());
    let capture = writer.install_capture().await?;
    status.cdc_installed.store(true, Ordering::Relaxed);
    status
        .tables_tracked
        .store(capture.tables.len() as u64, Ordering::Relaxed);
    info!(node_id = %cfg.node_id(), tables = capture.tables.len(), db = %cfg.db_path.display(), "capture installed");
    let schema = SchemaTracker::start(
        cfg,
        writer.clone(),
        status.clone(),
        metrics.schema_pauses.clone(),
    )
    .await?;
    Ok((writer, schema))
}

/// The database (capture installed) and the bundled server, started side by side: installing
/// capture on a new database of many tables is seconds of SQLite DDL (quadratic in the schema's
/// size: every `CREATE` scans `sqlite_schema`), and the servers meanwhile form their cluster
/// and elect a JetStream meta leader, which needs nothing from the database. Either failing
/// stops the start; a server already started is stopped again.
async fn open_database_and_server(
    cfg: &Config,
    flags: &EmbeddedOptions,
    status: &Arc<NodeStatus>,
    metrics: &Metrics,
) -> anyhow::Result<(WriterHandle, SchemaTracker, Option<EmbeddedServer>)> {
    let (database, server) = tokio::join!(
        open_database(cfg, status, metrics),
        start_server(cfg, flags, status, metrics)
    );
    match (database, server) {
        (Ok((writer, schema)), Ok(server)) => Ok((writer, schema, server)),
        // The database's error wins: a refused database exits with its own code.
        (Err(error), server) => {
            if let Ok(server) = server {
                stop_server(server).await;
            }
            Err(error)
        }
        (Ok(_), Err(error)) => Err(error),
    }
}

/// The bundled server, unless `nats.urls` names an external cluster.
async fn start_server(
    cfg: &Config,
    flags: &EmbeddedOptions,
    status: &NodeStatus,
    metrics: &Metrics,
) -> anyhow::Result<Option<EmbeddedServer>> {
    if !cfg.nats.urls.is_empty() {
        return Ok(None);
    }
    let spec = ServerSpec::from_config(cfg, flags)?;
    let dir = cfg.data_dir().join("nats");
    let server = EmbeddedServer::start(spec, &dir, metrics.nats_server_restarts.clone()).await?;
    status.set_server(server.state());
    Ok(Some(server))
}

/// The client, of the bundled server or of the external cluster; the server is stopped again
/// when the client cannot connect.
async fn connect_nats(
    cfg: &Config,
    server: Option<EmbeddedServer>,
    status: &NodeStatus,
    metrics: &Metrics,
) -> anyhow::Result<(Option<EmbeddedServer>, async_nats::Client)> {
    let urls = match &server {
        Some(s) => vec![s.client_url()],
        None => cfg.nats.urls.clone(),
    };
    let connection = Arc::new(ConnectionState::new(metrics.nats_disconnects.clone()));
    match client::connect(&cfg.nats, &urls, connection.clone()).await {
        Ok(client) => {
            status.set_nats(urls, connection);
            Ok((server, client))
        }
        Err(e) => {
            stop_server(server).await;
            Err(e.into())
        }
    }
}

/// The snapshot task, `sleep_timeout`, the schema tasks, housekeeping and the web servers.
fn spawn_services(
    tasks: &mut Tasks,
    engine: &Engine,
    embedded: &EmbeddedOptions,
    listeners: web::Listeners,
    maintenance: MaintenanceHandle,
    me: Instance,
) -> anyhow::Result<SnapshotHandle> {
    let cfg = &engine.cfg;
    let (snapshotter, snapshots) = Snapshotter::new(
        cfg.clone(),
        engine.js.clone(),
        engine.status.clone(),
        engine.metrics.clone(),
        engine.writer.clone(),
    );
    tasks.spawn("snapshot", snapshotter.run(tasks.token()));
    let admin = crate::admin::serve(
        engine.js.client(),
        engine.status.node_id,
        snapshots.clone(),
        tasks.token(),
    );
    tasks.spawn("admin", admin);
    if let Some(idle) = cfg.sleep_timeout() {
        let idle_task = sleep_when_idle(
            idle,
            engine.status.clone(),
            snapshots.clone(),
            tasks.token(),
        );
        tasks.spawn("sleep", idle_task);
    }
    let gate = engine.schema.gate().clone();
    let registry_task = registry::run(
        cfg.clone(),
        engine.js.clone(),
        gate,
        me,
        engine.status.clone(),
        tasks.token(),
    );
    tasks.spawn("schema-registry", registry_task);
    tasks.spawn("schema", engine.schema.clone().run(tasks.token()));
    tasks.spawn("heartbeat", heartbeat(engine.status.clone(), tasks.token()));
    let digests = crate::consistency::publish::run(
        cfg.clone(),
        engine.js.clone(),
        engine.writer.clone(),
        engine.status.clone(),
        engine.metrics.clone(),
        tasks.token(),
    );
    tasks.spawn("digests", digests);
    let rows = crate::consistency::rows::serve(
        engine.js.client(),
        engine.status.node_id,
        cfg.db_path.clone(),
        tasks.token(),
    );
    tasks.spawn("digest-rows", rows);
    tasks.spawn(
        "housekeeping",
        housekeeping(cfg.clone(), engine.writer.clone(), tasks.token()),
    );
    let web = web::WebState::new(
        cfg.clone(),
        engine.status.clone(),
        engine.metrics.clone(),
        engine.js.clone(),
        embedded.clone(),
        engine.schema.reader(),
    )?;
    web.set_snapshots(snapshots.clone());
    web.set_maintenance(maintenance);
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
    Ok(snapshots)
}
