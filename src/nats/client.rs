//! The client connection: credentials, TLS, bounded initial retries, endless reconnects.
//!
//! The first connection is tried `connect_retries` times, `reconnect_wait_seconds` apart; after
//! it succeeds the client never gives up reconnecting, and the connection state is kept in
//! `ConnectionState` for health, metrics and the dashboard. `jetstream` is the JetStream API of
//! the configured domain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use prometheus::IntCounter;
use tracing::{info, warn};

use super::NatsError;
use crate::config::NatsConfig;
use crate::config::redact_url;
use crate::error::Chain;
use crate::retry::Backoff;

/// Live connection state, updated from the client's event callback.
#[derive(Debug)]
pub struct ConnectionState {
    connected: AtomicBool,
    /// The node's `nats_disconnects_total` counter (a shared handle).
    disconnects: IntCounter,
}

impl ConnectionState {
    /// A state that counts lost connections on `disconnects`.
    pub fn new(disconnects: IntCounter) -> ConnectionState {
        ConnectionState {
            connected: AtomicBool::new(false),
            disconnects,
        }
    }

    /// A state for a short-lived command connection, counted nowhere.
    pub fn uncounted() -> ConnectionState {
        let counter =
            IntCounter::new("disconnects", "not exported").expect("a constant, valid metric name");
        ConnectionState::new(counter)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    pub fn disconnects(&self) -> u64 {
        self.disconnects.get()
    }
}

/// Builds connect options from the `[nats]` section (credentials, TLS, reconnect policy).
pub async fn options(
    cfg: &NatsConfig,
    state: Arc<ConnectionState>,
) -> Result<ConnectOptions, NatsError> {
    let mut opts = ConnectOptions::new()
        .name("harmonylite")
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        // Capped at 2 s: after a partition heals, the node is back within about one wait.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100u64 << attempts.min(5) as u64).min(2_000))
        })
        .event_callback(move |event| {
            let state = state.clone();
            async move {
                match event {
                    Event::Connected => {
                        state.connected.store(true, Ordering::Relaxed);
                        info!("connected to NATS");
                    }
                    Event::Disconnected => {
                        state.connected.store(false, Ordering::Relaxed);
                        state.disconnects.inc();
                        warn!("disconnected from NATS, reconnecting");
                    }
                    other => info!(event = %other, "NATS client event"),
                }
            }
        });
    if !cfg.user_name.is_empty() {
        opts = opts.user_and_password(cfg.user_name.clone(), cfg.user_password.expose().clone());
    }
    if !cfg.seed_file.is_empty() {
        let seed = read_seed(&cfg.seed_file)?;
        opts = opts.nkey(seed);
    }
    if !cfg.ca_file.is_empty() {
        opts = opts
            .add_root_certificates(cfg.ca_file.clone().into())
            .require_tls(true);
    }
    if !cfg.cert_file.is_empty() && !cfg.key_file.is_empty() {
        opts = opts
            .add_client_certificate(cfg.cert_file.clone().into(), cfg.key_file.clone().into())
            .require_tls(true);
    }
    Ok(opts)
}

/// Connects to `urls`, retrying the first connection as configured.
pub async fn connect(
    cfg: &NatsConfig,
    urls: &[String],
    state: Arc<ConnectionState>,
) -> Result<Client, NatsError> {
    let attempts = cfg.connect_retries.max(1);
    // `reconnect_wait_seconds` between attempts, as the Go peer waits (plus jitter).
    let wait = Duration::from_secs(cfg.reconnect_wait_seconds);
    let mut backoff = Backoff::new(wait, wait);
    let shown: Vec<String> = urls.iter().map(|u| redact_url(u)).collect();
    let mut last = String::new();
    for attempt in 1..=attempts {
        let opts = options(cfg, state.clone()).await?;
        let addrs: Vec<async_nats::ServerAddr> = urls
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .map_err(|e: std::io::Error| NatsError::BadUrl {
                urls: shown.join(","),
                reason: e.to_string(),
            })?;
        match opts.connect(addrs).await {
            Ok(client) => {
                state.connected.store(true, Ordering::Relaxed);
                return Ok(client);
            }
            Err(error) => {
                last = error.to_string();
                warn!(attempt, attempts, urls = %shown.join(","), error = %Chain(&error), "cannot connect to NATS");
                if attempt < attempts {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
    Err(NatsError::Connect {
        urls: shown.join(","),
        attempts,
        reason: last,
    })
}

/// The JetStream API on `client`: the configured domain's (`nats.jetstream_domain`), reached
/// across leaf connections, or the local one.
pub fn jetstream(client: Client, cfg: &NatsConfig) -> async_nats::jetstream::Context {
    if cfg.jetstream_domain.is_empty() {
        async_nats::jetstream::new(client)
    } else {
        async_nats::jetstream::with_domain(client, &cfg.jetstream_domain)
    }
}

/// Reads an nkey seed from a file: the first line that looks like a user seed (`SU…`), so plain
/// seed files and `nsc`-style files with comments both work.
pub fn read_seed(path: &str) -> Result<String, NatsError> {
    let text = std::fs::read_to_string(path).map_err(|source| NatsError::Io {
        what: "reading nats.seed_file",
        path: path.into(),
        source,
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("SU"))
        .map(str::to_owned)
        .ok_or_else(|| NatsError::BadSeed { path: path.into() })
}

/// The public key of a seed, which the bundled server requires from clients.
pub fn public_key_of_seed(seed: &str, path: &str) -> Result<String, NatsError> {
    nkeys::KeyPair::from_seed(seed)
        .map(|kp| kp.public_key())
        .map_err(|_| NatsError::BadSeed { path: path.into() })
}
