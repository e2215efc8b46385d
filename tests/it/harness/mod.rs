//! Test harness: real nats-server processes, real SQLite files written by a separate connection,
//! nodes run in-process (`Node`) or as the real binary (`NodeProcess`), condition polling with
//! deadlines (`eventually`) and content comparison (`assert_converged`).

#![allow(dead_code)]

pub mod app_db;
pub mod nats;
pub mod node;
pub mod stores;

use std::fmt::Debug;
use std::net::TcpListener;
use std::time::{Duration, Instant};

pub use app_db::AppDb;
pub use node::{Cluster, Node, NodeProcess, test_config};

/// Only one multi-node cluster at a time: 2 cores run at most one comfortably.
pub static CLUSTERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Polls `check` every 25 ms until it returns `Ok`, or panics at the deadline with the last
/// value it saw.
pub async fn eventually<T, E: Debug>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() > end => {
                panic!("{what}: not reached within {deadline:?}; last observed: {last:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// Blocking twin of `eventually`, for code outside a runtime.
pub fn eventually_blocking<T, E: Debug>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() > end => {
                panic!("{what}: not reached within {deadline:?}; last observed: {last:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(25)),
        }
    }
}

/// A port that was free a moment ago. Only for cluster route ports, which every peer must know
/// before any of them starts; client ports use `-1` and are read back from the ports file.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Compares every table's content across databases; on failure prints the differing rows.
pub fn assert_converged(dbs: &[&AppDb], tables: &[&str]) {
    for table in tables {
        let dumps: Vec<Vec<String>> = dbs.iter().map(|db| db.dump(table)).collect();
        for (i, dump) in dumps.iter().enumerate().skip(1) {
            if dump != &dumps[0] {
                let only_first: Vec<_> = dumps[0].iter().filter(|r| !dump.contains(r)).collect();
                let only_other: Vec<_> = dump.iter().filter(|r| !dumps[0].contains(r)).collect();
                panic!(
                    "table {table} differs between db 0 ({} rows) and db {i} ({} rows)\n\
                     only in db 0: {only_first:#?}\nonly in db {i}: {only_other:#?}",
                    dumps[0].len(),
                    dump.len()
                );
            }
        }
    }
}

/// True when every database has the same content in every table.
pub fn converged(dbs: &[&AppDb], tables: &[&str]) -> Result<(), String> {
    for table in tables {
        let first = dbs[0].dump(table);
        for (i, db) in dbs.iter().enumerate().skip(1) {
            let other = db.dump(table);
            if other != first {
                return Err(format!(
                    "{table}: db0 has {} rows, db{i} has {}",
                    first.len(),
                    other.len()
                ));
            }
        }
    }
    Ok(())
}
