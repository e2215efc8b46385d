//! The verdict: reads every node's tables and clocks (read-only connections, as a monitoring
//! tool would), compares the nodes with each other (per-table hashes, then a row-level diff)
//! and with the ledger's expectation (lost, stale, resurrected and phantom rows, clock rows that
//! do not carry the winning version), and waits for convergence with a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::ledger::{Content, Expected};
use crate::schema::{TABLES, fmt_value};

/// Per table: key → (ver, node, deleted).
pub type Clocks = Vec<BTreeMap<String, (i64, i64, bool)>>;

#[derive(Default)]
pub struct Check {
    /// Keys on which the nodes do not all agree.
    pub divergent: usize,
    /// The winning write is live but the row is missing (worst node).
    pub lost: usize,
    /// The row is there with an older value than the winning write (worst node).
    pub stale: usize,
    /// The winning write is a delete but the row is there (worst node).
    pub resurrected: usize,
    /// A row no acknowledged write explains (worst node).
    pub phantom: usize,
    /// A clock row without the winning (ver, node, deleted) (worst node).
    pub clock_mismatch: usize,
    pub details: Vec<String>,
    /// Per node, per table: short content hash.
    pub hashes: Vec<Vec<String>>,
}

impl Check {
    pub fn ok(&self) -> bool {
        self.divergent
            + self.lost
            + self.stale
            + self.resurrected
            + self.phantom
            + self.clock_mismatch
            == 0
    }

