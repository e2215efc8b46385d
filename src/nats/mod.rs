//! NATS: the bundled server (`spec`: what it runs with; `server`: extract, start, supervise,
//! stop), the client connection (auth, TLS, retries) and the JetStream objects we use.

pub mod bundle;
pub mod client;
pub mod command;
pub mod exposure;
pub mod kv;
pub mod server;
pub mod setup;
pub mod spec;

use std::path::PathBuf;
use std::time::Duration;

/// Errors of the NATS layer.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("{what} ({path})")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid nats.bind_address {value:?}")]
    BadBind {
        value: String,
        #[source]
        source: crate::config::BindError,
    },
    #[error("bundled nats-server exited during start: {status}")]
    ServerExited { status: String },
    #[error("bundled nats-server did not report its ports within {waited:?}")]
    ServerNotReady { waited: Duration },
    #[error("invalid NATS url in {urls}: {reason}")]
    BadUrl { urls: String, reason: String },
    #[error("cannot connect to NATS at {urls} after {attempts} attempts: {reason}")]
    Connect {
        urls: String,
        attempts: u32,
        reason: String,
    },
    #[error("no nkey user seed (SU...) in {path}")]
    BadSeed { path: PathBuf },
    #[error("cannot set up stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
}
