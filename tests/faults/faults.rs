//! The faults: a seeded schedule, and the code that injects and heals each one.
//!
//! Faults run one after another (each healed before the next starts), so the cluster never loses
//! two of its three JetStream peers at once: a replicated stream keeps its quorum throughout,
//! which is what a three-node deployment is sized to survive. The writers keep writing on every
//! node during all of it.

use std::time::{Duration, Instant};

use crate::cluster::{Cluster, signal};
use crate::common::poll::poll_blocking;
use crate::losses::{self, App};
use crate::rng::Rng;
use crate::skew;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `kill -9` of harmonylite (its nats-server dies with it), down for `hold`, restarted.
    KillNode,
    /// SIGTERM, down for `hold`, restarted.
    RestartNode,
    /// `kill -9` of the bundled nats-server; harmonylite's supervisor restarts it.
    KillNats,
    /// SIGSTOP of harmonylite for `hold`, then SIGCONT.
    PauseNode,
    /// SIGSTOP of the nats-server for `hold`, then SIGCONT.
    PauseNats,
    /// The node's routes are cut for `hold` (see `proxy`).
    Partition,
    /// The node's application clock is off by `skew_ms` for `hold` (see `skew`).
    Skew,
    /// `kill -9`, the database file deleted, a restart on a new empty file (see `losses`).
    LoseDatabase,
    /// SIGSTOP of harmonylite for `hold` with deliveries in hand, `kill -9`, a restart.
    OrphanDeliveries,
    /// SIGSTOP of the nats-server for `hold`, long enough for the stream to trim past the node.
    FreezeNatsPastHistory,
    /// The snapshot store away for `hold` while the node comes back with a gap.
    StoreOutageDuringGap,
    /// A change stamped near `i64::MAX` from outside the cluster; the operator discards it.
    FutureVersion,
}

pub const ALL: [Kind; 12] = [
    Kind::KillNode,
    Kind::RestartNode,
    Kind::KillNats,
    Kind::PauseNode,
    Kind::PauseNats,
    Kind::Partition,
    Kind::Skew,
    Kind::LoseDatabase,
    Kind::OrphanDeliveries,
    Kind::FreezeNatsPastHistory,
    Kind::StoreOutageDuringGap,
    Kind::FutureVersion,
];

#[derive(Clone, Debug)]
pub struct Planned {
    /// Nominal start, from the start of the fault window.
    pub at: Duration,
    pub kind: Kind,
    pub node: usize,
    pub hold: Duration,
    pub skew_ms: i64,
}

/// What happened, for the report.
pub struct Injected {
    pub plan: Planned,
    pub start: Duration,
    pub healed: Duration,
    pub note: String,
}

/// The schedule for a fault window of `window`: every kind once in a seeded order, then seeded
/// picks, until the window is full. Windows of a minute or more get long holds (partitions of
/// tens of seconds); shorter ones (the CI run) short holds.
pub fn schedule(rng: &mut Rng, window: Duration, nodes: usize) -> Vec<Planned> {
    let long = window >= Duration::from_secs(60);
    let mut order = ALL.to_vec();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut plan = Vec::new();
    let mut t = Duration::from_secs(2); // writes before the first fault
    loop {
        let kind = match order.get(plan.len()) {
            Some(k) => *k,
            None => *rng.pick(&ALL),
        };
        let ms = |lo: u64, hi: u64, rng: &mut Rng| Duration::from_millis(rng.range(lo, hi));
        let hold = hold(kind, long, rng);
        let magnitude = rng.range(1000, 5000) as i64;
        let skew_ms = if rng.chance(50) {
            magnitude
        } else {
            -magnitude
        };
        let node = rng.below(nodes as u64) as usize;
        if t + hold > window && plan.len() >= ALL.len() {
            break;
        }
        plan.push(Planned {
            at: t,
            kind,
            node,
            hold,
            skew_ms,
        });
        let gap = if long {
            ms(1000, 6000, rng)
        } else {
            ms(1000, 2500, rng)
        };
        t += hold + gap;
    }
    plan
}

/// How long fault `kind` lasts. The history-trimming faults hold long enough for the stream
/// (`max_entries` messages, see main.rs) to move past the node; the store outage is the
/// recovery issue's two minutes in long runs.
fn hold(kind: Kind, long: bool, rng: &mut Rng) -> Duration {
    let ms = |lo: u64, hi: u64, rng: &mut Rng| Duration::from_millis(rng.range(lo, hi));
    match (kind, long) {
        (Kind::KillNode | Kind::RestartNode | Kind::LoseDatabase, _) => ms(200, 3000, rng),
        (Kind::KillNats | Kind::FutureVersion, _) => Duration::ZERO,
        (Kind::PauseNode | Kind::PauseNats | Kind::OrphanDeliveries, false) => ms(1000, 4000, rng),
        (Kind::PauseNode | Kind::PauseNats | Kind::OrphanDeliveries, true) => ms(2000, 15_000, rng),
        (Kind::Partition, false) => ms(4000, 8000, rng),
        (Kind::Partition, true) => ms(10_000, 40_000, rng),
        (Kind::Skew, false) => ms(3000, 6000, rng),
        (Kind::Skew, true) => ms(5000, 30_000, rng),
        (Kind::FreezeNatsPastHistory, false) => ms(30_000, 32_000, rng),
        (Kind::FreezeNatsPastHistory, true) => ms(40_000, 50_000, rng),
        (Kind::StoreOutageDuringGap, false) => Duration::from_secs(40),
        (Kind::StoreOutageDuringGap, true) => Duration::from_secs(120),
    }
}