    fn detail(&mut self, line: String) {
        if self.details.len() < 40 {
            self.details.push(line);
        }
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn text_of(row: &rusqlite::Row, cols: std::ops::Range<usize>) -> rusqlite::Result<String> {
    let mut parts = Vec::new();
    for i in cols {
        parts.push(fmt_value(row.get_ref(i)?));
    }
    Ok(parts.join(","))
}

/// Every table's rows, key → values, in one read transaction.
pub fn read_content(path: &Path) -> rusqlite::Result<Content> {
    let mut conn = open(path)?;
    let tx = conn.transaction()?;
    let mut out = Vec::new();
    for t in &TABLES {
        let cols: Vec<String> = t
            .keys
            .iter()
            .chain(t.vals)
            .map(|c| format!("\"{c}\""))
            .collect();
        let sql = format!("SELECT {} FROM \"{}\"", cols.join(", "), t.name);
        let mut stmt = tx.prepare(&sql)?;
        let nk = t.keys.len();
        let rows = stmt.query_map([], |r| {
            Ok((text_of(r, 0..nk)?, text_of(r, nk..cols.len())?))
        })?;
        out.push(rows.collect::<rusqlite::Result<BTreeMap<_, _>>>()?);
    }
    Ok(out)
}

pub fn read_clocks(path: &Path) -> rusqlite::Result<Clocks> {
    let conn = open(path)?;
    let mut out = Vec::new();
    for t in &TABLES {
        let nk = t.keys.len();
        let keys: Vec<String> = (0..nk).map(|i| format!("k{i}")).collect();
        let sql = format!(
            "SELECT {}, ver, node, deleted FROM {}",
            keys.join(", "),
            t.clock()
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([], |r| {
            Ok((
                text_of(r, 0..nk)?,
                (r.get(nk)?, r.get(nk + 1)?, r.get::<_, i64>(nk + 2)? != 0),
            ))
        })?;
        let mut clock = rows.collect::<rusqlite::Result<BTreeMap<_, _>>>()?;
        // Records the writer has not folded yet (at most its fold interval of writes) are what
        // the clock will say: each key's newest record, a delete as a tombstone.
        let log = format!(
            "SELECT {}, ver, node, kind = 2 FROM {} ORDER BY seq",
            keys.join(", "),
            t.capture_log()
        );
        let mut stmt = conn.prepare(&log)?;
        let records = stmt.query_map([], |r| {
            Ok((
                text_of(r, 0..nk)?,
                (r.get(nk)?, r.get(nk + 1)?, r.get::<_, bool>(nk + 2)?),
            ))
        })?;
        for record in records {
            let (key, state) = record?;
            clock.insert(key, state);
        }
        out.push(clock);
    }
    Ok(out)
}

fn hash(table: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in table {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([1]);
    }
    h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Waits until every node holds exactly the expected content; returns how long that took
/// (`None`: not within `deadline`).
pub fn wait_converged(
    paths: &[PathBuf],
    expected: &Expected,
    deadline: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut next_progress = Duration::from_secs(10);
    loop {
        let behind: Vec<usize> = paths
            .iter()
            .map(|p| read_content(p).map_or(usize::MAX, |c| differing_keys(&c, &expected.content)))
            .collect();
        if behind.iter().all(|n| *n == 0) {
            return Some(start.elapsed());
        }
        if start.elapsed() > deadline {
            return None;
        }
        // A slow convergence says which node lags, and whether it is moving.
        if start.elapsed() > next_progress {
            println!(
                "  still converging after {:.0}s: keys differing from the ledger per node {behind:?}",
                start.elapsed().as_secs_f64()
            );
            next_progress += Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn differing_keys(have: &Content, want: &Content) -> usize {
    have.iter()
        .zip(want)
        .map(|(h, w)| {
            let keys: BTreeSet<&String> = h.keys().chain(w.keys()).collect();
            keys.into_iter().filter(|k| h.get(*k) != w.get(*k)).count()
        })
        .sum()
}

/// The full comparison, for the verdict.
pub fn check(paths: &[PathBuf], expected: &Expected) -> Check {
    let mut c = Check::default();
    let Some((contents, clocks)) = read_all(paths, &mut c) else {
        return c;
    };
    c.hashes = contents
        .iter()
        .map(|t| t.iter().map(hash).collect())
        .collect();
    compare_nodes(&contents, &mut c);
    // Each node against the ledger; the worst node counts.
    let (mut lost, mut stale, mut res, mut phantom, mut clock) = (0, 0, 0, 0, 0);
    for (ni, content) in contents.iter().enumerate() {
        let n = compare_with_ledger(ni, content, &clocks[ni], expected, &mut c);
        lost = lost.max(n.lost);
        stale = stale.max(n.stale);
        res = res.max(n.resurrected);
        phantom = phantom.max(n.phantom);
        clock = clock.max(n.clock_mismatch);
    }
    c.lost = lost;
    c.stale = stale;
    c.resurrected = res;
    c.phantom = phantom;
    c.clock_mismatch = clock;
    c
}

/// Every node's content and clocks; `None` (counted as divergent, with the reason) as soon as
/// one node cannot be read.
fn read_all(paths: &[PathBuf], c: &mut Check) -> Option<(Vec<Content>, Vec<Clocks>)> {
    let mut contents = Vec::new();
    let mut clocks = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        match (read_content(p), read_clocks(p)) {
            (Ok(content), Ok(clock)) => {
                contents.push(content);
                clocks.push(clock);
            }
            (Err(e), _) | (_, Err(e)) => {
                c.divergent += 1;
                c.detail(format!("node {}: cannot read: {e}", i + 1));
                return None;
            }
        }
    }
    Some((contents, clocks))
}

/// Nodes against each other: every key on which they do not all agree.
fn compare_nodes(contents: &[Content], c: &mut Check) {
    for (ti, t) in TABLES.iter().enumerate() {
        let keys: BTreeSet<&String> = contents.iter().flat_map(|n| n[ti].keys()).collect();
        for key in keys {
            let rows: Vec<Option<&String>> = contents.iter().map(|n| n[ti].get(key)).collect();
            if rows.iter().any(|r| r != &rows[0]) {
                c.divergent += 1;
                c.detail(format!("diverged {} {key}: {rows:?}", t.name));
            }
        }
    }
}

/// One node's disagreements with the ledger (see `Check` for each kind).
#[derive(Default)]
struct NodeCounts {
    lost: usize,
    stale: usize,
    resurrected: usize,
    phantom: usize,
    clock_mismatch: usize,
}

/// Node `ni` (0-based) against the ledger: its counts; the details go to `c`.
fn compare_with_ledger(
    ni: usize,
    content: &Content,
    clocks: &Clocks,
    expected: &Expected,
    c: &mut Check,
) -> NodeCounts {
    let mut n = NodeCounts::default();
    for (ti, t) in TABLES.iter().enumerate() {
        let winners = &expected.winners[ti];
        let keys: BTreeSet<&String> = winners.keys().chain(content[ti].keys()).collect();
        for key in keys {
            let want = winners.get(key);
            let have = content[ti].get(key);
            let line = |what: &str| {
                format!(
                    "node {} {what} {} {key}: has {have:?}, ledger winner {want:?}",
                    ni + 1,
                    t.name
                )
            };
            match (want.map(|w| w.row.as_ref()), have) {
                (Some(Some(w)), Some(h)) if w == h => {}
                (Some(Some(_)), Some(_)) => {
                    n.stale += 1;
                    c.detail(line("stale"));
                }
                (Some(Some(_)), None) => {
                    n.lost += 1;
                    c.detail(line("lost"));
                }
                (Some(None), Some(_)) => {
                    n.resurrected += 1;
                    c.detail(line("resurrected"));
                }
                (None, Some(_)) => {
                    n.phantom += 1;
                    c.detail(line("phantom"));
                }
                (_, None) => {}
            }
            if let Some(w) = want {
                let got = clocks[ti].get(key);
                if got != Some(&(w.ver, w.node, w.row.is_none())) {
                    n.clock_mismatch += 1;
                    c.detail(format!(
                        "node {} clock {} {key}: has {got:?}, winner ({}, {}, deleted {})",
                        ni + 1,
                        t.name,
                        w.ver,
                        w.node,
                        w.row.is_none()
                    ));
                }
            }
        }
    }
    n
}

/// Runs `harmonylite -verify-cluster` with `config` until it answers what the table hashes say
/// (`agree`: exit 0; otherwise exit 1), within `deadline`. The product's own check must agree
/// with this program's: a 1 where the hashes agree, or a 0 where they differ, is a failure, and
/// so is never being able to tell.
pub fn verify_cluster(config: &Path, agree: bool, deadline: Duration) -> Result<String, String> {
    let want = if agree { 0 } else { 1 };
    let started = std::time::Instant::now();
    let mut last = String::new();
    while started.elapsed() < deadline {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_harmonylite"))
            .arg("-config")
            .arg(config)
            .arg("-verify-cluster")
            .output()
            .map_err(|e| format!("cannot run -verify-cluster: {e}"))?;
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        match out.status.code() {
            Some(code) if code == want => {
                return Ok(format!(
                    "-verify-cluster agreed (exit {code}) after {:.1}s",
                    started.elapsed().as_secs_f64()
                ));
            }
            Some(0 | 1) => {
                return Err(format!(
                    "-verify-cluster disagrees with the table hashes (they {}): {last}",
                    if agree { "agree" } else { "differ" }
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    Err(format!(
        "-verify-cluster could not tell within {deadline:?}: {last}"
    ))
}
