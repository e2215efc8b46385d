//! The application: one writer thread per node, each with its own rusqlite connection to its
//! node's database file (through that node's skew VFS), writing the way an application does.
//!
//! Operations: inserts of fresh keys, upserts of the contended keys every node writes, updates,
//! deletes and primary-key changes, sometimes several in one transaction. After each statement
//! the writer reads the key's capture record (its version) inside the same transaction; after
//! `COMMIT` succeeds the writes go into the ledger. A transaction that fails (database busy
//! while harmonylite is paused mid-apply, for instance) was not acknowledged and is not recorded.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};

use crate::ledger::{Entry, Ledger};
use crate::rng::Rng;
use crate::schema::{CONTENDED, KeySpace, TABLES, Table, fmt_values};
use crate::skew;

#[derive(Default, Debug)]
pub struct WriterStats {
    pub node: usize,
    pub committed_tx: u64,
    pub failed_tx: u64,
    /// Statements that changed nothing (the row was gone) or hit the primary key of another row.
    pub no_ops: u64,
    /// A committed write whose capture record was missing or had the wrong tombstone flag.
    pub capture_errors: Vec<String>,
}

pub struct Writers {
    stop: Arc<AtomicBool>,
    control: Arc<Control>,
    handles: Vec<JoinHandle<WriterStats>>,
}

/// What a fault may ask of the application: hold every writer (no transaction starts while
/// held), or have one writer open its database file again (it was deleted and recreated).
#[derive(Default)]
struct Control {
    held: AtomicBool,
    /// Writers inside a transaction right now.
    in_transaction: AtomicU64,
    /// Per node: bumped to make that writer reopen its connection.
    reopen: [AtomicU64; 8],
}

impl Writers {
    pub fn spawn(dbs: &[PathBuf], rng: &mut Rng, ledger: &Arc<Ledger>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let control = Arc::new(Control::default());
        let handles = dbs
            .iter()
            .enumerate()
            .map(|(node, path)| {
                let path = path.clone();
                let mut w = Writer {
                    node,
                    rng: rng.fork(node as u64),
                    seq: 0,
                    own: TABLES.iter().map(|_| Vec::new()).collect(),
                    stats: WriterStats {
                        node,
                        ..WriterStats::default()
                    },
                };
                let (stop, ledger, control) = (stop.clone(), ledger.clone(), control.clone());
                std::thread::Builder::new()
                    .name(format!("writer-{node}"))
                    .spawn(move || {
                        let mut opened = control.reopen[node].load(Ordering::SeqCst);
                        let mut conn = open(&path, node);
                        while !stop.load(Ordering::Relaxed) {
                            if control.held.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(5));
                                continue;
                            }
                            let wanted = control.reopen[node].load(Ordering::SeqCst);
                            if wanted != opened {
                                (opened, conn) = (wanted, open(&path, node));
                            }
                            control.in_transaction.fetch_add(1, Ordering::SeqCst);
                            // Checked again inside: `hold` may have begun in between.
                            if !control.held.load(Ordering::SeqCst) {
                                w.transaction(&mut conn, &ledger);
                            }
                            control.in_transaction.fetch_sub(1, Ordering::SeqCst);
                            let pause = w.rng.range(5, 30);
                            std::thread::sleep(Duration::from_millis(pause));
                        }
                        w.stats
                    })
                    .unwrap()
            })
            .collect();
        Writers {
            stop,
            control,
            handles,
        }
    }

    /// Holds every writer: returns once none is inside a transaction, and none starts one
    /// until `resume`.
    pub fn hold(&self) {
        self.control.held.store(true, Ordering::SeqCst);
        while self.control.in_transaction.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn resume(&self) {
        self.control.held.store(false, Ordering::SeqCst);
    }

    /// Makes node `node`'s writer open its database file again before its next transaction.
    pub fn reopen(&self, node: usize) {
        self.control.reopen[node].fetch_add(1, Ordering::SeqCst);
    }

    pub fn stop(mut self) -> Vec<WriterStats> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .drain(..)
            .map(|h| h.join().expect("writer thread panicked"))
            .collect()
    }
}

