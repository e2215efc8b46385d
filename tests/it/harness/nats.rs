//! `NatsServer`: a standalone nats-server (the bundled binary) for external-mode tests. Every
//! port is `-1`, picked by the server and read back from its ports file; it is ready when its
//! monitoring endpoint answers `/healthz` with 200.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;

use crate::common::poll::eventually;
use crate::common::process::{Ports, Process, Spec, port_of};

pub use crate::common::process::pid_alive;

pub struct NatsServer {
    /// First, so the server is gone before its directory is removed.
    process: Process,
    pub dir: TempDir,
    /// Client port.
    pub port: u16,
    /// Every listener's URLs, as the server reported them.
    pub ports: Ports,
}

impl NatsServer {
    /// Starts a JetStream server on random loopback ports; `extra_conf` is appended to its
    /// config (authorization, tls, leafnodes blocks; a listener there should take port -1 and
    /// be read back from `ports`).
    pub async fn start(extra_conf: &str) -> Self {
        Self::start_with(true, extra_conf).await
    }

    /// A plain server without JetStream (a clustered JetStream server is not healthy until it
    /// finds a meta leader; a rogue route peer needs none).
    pub async fn start_plain(extra_conf: &str) -> Self {
        Self::start_with(false, extra_conf).await
    }

    async fn start_with(jetstream: bool, extra_conf: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let binary = harmonylite::nats::bundle::extract(&dir.path().join("bin")).unwrap();
        let conf = dir.path().join("server.conf");
        let js = if jetstream {
            format!("jetstream {{ store_dir: {:?} }}\n", dir.path().join("js"))
        } else {
            String::new()
        };
        std::fs::write(
            &conf,
            format!("listen: \"127.0.0.1:-1\"\nhttp: \"127.0.0.1:-1\"\n{js}{extra_conf}\n"),
        )
        .unwrap();
        let spec = Spec::new(&binary)
            .arg("-c")
            .arg(&conf)
            .arg("--ports_file_dir")
            .arg(dir.path());
        let mut process = Process::start("nats-server", spec, &dir.path().join("server.log"))
            .unwrap_or_else(|e| panic!("{e}"));
        let pid = process.pid().unwrap();
        let ports = eventually(
            "nats-server ports file",
            Duration::from_secs(20),
            async || {
                if let Some(status) = process.exited() {
                    panic!("nats-server exited with {status}:\n{}", process.log());
                }
                Ports::read(dir.path(), pid).ok_or("no ports file yet")
            },
        )
        .await;
        let port = ports
            .nats
            .first()
            .and_then(|u| port_of(u))
            .expect("client port");
        let monitoring = ports
            .monitoring
            .first()
            .and_then(|u| port_of(u))
            .expect("monitoring port");
        eventually(
            "nats-server /healthz",
            Duration::from_secs(20),
            async || healthz(monitoring),
        )
        .await;
        Self {
            process,
            dir,
            port,
            ports,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// The port of the leafnode listener (a `leafnodes { listen: "127.0.0.1:-1" }` block), as
    /// the server reports it in `/varz` (its ports file does not list leafnode listeners).
    pub fn leafnode_port(&self) -> u16 {
        let monitoring = self.ports.monitoring.first().and_then(|u| port_of(u));
        let varz = http_get(monitoring.expect("monitoring port"), "/varz")
            .unwrap_or_else(|e| panic!("nats-server /varz: {e}"));
        let body = varz.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("nats-server /varz is not JSON ({e}): {varz}"));
        v["leaf"]["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("no leafnode listener in /varz: {body}"))
    }

    /// `GET <path>` on the monitoring port, as JSON (`/routez`, `/varz`).
    pub fn monitor(&self, path: &str) -> serde_json::Value {
        let monitoring = self.ports.monitoring.first().and_then(|u| port_of(u));
        let answer = http_get(monitoring.expect("monitoring port"), path)
            .unwrap_or_else(|e| panic!("nats-server {path}: {e}"));
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("nats-server {path} is not JSON ({e}): {answer}"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Freezes the server (SIGSTOP): clients see it as unreachable, its port stays taken.
    pub fn pause(&self) {
        self.process.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.process.signal(libc::SIGCONT);
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits until this server logs that a server it dials (a route, a leaf node) refused its
    /// credentials.
    pub async fn wait_refused(&self) {
        eventually(
            "the connection refused",
            Duration::from_secs(60),
            async || {
                let log = self.log();
                if log.to_ascii_lowercase().contains("authorization violation") {
                    Ok(())
                } else {
                    Err(log)
                }
            },
        )
        .await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // `process` prints the log tail if the test panicked and kills the server.
        self.resume();
    }
}

/// `GET /healthz` on the monitoring port: `Ok` on 200, else what it answered.
fn healthz(port: u16) -> Result<(), String> {
    let answer = http_get(port, "/healthz")?;
    if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(answer)
    }
}

/// A plain HTTP/1.0 GET on loopback (so the answer is never chunked); the whole answer.
fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(answer)
}
