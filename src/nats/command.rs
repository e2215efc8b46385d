//! How a command (`-schema-status-cluster`, `-save-snapshot` for a running node) reaches NATS:
//! the configured `nats.urls`, else this node's running bundled server, found through the
//! ports file the server writes in `<data_dir>/nats`. One connection attempt: a command
//! answers quickly instead of waiting out the daemon's retries.

use std::path::Path;
use std::sync::Arc;

use async_nats::Client;

use super::client::{self, ConnectionState};
use crate::config::Config;

/// Errors reaching NATS from a command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(
        "no NATS server to ask: nats.urls is empty and no bundled nats-server of this node is \
         running (no ports file in {dir}); start the node, or set nats.urls"
    )]
    NoServer { dir: String },
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
}

/// A client connection for a command, with the node's credentials.
pub async fn connect(cfg: &Config) -> Result<Client, CommandError> {
    crate::install_crypto_provider();
    let urls = urls(cfg)?;
    let mut nats = cfg.nats.clone();
    nats.connect_retries = 1;
    client::connect(&nats, &urls, Arc::new(ConnectionState::uncounted()))
        .await
        .map_err(|e| CommandError::Connect(e.to_string()))
}

/// Where to reach NATS: the configured URLs, else this node's running bundled server.
fn urls(cfg: &Config) -> Result<Vec<String>, CommandError> {
    if !cfg.nats.urls.is_empty() {
        return Ok(cfg.nats.urls.clone());
    }
    let dir = cfg.data_dir().join("nats");
    let from_ports_file = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .flatten()
            .find_map(|e| running_server_urls(&e.path()))
    });
    from_ports_file.ok_or_else(|| CommandError::NoServer {
        dir: dir.display().to_string(),
    })
}

/// The client URLs in `path` when it is the ports file (`nats-server_<pid>.ports`) of a
/// server that still runs.
fn running_server_urls(path: &Path) -> Option<Vec<String>> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let pid: i32 = name
        .strip_prefix("nats-server_")?
        .strip_suffix(".ports")?
        .parse()
        .ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let urls: Vec<String> = ports["nats"]
        .as_array()?
        .iter()
        .filter_map(|u| u.as_str().map(loopback_for_wildcard))
        .collect();
    (!urls.is_empty()).then_some(urls)
}

/// A server listening on every interface is reached on loopback.
fn loopback_for_wildcard(url: &str) -> String {
    url.replace("://0.0.0.0:", "://127.0.0.1:")
        .replace("://[::]:", "://[::1]:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_reached_on_loopback() {
        assert_eq!(
            loopback_for_wildcard("nats://0.0.0.0:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(
            loopback_for_wildcard("nats://[::]:4222"),
            "nats://[::1]:4222"
        );
        assert_eq!(
            loopback_for_wildcard("nats://10.0.0.1:4222"),
            "nats://10.0.0.1:4222"
        );
    }
}