/// Short: a writer blocked by a paused harmonylite gives up and tries again later, so the run
/// keeps writing on the other tables' behalf.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to node `node`'s database through that node's skew VFS, as the application
/// opens it.
fn open(path: &std::path::Path, node: usize) -> Connection {
    let conn = Connection::open_with_flags_and_vfs(
        path,
        OpenFlags::default(),
        skew::vfs_name(node).as_str(),
    )
    .unwrap();
    conn.busy_timeout(BUSY_TIMEOUT).unwrap();
    conn
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Writer {
    node: usize,
    rng: Rng,
    seq: u64,
    /// Keys this writer inserted, per table: targets for updates, deletes and key changes. A hint
    /// only (another node may have deleted them; the statement then changes nothing).
    own: Vec<Vec<Vec<Value>>>,
    stats: WriterStats,
}

enum OpError {
    Sql(rusqlite::Error),
    Capture(String),
}

impl From<rusqlite::Error> for OpError {
    fn from(e: rusqlite::Error) -> Self {
        OpError::Sql(e)
    }
}

impl Writer {
    fn transaction(&mut self, conn: &mut Connection, ledger: &Ledger) {
        let ops = if self.rng.chance(15) {
            self.rng.range(2, 4)
        } else {
            1
        };
        let Ok(tx) = conn.transaction_with_behavior(TransactionBehavior::Immediate) else {
            self.stats.failed_tx += 1;
            return;
        };
        let mut batch = Vec::new();
        for _ in 0..ops {
            match self.op(&tx) {
                Ok(entries) if entries.is_empty() => self.stats.no_ops += 1,
                Ok(entries) => batch.extend(entries),
                // A key change onto an existing key: SQLite undid that statement only.
                Err(OpError::Sql(rusqlite::Error::SqliteFailure(e, _)))
                    if e.code == ErrorCode::ConstraintViolation =>
                {
                    self.stats.no_ops += 1
                }
                Err(OpError::Sql(_)) => {
                    self.stats.failed_tx += 1;
                    return; // dropping `tx` rolls back
                }
                Err(OpError::Capture(what)) => {
                    if self.stats.capture_errors.len() < 20 {
                        self.stats.capture_errors.push(what);
                    }
                    self.stats.failed_tx += 1;
                    return;
                }
            }
        }
        match tx.commit() {
            Ok(()) => {
                self.stats.committed_tx += 1;
                ledger.record(batch);
            }
            Err(_) => self.stats.failed_tx += 1,
        }
    }

    fn op(&mut self, tx: &Transaction) -> Result<Vec<Entry>, OpError> {
        let ti = self.rng.below(TABLES.len() as u64) as usize;
        let t = &TABLES[ti];
        self.seq += 1;
        let vals = t.vals(self.node, self.seq);
        let roll = self.rng.below(100);
        if roll < 25 {
            let key = t.key(KeySpace::Private {
                node: self.node,
                n: self.seq,
            });
            exec(tx, &insert_sql(t, false), &[&key[..], &vals[..]].concat())?;
            self.own[ti].push(key.clone());
            Ok(vec![stamp(tx, ti, &key, Some(&vals))?])
        } else if roll < 50 {
            let key = t.key(KeySpace::Contended(self.rng.below(CONTENDED)));
            exec(tx, &insert_sql(t, true), &[&key[..], &vals[..]].concat())?;
            Ok(vec![stamp(tx, ti, &key, Some(&vals))?])
        } else if roll < 70 {
            let key = self.target(ti);
            let sql = format!(
                "UPDATE \"{}\" SET {} WHERE {}",
                t.name,
                set_list(t.vals, 1),
                t.key_where(t.vals.len() + 1)
            );
            if exec(tx, &sql, &[&vals[..], &key[..]].concat())? == 0 {
                return Ok(vec![]);
            }
            Ok(vec![stamp(tx, ti, &key, Some(&vals))?])
        } else if roll < 83 {
            let key = self.target(ti);
            let sql = format!("DELETE FROM \"{}\" WHERE {}", t.name, t.key_where(1));
            if exec(tx, &sql, &key)? == 0 {
                return Ok(vec![]);
            }
            self.own[ti].retain(|k| k != &key);
            Ok(vec![stamp(tx, ti, &key, None)?])
        } else {
            let old = self.target(ti);
            let new = if self.rng.chance(70) {
                t.key(KeySpace::Private {
                    node: self.node,
                    n: self.seq,
                })
            } else {
                t.key(KeySpace::Contended(self.rng.below(CONTENDED)))
            };
            if new == old {
                return Ok(vec![]);
            }
            let sql = format!(
                "UPDATE \"{}\" SET {}, {} WHERE {}",
                t.name,
                set_list(t.keys, 1),
                set_list(t.vals, t.keys.len() + 1),
                t.key_where(t.keys.len() + t.vals.len() + 1)
            );
            if exec(tx, &sql, &[&new[..], &vals[..], &old[..]].concat())? == 0 {
                return Ok(vec![]);
            }
            self.own[ti].retain(|k| k != &old);
            self.own[ti].push(new.clone());
            // A key change is a tombstone on the old key and a write of the new one.
            Ok(vec![
                stamp(tx, ti, &old, None)?,
                stamp(tx, ti, &new, Some(&vals))?,
            ])
        }
    }

    /// A key to update, delete or move: one of ours, or a contended one.
    fn target(&mut self, ti: usize) -> Vec<Value> {
        let own = &self.own[ti];
        if !own.is_empty() && self.rng.chance(50) {
            own[self.rng.below(own.len() as u64) as usize].clone()
        } else {
            TABLES[ti].key(KeySpace::Contended(self.rng.below(CONTENDED)))
        }
    }
}

fn exec(tx: &Transaction, sql: &str, params: &[Value]) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?
        .execute(rusqlite::params_from_iter(params.iter()))
}

