//! The faults that take data away from one node, or hand it data it must not take silently (the
//! recovery issue's list): a lost database file, deliveries orphaned by a consumer restart, a
//! frozen nats-server thawed after the stream trimmed past it, the snapshot store down while a
//! node has a gap, and a change stamped far in the future. Each returns the note the report
//! prints; `Err` is a failure of the system under test.
//!
//! What they prove is checked at the end of the seed like every other fault: no acknowledged
//! write lost, no divergence, no resurrection. Here, each also waits until the node says it is
//! whole again (`/health/ready` answers 200), which a node that skipped a gap or kept an empty
//! database would not reach honestly; the verdict catches the one that does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cluster::{ADMIN_TOKEN, Cluster, NodeProc, signal};
use crate::common::poll::poll_blocking;
use crate::http;
use crate::ledger::Ledger;
use crate::verify;
use crate::writers::Writers;
use harmonylite::change::{ChangeBatch, RowChange, TableChanges, Value};
use harmonylite::ids::{NodeId, ShardId};
use harmonylite::replication::wire;

/// How long a node may take to be whole again after one of these faults: a restore included.
const RECOVER: Duration = Duration::from_secs(120);

/// What the application side of a run offers the faults.
pub struct App<'a> {
    pub writers: &'a Writers,
    pub ledger: &'a Ledger,
}

/// Everything acknowledged reaches every node, the writers held; then node `k` is killed, its
/// database file (WAL and shared memory too) deleted and the node started on a new empty file,
/// its sequence map kept. It must restore from a snapshot (asking for one: none may cover the
/// cluster yet) and be ready only once restored.
pub fn lose_database(cluster: &mut Cluster, k: usize, app: &App) -> Result<String, String> {
    app.writers.hold();
    let paths = cluster.db_paths();
    let settled = verify::wait_converged(&paths, &app.ledger.expected(), RECOVER);
    if settled.is_none() {
        app.writers.resume();
        return Err("the cluster did not converge before the database was lost".to_owned());
    }
    let node = &mut cluster.nodes[k];
    let before = Recovered::mark(node);
    node.kill9()?;
    for file in database_files(&node.db_path) {
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("removing {}: {e}", file.display()));
            }
            _ => {}
        }
    }
    app.writers.reopen(k);
    node.start()?;
    app.writers.resume();
    node.wait_ready(RECOVER)?;
    let t = Instant::now();
    wait_whole(node)?;
    Ok(format!(
        "{}; whole {:.1}s after start",
        before.since(node),
        secs(t)
    ))
}

/// harmonylite is stopped with deliveries in hand (pulled, not acknowledged), killed while
/// stopped and started again: the new consumer starts at the floor, below the orphans.
pub fn orphan_deliveries(node: &mut NodeProc, hold: Duration) -> Result<String, String> {
    node.signal(libc::SIGSTOP);
    std::thread::sleep(hold);
    node.kill9()?;
    node.start()?;
    let t = Instant::now();
    node.wait_ready(RECOVER)?;
    Ok(format!("ready {:.1}s after restart", secs(t)))
}

/// The node's nats-server is frozen for `hold`, long enough for the stream to trim past what
/// the node applied; after the thaw the node must prove the gap against the stream leader (its
/// own replica answers first, and stale) and restore.
pub fn freeze_nats_past_history(node: &mut NodeProc, hold: Duration) -> Result<String, String> {
    let Some(pid) = node.nats_pid() else {
        return Ok("skipped: no running nats-server".to_owned());
    };
    let before = Recovered::mark(node);
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(hold);
    signal(pid, libc::SIGCONT);
    let t = Instant::now();
    wait_whole(node)?;
    Ok(format!(
        "pid {pid}, {}; whole {:.1}s after the thaw",
        before.since(node),
        secs(t)
    ))
}

