//! The fault-injection program (`cargo test --test faults`): three real harmonylite nodes with
//! their bundled NATS clustered, concurrent application writers on every node, a ledger of every
//! acknowledged write, seeded faults (kill -9, SIGTERM restarts, SIGSTOP pauses of harmonylite and
//! of nats-server, partitions, clock skew; and the recovery faults: a lost database file,
//! orphaned deliveries, a frozen server past the history, a snapshot-store outage during a gap, a
//! version from the future), then heal, convergence and a verdict. The streams keep few messages
//! and the nodes share an `fs` snapshot store, so a node left behind restores a snapshot.
//!
//! Not a libtest test: plain `cargo test` runs one short seed; long runs are by hand:
//! `FAULTS_SEEDS=1..50 FAULTS_SECONDS=60 cargo test --release --test faults`.
//! Environment: `FAULTS_SEEDS` (`7`, `1..50` inclusive, or `1,4,9`; default `1`),
//! `FAULTS_SECONDS` (fault window per seed, default 30; 60 or more gives long holds),
//! `FAULTS_SHARDS` (default 2), `FAULTS_MAX_ENTRIES` (messages each stream keeps, default 1000),
//! `FAULTS_CONVERGE_SECONDS` (default 60), `FAULTS_KEEP=1` (keep each
//! seed's directory: databases, configs, logs; `failed`: only failed seeds).
//! Exit status 1 if any seed fails.
//!
//! Modules: `cluster` (the nodes; their processes are tests/common's, shared with tests/it) ·
//! `proxy` (routes, partitions) · `skew` (application clock) ·
//! `schema` (tables, canonical rows) · `writers` (the application) · `ledger` (acknowledged
//! writes, expected state) · `faults` (schedule, inject, heal) · `losses` (the recovery faults) ·
//! `http` (health check and admin API) · `elections` (JetStream's part of convergence) · `verify` (convergence, verdict) ·
//! `report` (output) · `rng` (seeded randomness).

// Test code: a failed unwrap is a failed run, with its location.
#![allow(clippy::unwrap_used)]

// Shared with tests/it: polling, fixed ports, processes.
#[path = "../common/mod.rs"]
mod common;

mod cluster;
mod elections;
mod faults;
mod http;
mod ledger;
mod losses;
mod proxy;
mod report;
mod rng;
mod schema;
mod skew;
mod verify;
mod writers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::Cluster;
use ledger::Ledger;
use report::SeedResult;
use rng::Rng;
use writers::Writers;

