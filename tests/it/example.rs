//! The README's first command: `examples/local-cluster.sh` starts three nodes that replicate
//! writes made with the `sqlite3` shell.

use std::time::Duration;

use crate::common::process::{Process, Spec};
use crate::harness::app_db::{require_sqlite3_shell, sqlite3_shell};
use crate::harness::{CLUSTERS, eventually, fixed_port_span};

#[tokio::test]
async fn local_cluster_script_replicates_sqlite3_writes() {
    require_sqlite3_shell();
    let _permit = CLUSTERS.acquire().await.unwrap();
    let demo = tempfile::tempdir().unwrap();
    let out_path = demo.path().join("script.out");
    // The script derives its ports from BASE_PORT: routes on base+1..=3, clients on
    // base+101..=103. One span of fixed ports covers base+1..=base+103.
    let base = fixed_port_span(103) - 1;
    let script = Spec::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/local-cluster.sh"
    ))
    .env("HARMONYLITE_BIN", env!("CARGO_BIN_EXE_harmonylite"))
    .env("DEMO_DIR", demo.path().join("cluster"))
    .env("BASE_PORT", base.to_string());
    // Its own process group: if the test fails, `Drop` takes the script and its nodes along.
    let mut script = Process::start("local-cluster.sh", script, &out_path).unwrap();
    script
        .wait_log(Duration::from_secs(120), |out| {
            out.contains("local cluster is ready").then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = demo.path().join("cluster");
    // The five seeded books reach node 3, then a write on node 1 reaches node 2.
    eventually(
        "seed rows on node 3",
        Duration::from_secs(30),
        async || match sqlite3_shell(&dir.join("node-3.db"), "SELECT count(*) FROM Books") {
            Ok(n) if n == "5" => Ok(()),
            other => Err(other),
        },
    )
    .await;
    sqlite3_shell(
        &dir.join("node-1.db"),
        "INSERT INTO Books (title, author, publication_year) VALUES ('Project Hail Mary', 'Andy Weir', 2021)",
    )
    .unwrap();
    eventually(
        "new row on node 2",
        Duration::from_secs(30),
        async || match sqlite3_shell(
            &dir.join("node-2.db"),
            "SELECT author FROM Books WHERE title = 'Project Hail Mary'",
        ) {
            Ok(a) if a == "Andy Weir" => Ok(()),
            other => Err(other),
        },
    )
    .await;
    // The script stops its three nodes on SIGTERM.
    script.signal(libc::SIGTERM);
    let status = script
        .wait_exit(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "script exit: {status}");
    let out = script.log();
    assert!(out.contains("stopped"), "{out}");
}