/// The shared snapshot store goes away (its directory replaced by a file: every operation
/// fails) for `outage`; meanwhile node `k` is killed, stays down for `down` (the stream trims
/// past it) and comes back with a gap it cannot close. It must stay not ready while the store
/// is away (the gap is never accepted on its own) and restore once the store is back.
pub fn store_outage_during_gap(
    cluster: &mut Cluster,
    k: usize,
    down: Duration,
    outage: Duration,
) -> Result<String, String> {
    let store = cluster.store_path();
    let away = store.with_extension("away");
    let io = |what: &str, e: std::io::Error| format!("{what} the snapshot store: {e}");
    std::fs::rename(&store, &away).map_err(|e| io("moving away", e))?;
    std::fs::write(&store, "store outage").map_err(|e| io("replacing", e))?;
    let began = Instant::now();
    let node = &mut cluster.nodes[k];
    let before = Recovered::mark(node);
    let outcome = (|| {
        node.kill9()?;
        std::thread::sleep(down);
        node.start()?;
        node.wait_ready(RECOVER)?;
        let mut ready_during_outage = false;
        while began.elapsed() < outage {
            let gap_found = before.gaps_since(node) > 0;
            let is_ready = ready(node);
            if is_ready && gap_found {
                return Err(format!(
                    "node {}: ready with a gap open and no snapshot store",
                    k + 1
                ));
            }
            ready_during_outage |= is_ready;
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok::<bool, String>(ready_during_outage)
    })();
    std::fs::remove_file(&store).map_err(|e| io("restoring", e))?;
    std::fs::rename(&away, &store).map_err(|e| io("restoring", e))?;
    let ready_during_outage = outcome?;
    let t = Instant::now();
    wait_whole(&cluster.nodes[k])?;
    Ok(format!(
        "{} during the outage; {}; whole {:.1}s after the store came back",
        if ready_during_outage {
            "ready before any gap was found"
        } else {
            "not ready"
        },
        before.since(&cluster.nodes[k]),
        secs(t)
    ))
}

/// A peer that is not in the cluster (a broken or hostile node, id 9) publishes a change
/// stamped near `i64::MAX` through node `k`'s server. Every node must hold it in its quarantine
/// (not apply it, not drop it, and keep replicating everything else); once all do, the operator
/// discards it on each through the admin API. Applying it is the other explicit choice (the
/// integration test takes that one); discarding keeps the ledger's expectation unchanged.
/// All hold it before any decides: a node that restores a snapshot taken after its taker's
/// decision gets the decision (the row as decided), not the held change, which is right, but
/// would leave this check nothing to find (seed 2 on a4096fa: node 3 lost its database and
/// restored node 1's snapshot taken 2 s after node 1's discard).
pub fn future_version(cluster: &Cluster, k: usize, n: u64) -> Result<String, String> {
    let url = cluster.nodes[k]
        .nats_client_url()
        .ok_or_else(|| format!("node {}: no NATS client port", k + 1))?;
    let version = FUTURE_VERSION - n;
    publish(
        &url,
        &message_from_the_future(n, version),
        &format!("future-{n}"),
    )?;
    let t = Instant::now();
    let mut held = Vec::new();
    for node in &cluster.nodes {
        let admin = node
            .listener("admin dashboard")
            .ok_or_else(|| format!("node {}: no admin dashboard", node.idx + 1))?;
        let id = poll_blocking(RECOVER, || held_change(&admin, version)).map_err(|last| {
            format!(
                "node {}: the change from the future was not quarantined within {RECOVER:?} \
                 ({last})",
                node.idx + 1
            )
        })?;
        held.push((node, admin, id));
    }
    for (node, admin, id) in held {
        let path = format!("/api/quarantine/{id}/discard");
        let discarded = http::request(&admin, "POST", &path, Some(ADMIN_TOKEN))?;
        if discarded.status != 200 {
            return Err(format!(
                "node {}: discarding the quarantined change: {} {}",
                node.idx + 1,
                discarded.status,
                discarded.body
            ));
        }
    }
    Ok(format!(
        "version {version}: quarantined on every node, discarded by the operator in {:.1}s",
        secs(t)
    ))
}

/// Versions of the changes from the future: near the largest a clock holds.
const FUTURE_VERSION: u64 = i64::MAX as u64 - 1;

/// One change to `items` (key `-n`, a key no writer uses) from node 9, at `version`.
fn message_from_the_future(n: u64, version: u64) -> Vec<u8> {
    let id = -(n as i64);
    let origin = NodeId(9);
    let batch = ChangeBatch {
        origin,
        schema_hash: String::new(),
        tables: vec![TableChanges {
            table: "items".into(),
            key_columns: vec!["id".into()],
            columns: vec!["id".into(), "v".into(), "n".into()],
            rows: vec![RowChange {
                version,
                node: origin,
                origin,
                deleted: false,
                key: vec![Value::Integer(id)],
                values: vec![Value::Integer(id), Value::text("future"), Value::Integer(0)],
            }],
        }],
    };
    wire::encode(&batch, true).expect("a one-row batch encodes")
}

/// Publishes `payload` on shard 0's subject through the server at `url`, acknowledged; like a
/// node's publisher it tries again while the stream cannot take it (a leader being elected after
/// an earlier fault answers "no stream found"), under one message id so JetStream keeps one copy.
fn publish(url: &str, payload: &[u8], id: &str) -> Result<(), String> {
    let subject = harmonylite::config::Config::default().subject(ShardId(0));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(client);
        let deadline = tokio::time::Instant::now() + RECOVER;
        loop {
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload.to_vec().into())
                .message_id(id);
            let acked = match js.send_publish(subject.clone(), message).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!("publishing the change from the future: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    })
}

/// The quarantine id of the held change with version `ver` on the node whose admin API is at
/// `admin`.
fn held_change(admin: &str, ver: u64) -> Result<i64, String> {
    let view = http::request(admin, "GET", "/api/recovery", Some(ADMIN_TOKEN))?.json();
    let held = view["quarantine"].as_array().cloned().unwrap_or_default();
    held.iter()
        .find(|q| q["version"].as_u64() == Some(ver))
        .and_then(|q| q["id"].as_i64())
        .ok_or_else(|| format!("held: {held:?}"))
}

/// Waits until the node's `/health/ready` answers 200: nothing missing, nothing waiting.
fn wait_whole(node: &NodeProc) -> Result<(), String> {
    poll_blocking(RECOVER, || if ready(node) { Ok(()) } else { Err(()) }).map_err(|()| {
        format!(
            "node {}: not ready {RECOVER:?} after the fault: {}",
            node.idx + 1,
            readiness(node)
        )
    })
}

fn ready(node: &NodeProc) -> bool {
    node.listener("health check")
        .and_then(|addr| http::request(&addr, "GET", "/health/ready", None).ok())
        .is_some_and(|r| r.status == 200)
}

/// `/health/ready`'s answer, for a failure report.
fn readiness(node: &NodeProc) -> String {
    match node.listener("health check") {
        None => "no health check listener".to_owned(),
        Some(addr) => match http::request(&addr, "GET", "/health/ready", None) {
            Ok(r) => format!("{} {}", r.status, r.body),
            Err(e) => e,
        },
    }
}

/// What the node's log had said about gaps and restores before a fault.
pub struct Recovered {
    gaps: usize,
    restores: usize,
}

const GAP_LINE: &str = "gap: the stream no longer holds";
const RESTORE_LINE: &str = "snapshot restored";

impl Recovered {
    fn mark(node: &NodeProc) -> Recovered {
        Recovered {
            gaps: node.log_count(GAP_LINE),
            restores: node.log_count(RESTORE_LINE),
        }
    }

    fn gaps_since(&self, node: &NodeProc) -> usize {
        node.log_count(GAP_LINE) - self.gaps
    }

    /// What happened since the mark, for the report: whether the fault did what it meant to.
    fn since(&self, node: &NodeProc) -> String {
        let gaps = self.gaps_since(node);
        let restores = node.log_count(RESTORE_LINE) - self.restores;
        format!("{gaps} gap(s) found, {restores} snapshot(s) restored")
    }
}

/// The database file and the files SQLite keeps beside it.
fn database_files(db: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", db.display())))
        .collect()
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}
