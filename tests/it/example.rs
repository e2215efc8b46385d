//! The README's first command: `examples/local-cluster.sh` starts three nodes that replicate
//! writes made with the `sqlite3` shell.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::app_db::{have_sqlite3_shell, sqlite3_shell};
use crate::harness::{CLUSTERS, eventually, free_port};

#[tokio::test]
async fn local_cluster_script_replicates_sqlite3_writes() {
    if !have_sqlite3_shell() {
        eprintln!("note: sqlite3 shell not installed; scripts/test.sh installs it");
        return;
    }
    let _permit = CLUSTERS.acquire().await.unwrap();
    let demo = tempfile::tempdir().unwrap();
    let out_path = demo.path().join("script.out");
    let base = free_port().min(65_000) - 200;
    let mut script = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/local-cluster.sh"
    ))
    .env("HARMONYLITE_BIN", env!("CARGO_BIN_EXE_harmonylite"))
    .env("DEMO_DIR", demo.path().join("cluster"))
    .env("BASE_PORT", base.to_string())
    .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    eventually("script says ready", Duration::from_secs(120), || {
        if let Ok(Some(status)) = script.try_wait() {
            panic!(
                "script exited early with {status}: {}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        let out = std::fs::read_to_string(&out_path).unwrap_or_default();
        if out.contains("local cluster is ready") {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;
    let dir = demo.path().join("cluster");
    // The five seeded books reach node 3, then a write on node 1 reaches node 2.
    eventually(
        "seed rows on node 3",
        Duration::from_secs(30),
        || match sqlite3_shell(&dir.join("node-3.db"), "SELECT count(*) FROM Books") {
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
        || match sqlite3_shell(
            &dir.join("node-2.db"),
            "SELECT author FROM Books WHERE title = 'Project Hail Mary'",
        ) {
            Ok(a) if a == "Andy Weir" => Ok(()),
            other => Err(other),
        },
    )
    .await;
    // SAFETY: signalling our own child; the script stops its three nodes.
    unsafe { libc::kill(script.id() as libc::pid_t, libc::SIGTERM) };
    let status = script.wait().unwrap();
    assert!(status.success(), "script exit: {status}");
    let out = std::fs::read_to_string(&out_path).unwrap();
    assert!(out.contains("stopped"), "{out}");
}
