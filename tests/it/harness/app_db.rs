//! `AppDb`: the application's side: its own rusqlite connection and transactions on the same file
//! harmonylite replicates, as any application would write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

pub struct AppDb {
    pub path: PathBuf,
    conn: Connection,
}

impl AppDb {
    /// Opens (creating if needed) the database file with a busy timeout, like a careful app.
    pub fn open(path: &Path) -> Self {
        let conn = Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        Self {
            path: path.to_path_buf(),
            conn,
        }
    }

    pub fn exec(&self, sql: &str) {
        self.conn
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub fn execute<P: rusqlite::Params>(&self, sql: &str, params: P) -> usize {
        self.conn
            .execute(sql, params)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs `f` inside one transaction.
    pub fn tx<T>(&mut self, f: impl FnOnce(&rusqlite::Transaction) -> T) -> T {
        let tx = self.conn.transaction().unwrap();
        let out = f(&tx);
        tx.commit().unwrap();
        out
    }

    pub fn count(&self, table: &str) -> i64 {
        self.conn
            .query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
                r.get(0)
            })
            .unwrap_or(-1)
    }

    pub fn query_i64(&self, sql: &str) -> Option<i64> {
        self.conn.query_row(sql, [], |r| r.get(0)).ok()
    }

    pub fn query_string(&self, sql: &str) -> Option<String> {
        self.conn
            .query_row(sql, [], |r| r.get::<_, Option<String>>(0))
            .ok()
            .flatten()
    }

    /// Every row of a table as text, ordered, with values shown exactly (type and bytes).
    pub fn dump(&self, table: &str) -> Vec<String> {
        let sql = format!("SELECT * FROM \"{table}\"");
        let Ok(mut stmt) = self.conn.prepare(&sql) else {
            return vec!["<no table>".into()];
        };
        let cols = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let mut parts = Vec::with_capacity(cols);
                for i in 0..cols {
                    parts.push(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                        rusqlite::types::ValueRef::Integer(v) => format!("i{v}"),
                        rusqlite::types::ValueRef::Real(v) => format!("r{:?}", v.to_bits()),
                        rusqlite::types::ValueRef::Text(t) => format!("t{t:?}"),
                        rusqlite::types::ValueRef::Blob(b) => format!("b{b:?}"),
                    });
                }
                Ok(parts.join("|"))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        rows
    }
}

/// Runs `sql` with the system's `sqlite3` shell as an operator would (waiting for locks up to
/// 10 s) and returns its output, or its error text.
pub fn sqlite3_shell(db: &Path, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 10000")
        .arg(db)
        .arg(sql)
        .output()
        .map_err(|e| format!("cannot run sqlite3: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "sqlite3 {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Panics unless the `sqlite3` shell is installed: the tests that use it prove that writes made
/// with the operator's own tool replicate, which nothing else can stand in for.
pub fn require_sqlite3_shell() {
    if let Err(e) = std::process::Command::new("sqlite3")
        .arg("-version")
        .output()
    {
        panic!(
            "the sqlite3 shell is missing ({e}): scripts/test.sh installs it \
             (apt-get install sqlite3)"
        );
    }
}
