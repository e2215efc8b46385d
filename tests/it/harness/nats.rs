//! `NatsServer`: a standalone nats-server (the bundled binary) for external-mode tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::eventually_blocking;

pub struct NatsServer {
    child: Child,
    pub dir: TempDir,
    pub port: u16,
}

impl NatsServer {
    /// Starts a JetStream server on a random loopback port; `extra_conf` is appended to its
    /// config (authorization, tls blocks).
    pub fn start(extra_conf: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let binary = harmonylite::nats::bundle::extract(&dir.path().join("bin")).unwrap();
        let conf = dir.path().join("server.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:-1\"\njetstream {{ store_dir: {:?} }}\n{extra_conf}\n",
                dir.path().join("js")
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new(&binary);
        cmd.arg("-c")
            .arg(&conf)
            .arg("--ports_file_dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // ETXTBSY: another test thread forked while the binary was open for writing.
        let child = eventually_blocking("spawn nats-server", Duration::from_secs(5), || {
            cmd.spawn().map_err(|e| e.to_string())
        });
        let ports = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let port = eventually_blocking("nats-server ports file", Duration::from_secs(20), || {
            let text = std::fs::read_to_string(&ports).map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            let url = v["nats"][0].as_str().ok_or("no nats url")?.to_owned();
            url.rsplit(':')
                .next()
                .unwrap()
                .parse::<u16>()
                .map_err(|e| e.to_string())
        });
        Self { child, dir, port }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Freezes the server (SIGSTOP): clients see it as unreachable, its port stays taken.
    pub fn pause(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGSTOP) };
    }

    pub fn resume(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGCONT) };
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!(
                "--- nats-server log tail ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a process with this pid is alive (not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

pub fn dir_of(p: &Path) -> PathBuf {
    p.parent().unwrap().to_path_buf()
}