struct Settings {
    window: Duration,
    shards: u32,
    max_entries: u64,
    converge: Duration,
    keep: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("faults: test");
        return;
    }
    // `cargo test some_filter` passes the filter to every test binary: run only if it names us.
    if let Some(filter) = args.iter().find(|a| !a.starts_with('-'))
        && !"faults".contains(filter.as_str())
    {
        return;
    }
    let seeds = parse_seeds(&env("FAULTS_SEEDS", "1"));
    let settings = Settings {
        window: Duration::from_secs(env("FAULTS_SECONDS", "30").parse().unwrap()),
        shards: env("FAULTS_SHARDS", "2").parse().unwrap(),
        max_entries: env("FAULTS_MAX_ENTRIES", "1000").parse().unwrap(),
        converge: Duration::from_secs(env("FAULTS_CONVERGE_SECONDS", "60").parse().unwrap()),
        keep: env("FAULTS_KEEP", "0"),
    };
    let start = Instant::now();
    let mut results = Vec::new();
    for seed in seeds {
        let r = run_seed(seed, &settings);
        report::print_seed(&r);
        results.push(r);
    }
    report::print_summary(&results);
    println!("total wall time {:.1}s", start.elapsed().as_secs_f64());
    if results.iter().any(|r| !r.passed()) {
        std::process::exit(1);
    }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn parse_seeds(spec: &str) -> Vec<u64> {
    if let Some((a, b)) = spec.split_once("..") {
        let (a, b): (u64, u64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
        return (a..=b).collect();
    }
    spec.split(',').map(|s| s.trim().parse().unwrap()).collect()
}

fn run_seed(seed: u64, s: &Settings) -> SeedResult {
    let begin = Instant::now();
    skew::reset();
    let mut rng = Rng::new(seed);
    let plan = faults::schedule(&mut rng.fork(1), s.window, 3);
    let mut writer_rng = rng.fork(2);
    let mut result = SeedResult {
        seed,
        faults: Vec::new(),
        writes: 0,
        committed_tx: 0,
        failed_tx: 0,
        rows: Vec::new(),
        heal_to_converged: None,
        elections: None,
        check: verify::Check::default(),
        failures: Vec::new(),
        notes: Vec::new(),
        wall: Duration::ZERO,
    };
    let mut cluster = match Cluster::start(3, s.shards, s.max_entries) {
        Ok(c) => c,
        Err(e) => {
            result.failures.push(format!("cluster start: {e}"));
            result.wall = begin.elapsed();
            return result;
        }
    };
    println!(
        "seed {seed}: cluster ready in {:.1}s, {} faults planned, dir {}",
        begin.elapsed().as_secs_f64(),
        plan.len(),
        cluster.dir.path().display()
    );
    let ledger = Arc::new(Ledger::default());
    let writers = Writers::spawn(&cluster.db_paths(), &mut writer_rng, &ledger);
    let app = losses::App {
        writers: &writers,
        ledger: &ledger,
    };
    inject_plan(&mut cluster, &app, &plan, &mut result);
    match faults::heal_all(&mut cluster) {
        Ok(notes) => result.notes.extend(notes),
        Err(e) => result.failures.push(format!("heal: {e}")),
    }
    let healed = Instant::now();
    let elections = elections::measure(cluster.nats_client_urls(), s.shards, 3, healed, s.converge);
    for w in writers.stop() {
        result.committed_tx += w.committed_tx;
        result.failed_tx += w.failed_tx;
        for e in w.capture_errors {
            result
                .failures
                .push(format!("node {} capture: {e}", w.node + 1));
        }
    }
    let expected = ledger.expected();
    result.writes = expected.entries;
    result.rows = expected.content.iter().map(|t| t.len()).collect();
    result.failures.extend(expected.anomalies.iter().cloned());
    let paths = cluster.db_paths();
    if verify::wait_converged(&paths, &expected, s.converge).is_some() {
        result.heal_to_converged = Some(healed.elapsed());
    }
    result.elections = elections.slowest();
    result.check = verify::check(&paths, &expected);
    let agree = result.check.hashes.windows(2).all(|w| w[0] == w[1]);
    match verify::verify_cluster(cluster.nodes[0].config_path(), agree, s.converge) {
        Ok(note) => result.notes.push(note),
        Err(e) => result.failures.push(e),
    }
    if !result.passed() {
        println!("{}", cluster.log_tails(25));
    }
    cluster.keep = s.keep == "1" || (s.keep == "failed" && !result.passed());
    result.wall = begin.elapsed();
    result
}

/// The fault window: each planned fault at its time, restarting any node that exited after it;
/// the first fault that cannot be injected ends the window.
fn inject_plan(
    cluster: &mut Cluster,
    app: &losses::App,
    plan: &[faults::Planned],
    result: &mut SeedResult,
) {
    let t0 = Instant::now();
    for f in plan {
        if let Some(wait) = f.at.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        match faults::inject(cluster, app, f, t0) {
            Ok(done) => result.faults.push(done),
            Err(e) => {
                result
                    .failures
                    .push(format!("{:?} node {}: {e}", f.kind, f.node + 1));
                break;
            }
        }
        match faults::restart_exited(cluster) {
            Ok(notes) => result.notes.extend(notes),
            Err(e) => result.failures.push(e),
        }
    }
}
