//! Test harness: real nats-server processes, real SQLite files written by a separate connection,
//! nodes run in-process (`Node`) or as the real binary (`NodeProcess`), condition polling with
//! deadlines (`eventually`) and content comparison (`assert_converged`). Processes, polling and
//! fixed ports are shared with the fault-injection program (tests/common/).

#![allow(dead_code)]

pub mod app_db;
pub mod go_peer;
pub mod messages;
pub mod nats;
pub mod node;
pub mod stores;

pub use crate::common::poll::eventually;
pub use crate::common::ports::{ClosedPort, fixed_port, fixed_port_span};
pub use app_db::AppDb;
pub use node::{Cluster, Node, NodeProcess, test_config};

/// Only one multi-node cluster at a time: 2 cores run at most one comfortably.
pub static CLUSTERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

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

/// Kills a node's bundled nats-server (SIGKILL) and waits until its supervisor started it again.
pub async fn kill_bundled_server(server: &harmonylite::nats::server::ServerState) {
    let old = server.pid();
    // SAFETY: killing the test's own grandchild.
    unsafe { libc::kill(old as libc::pid_t, libc::SIGKILL) };
    eventually(
        "server restarted",
        std::time::Duration::from_secs(30),
        async || {
            let pid = server.pid();
            if server.restarts() >= 1 && pid != 0 && pid != old {
                Ok(())
            } else {
                Err((server.restarts(), pid))
            }
        },
    )
    .await;
}