/// How long a node stays down during a store outage: long enough for the stream to trim past it.
fn down_for_a_gap(long: bool) -> Duration {
    Duration::from_secs(if long { 45 } else { 30 })
}

/// Injects one fault, holds it, heals it. `Err` is a failure of the system under test (a node
/// that does not come back), not of the fault.
pub fn inject(
    cluster: &mut Cluster,
    app: &App,
    f: &Planned,
    t0: Instant,
) -> Result<Injected, String> {
    let start = t0.elapsed();
    let note = match f.kind {
        Kind::LoseDatabase => losses::lose_database(cluster, f.node, app)?,
        Kind::OrphanDeliveries => losses::orphan_deliveries(&mut cluster.nodes[f.node], f.hold)?,
        Kind::FreezeNatsPastHistory => {
            losses::freeze_nats_past_history(&mut cluster.nodes[f.node], f.hold)?
        }
        Kind::StoreOutageDuringGap => {
            let down = down_for_a_gap(f.hold >= Duration::from_secs(60));
            losses::store_outage_during_gap(cluster, f.node, down, f.hold)?
        }
        Kind::FutureVersion => losses::future_version(cluster, f.node, f.at.as_millis() as u64)?,
        _ => inject_process_fault(cluster, f)?,
    };
    Ok(Injected {
        plan: f.clone(),
        start,
        healed: t0.elapsed(),
        note,
    })
}

/// The faults of processes, routes and clocks.
fn inject_process_fault(cluster: &mut Cluster, f: &Planned) -> Result<String, String> {
    let ready = Duration::from_secs(60);
    let node = &mut cluster.nodes[f.node];
    let note = match f.kind {
        Kind::KillNode => {
            node.kill9()?;
            std::thread::sleep(f.hold);
            node.start()?;
            let t = Instant::now();
            node.wait_ready(ready)?;
            format!("ready {:.1}s after restart", t.elapsed().as_secs_f64())
        }
        Kind::RestartNode => {
            let status = node.terminate(Duration::from_secs(30))?;
            std::thread::sleep(f.hold);
            node.start()?;
            let t = Instant::now();
            node.wait_ready(ready)?;
            format!(
                "stopped ({status}), ready {:.1}s after restart",
                t.elapsed().as_secs_f64()
            )
        }
        Kind::KillNats => match node.nats_pid() {
            None => "skipped: no running nats-server".to_owned(),
            Some(pid) => {
                signal(pid, libc::SIGKILL);
                let t = Instant::now();
                poll_blocking(ready, || match node.nats_pid() {
                    Some(new) if new != pid => Ok(()),
                    _ => Err(()),
                })
                .map_err(|()| {
                    format!(
                        "node {}: nats-server not restarted within {ready:?}",
                        f.node + 1
                    )
                })?;
                format!(
                    "pid {pid} killed, supervisor restarted it in {:.1}s",
                    t.elapsed().as_secs_f64()
                )
            }
        },
        Kind::PauseNode => {
            node.signal(libc::SIGSTOP);
            std::thread::sleep(f.hold);
            node.signal(libc::SIGCONT);
            String::new()
        }
        Kind::PauseNats => match node.nats_pid() {
            None => "skipped: no running nats-server".to_owned(),
            Some(pid) => {
                signal(pid, libc::SIGSTOP);
                std::thread::sleep(f.hold);
                signal(pid, libc::SIGCONT);
                format!("pid {pid}")
            }
        },
        Kind::Partition => {
            cluster.proxy.cut(f.node);
            std::thread::sleep(f.hold);
            cluster.proxy.heal();
            String::new()
        }
        Kind::Skew => {
            skew::set_offset_ms(f.node, f.skew_ms);
            std::thread::sleep(f.hold);
            skew::set_offset_ms(f.node, 0);
            format!("{:+} ms", f.skew_ms)
        }
        _ => unreachable!("{:?} is injected by `losses`", f.kind),
    };
    Ok(note)
}

/// Heals everything, whatever state a failed injection left: routes open, clocks true, every
/// process continued, any node that exited started again (as systemd's `Restart=` would).
/// Returns notes about nodes that had exited on their own.
pub fn heal_all(cluster: &mut Cluster) -> Result<Vec<String>, String> {
    cluster.proxy.heal();
    skew::reset();
    for node in &cluster.nodes {
        node.signal(libc::SIGCONT);
        if let Some(pid) = node.nats_pid() {
            signal(pid, libc::SIGCONT);
        }
    }
    restart_exited(cluster)
}

/// Starts again any node that exited on its own; notes which.
pub fn restart_exited(cluster: &mut Cluster) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    for node in &mut cluster.nodes {
        if let Some(status) = node.exited() {
            notes.push(format!(
                "node {} had exited ({status}); restarted",
                node.idx + 1
            ));
            node.start()?;
            node.wait_ready(Duration::from_secs(60))?;
        }
    }
    Ok(notes)
}
