//! What a run prints: one block per seed (the schedule as injected, the writes, heal→convergence,
//! the verdict with a row-level diff on failure) and a summary table over all seeds.

use std::time::Duration;

use crate::faults::Injected;
use crate::schema::TABLES;
use crate::verify::Check;

pub struct SeedResult {
    pub seed: u64,
    pub faults: Vec<Injected>,
    /// Acknowledged writes (ledger entries) and transactions.
    pub writes: usize,
    pub committed_tx: u64,
    pub failed_tx: u64,
    /// Expected live rows per table.
    pub rows: Vec<usize>,
    pub heal_to_converged: Option<Duration>,
    /// From the last heal until every stream and consumer had a leader again (JetStream's own
    /// elections, part of `heal_to_converged`).
    pub elections: Option<Duration>,
    pub check: Check,
    /// Things that went wrong outside the content check (a node that did not come back, a
    /// capture anomaly); any makes the seed fail.
    pub failures: Vec<String>,
    /// Worth knowing, not a failure (a node that exited on its own and was restarted).
    pub notes: Vec<String>,
    pub wall: Duration,
}

impl SeedResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.check.ok() && self.heal_to_converged.is_some()
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

pub fn print_seed(r: &SeedResult) {
    println!("=== seed {} ===", r.seed);
    for f in &r.faults {
        println!(
            "  {:>6} → {:>6}  {:?} node {} hold {}  {}",
            secs(f.start),
            secs(f.healed),
            f.plan.kind,
            f.plan.node + 1,
            secs(f.plan.hold),
            f.note
        );
    }
    let rows: Vec<String> = TABLES
        .iter()
        .zip(&r.rows)
        .map(|(t, n)| format!("{}={n}", t.name))
        .collect();
    println!(
        "  writes: {} acknowledged in {} transactions ({} not acknowledged); final rows {}",
        r.writes,
        r.committed_tx,
        r.failed_tx,
        rows.join(" ")
    );
    let elections = r.elections.map_or("not settled".to_owned(), secs);
    match r.heal_to_converged {
        Some(d) => println!(
            "  heal → convergence: {} (JetStream leaders back after {elections})",
            secs(d)
        ),
        None => println!("  heal → convergence: NOT CONVERGED (leaders: {elections})"),
    }
    for (i, h) in r.check.hashes.iter().enumerate() {
        println!("  node {} table hashes: {}", i + 1, h.join(" "));
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
    let c = &r.check;
    println!(
        "  divergent {} lost {} stale {} resurrected {} phantom {} clock-mismatch {}",
        c.divergent, c.lost, c.stale, c.resurrected, c.phantom, c.clock_mismatch
    );
    for f in &r.failures {
        println!("  FAILURE: {f}");
    }
    for d in &c.details {
        println!("    {d}");
    }
    println!(
        "  verdict: {} (seed wall time {})",
        if r.passed() { "PASS" } else { "FAIL" },
        secs(r.wall)
    );
}

pub fn print_summary(results: &[SeedResult]) {
    println!("=== summary ===");
    println!(
        "seed  faults  writes  divergent  lost  stale  resurrected  heal→conv  elections  verdict"
    );
    for r in results {
        println!(
            "{:>4}  {:>6}  {:>6}  {:>9}  {:>4}  {:>5}  {:>11}  {:>9}  {:>9}  {}",
            r.seed,
            r.faults.len(),
            r.writes,
            r.check.divergent,
            r.check.lost,
            r.check.stale,
            r.check.resurrected,
            r.heal_to_converged.map_or("-".to_owned(), secs),
            r.elections.map_or("-".to_owned(), secs),
            if r.passed() { "PASS" } else { "FAIL" }
        );
    }
    let mut conv: Vec<Duration> = results.iter().filter_map(|r| r.heal_to_converged).collect();
    conv.sort();
    let failed = results.iter().filter(|r| !r.passed()).count();
    let faults: usize = results.iter().map(|r| r.faults.len()).sum();
    let writes: usize = results.iter().map(|r| r.writes).sum();
    println!(
        "{} seeds, {failed} failed; {faults} faults, {writes} acknowledged writes",
        results.len()
    );
    if let (Some(first), Some(last)) = (conv.first(), conv.last()) {
        println!(
            "heal → convergence: min {} p50 {} max {}",
            secs(*first),
            secs(conv[conv.len() / 2]),
            secs(*last)
        );
    }
}
