//! Capture seen from outside: the application's own tools as writers (Debian's sqlite3 shell,
//! Python's sqlite3, both with trusted_schema OFF), `-cleanup`, and taking over a database left
//! by the Go HarmonyLite.

use std::process::Command;
use std::time::Duration;

use crate::harness::app_db::{require_sqlite3_shell, sqlite3_shell};
use crate::harness::node::process_toml;
use crate::harness::{AppDb, Cluster, NodeProcess};

const CONVERGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite3_shell_and_python_with_trusted_schema_off_replicate() {
    require_sqlite3_shell();
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);";
    let cluster = Cluster::start(2, schema, |_| {}).await;
    let db0 = cluster.db(0).path.clone();
    sqlite3_shell(
        &db0,
        "PRAGMA trusted_schema = OFF; INSERT INTO t VALUES (1, 'shell'); \
         UPDATE t SET v = 'shell2' WHERE id = 1;",
    )
    .unwrap();
    let py = "import sqlite3, sys\n\
              c = sqlite3.connect(sys.argv[1], timeout=10)\n\
              c.execute('PRAGMA trusted_schema = OFF')\n\
              c.execute(\"INSERT INTO t VALUES (2, 'python')\")\n\
              c.commit()\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(py)
        .arg(&db0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.wait_converged(&["t"], CONVERGE).await;
    let other = cluster.db(1);
    assert_eq!(
        other
            .query_string("SELECT v FROM t WHERE id = 1")
            .as_deref(),
        Some("shell2")
    );
    assert_eq!(
        other
            .query_string("SELECT v FROM t WHERE id = 2")
            .as_deref(),
        Some("python")
    );
    cluster.stop().await;
}

fn internal_objects(db: &AppDb) -> i64 {
    db.query_i64("SELECT count(*) FROM sqlite_master WHERE substr(name, 1, 15) = '__harmonylite__'")
        .unwrap()
}

#[tokio::test]
async fn cleanup_removes_every_internal_object_and_restart_reinstalls() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("node1.db");
    let app = AppDb::open(&db_path);
    app.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         CREATE INDEX t_v ON t(v);
         CREATE TABLE audit(n INTEGER);
         CREATE TRIGGER app_audit AFTER INSERT ON t BEGIN INSERT INTO audit VALUES (NEW.id); END;
         INSERT INTO t VALUES (1, 'a');",
    );
    let toml = process_toml(dir.path(), 1, "", "", "");
    let mut node = NodeProcess::spawn(dir.path(), 1, &toml, &[]);
    node.wait_ready().await;
    node.signal(libc::SIGTERM);
    assert_eq!(node.exit_code(Duration::from_secs(30)).await, Some(0));
    assert!(internal_objects(&app) > 0, "capture installed");

    for args in [["-cleanup", "-db"], ["--cleanup", "--db"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_harmonylite"))
            .args(args)
            .arg(&db_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(internal_objects(&app), 0);
    }
    let names: Vec<String> = {
        let mut v = Vec::new();
        for n in ["t", "t_v", "audit", "app_audit"] {
            if app.query_i64(&format!(
                "SELECT count(*) FROM sqlite_master WHERE name = '{n}'"
            )) == Some(1)
            {
                v.push(n.to_owned());
            }
        }
        v
    };
    assert_eq!(
        names,
        ["t", "t_v", "audit", "app_audit"],
        "the application's objects are untouched"
    );
    app.exec("INSERT INTO t VALUES (2, 'b')");
    assert_eq!(
        app.count("audit"),
        2,
        "the application's own trigger still fires"
    );

    node.restart().unwrap();
    node.wait_ready().await;
    assert!(internal_objects(&app) > 0, "restart re-installs capture");
    node.signal(libc::SIGTERM);
    assert_eq!(node.exit_code(Duration::from_secs(30)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_left_by_go_harmonylite_is_taken_over() {
    let schema = "CREATE TABLE books(id INTEGER PRIMARY KEY, title TEXT);";
    let go_leftovers = "
        CREATE TABLE __harmonylite___change_log_global (id INTEGER PRIMARY KEY AUTOINCREMENT, change_table_id INTEGER, table_name TEXT);
        CREATE TABLE __harmonylite__books_change_log (id INTEGER PRIMARY KEY AUTOINCREMENT, val_id INTEGER, val_title TEXT, type TEXT, created_at INTEGER, state INTEGER);
        CREATE TRIGGER __harmonylite__books_change_log_on_insert AFTER INSERT ON books
        BEGIN INSERT INTO __harmonylite__books_change_log(val_id, val_title, type, created_at, state) VALUES (NEW.id, NEW.title, 'insert', 0, 0); END;
        INSERT INTO books VALUES (1, 'from the Go days');";
    let cluster = Cluster::start(2, schema, |cfg| {
        if cfg.node_id == Some(1) {
            AppDb::open(&cfg.db_path).exec(go_leftovers);
        }
    })
    .await;
    cluster.wait_converged(&["books"], CONVERGE).await;
    let a = cluster.db(0);
    for gone in [
        "__harmonylite___change_log_global",
        "__harmonylite__books_change_log",
        "__harmonylite__books_change_log_on_insert",
    ] {
        assert_eq!(
            a.query_i64(&format!(
                "SELECT count(*) FROM sqlite_master WHERE name = '{gone}'"
            )),
            Some(0),
            "{gone} remains"
        );
    }
    a.exec("INSERT INTO books VALUES (2, 'after takeover')");
    cluster.wait_converged(&["books"], CONVERGE).await;
    assert_eq!(cluster.db(1).count("books"), 2);
    cluster.stop().await;
}