fn insert_sql(t: &Table, upsert: bool) -> String {
    let cols: Vec<String> = t
        .keys
        .iter()
        .chain(t.vals)
        .map(|c| format!("\"{c}\""))
        .collect();
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let mut sql = format!(
        "INSERT INTO \"{}\"({}) VALUES({})",
        t.name,
        cols.join(", "),
        marks.join(", ")
    );
    if upsert {
        let keys: Vec<String> = t.keys.iter().map(|c| format!("\"{c}\"")).collect();
        let set: Vec<String> = t
            .vals
            .iter()
            .map(|c| format!("\"{c}\" = excluded.\"{c}\""))
            .collect();
        sql.push_str(&format!(
            " ON CONFLICT({}) DO UPDATE SET {}",
            keys.join(", "),
            set.join(", ")
        ));
    }
    sql
}

fn set_list(cols: &[&str], first: usize) -> String {
    cols.iter()
        .enumerate()
        .map(|(i, c)| format!("\"{c}\" = ?{}", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ledger entry of a write just made in `tx`: the key's newest capture record, as the
/// trigger wrote it.
fn stamp(
    tx: &Transaction,
    ti: usize,
    key: &[Value],
    vals: Option<&[Value]>,
) -> Result<Entry, OpError> {
    let t = &TABLES[ti];
    // The trigger appends to the capture log; nothing folds it while this transaction holds the
    // write lock, so the statement's record is the key's newest one there.
    let sql = format!(
        "SELECT ver, node, kind = 2 FROM {} WHERE {} ORDER BY seq DESC LIMIT 1",
        t.capture_log(),
        t.clock_where()
    );
    let clock = tx
        .prepare_cached(&sql)?
        .query_row(rusqlite::params_from_iter(key.iter()), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
    let (ver, node, deleted) = match clock {
        Ok(c) => c,
        Err(rusqlite::Error::QueryReturnedNoRows) => {
            return Err(OpError::Capture(format!(
                "{} key {} written but has no capture record",
                t.name,
                fmt_values(key)
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if (deleted != 0) != vals.is_none() {
        return Err(OpError::Capture(format!(
            "{} key {} captured as deleted={deleted} after a {}",
            t.name,
            fmt_values(key),
            if vals.is_none() { "delete" } else { "write" }
        )));
    }
    Ok(Entry {
        table: ti,
        key: fmt_values(key),
        row: vals.map(fmt_values),
        ver,
        node,
    })
}
