//! HarmonyLite: leaderless SQLite replication over NATS JetStream.
//!
//! The data path, one module per step:
//!
//! ```text
//! application write ─▶ trigger (cdc::triggers) ─▶ __harmonylite__<t>_clock row
//!   ─▶ cdc::watch wakes ─▶ cdc::scan reads stamped keys above the watermark
//!   ─▶ replication::publisher (wire: CBOR + zstd, per shard) ─▶ JetStream stream per shard
//!   ─▶ replication::consumer (durable, per shard, on every node)
//!   ─▶ apply (compare (version, node), upsert or tombstone, conflicts) ─▶ db::writer
//! ```
//!
//! Modules, bottom to top (each uses only modules listed before it; `docs/architecture.md`
//! draws the layers):
//! - `ids`, `hlc`, `change`, `position`, `retry`, `tasks`, `error`, `memory`: identifier
//!   newtypes, the hybrid logical clock, the change model, a stream position (the contiguous
//!   applied floor), the one backoff, the task set, error chains, returning freed memory.
//! - `cli`, `config`, `logging`: flags (Go single-dash compatible), TOML model, tracing setup.
//! - `instance`: the lock that keeps one process per node, and where that process lives.
//! - `sql`: identifier quoting, our internal tables, value conversions, `SqlError`.
//! - `metrics`, `nats`, `status`: Prometheus metrics; bundled server, client connection and
//!   streams; the live facts of a running node.
//! - `catalog`: the application's tables and the schema hash over them.
//! - `cdc`, `apply`: trigger SQL, install/remove, scanning, commit watching; the apply-or-skip
//!   decision and conflict journal.
//! - `db`: the only code that opens SQLite (writer thread actor, readers, pragmas, restore).
//! - `schema`: pause/resume gate, tracker (DDL detection), registry, status commands.
//! - `replication`: wire format, shard hash, publisher, consumers, sequence map; the Go
//!   HarmonyLite peer's format (`go_format`, `replication_log.go_compat`).
//! - `snapshot`: leader lease, taking, signing, storing, verifying and restoring snapshots.
//! - `maintenance`: requests that stop the engine around a change of positions.
//! - `admin`: commands (`-save-snapshot`) sent to the running node over NATS.
//! - `consistency`: content digests published to KV, `-verify-cluster`, self-repair.
//! - `web`: health check, exporter and admin dashboard servers.
//! - `node`: the wiring that starts and stops everything.

pub mod admin;
pub mod apply;
pub mod catalog;
pub mod cdc;
pub mod change;
pub mod cli;
pub mod config;
pub mod consistency;
pub mod db;
pub mod error;
pub mod hlc;
pub mod ids;
pub mod instance;
pub mod logging;
pub mod maintenance;
pub mod memory;
pub mod metrics;
pub mod nats;
pub mod node;
pub mod position;
pub mod replication;
pub mod retry;
pub mod schema;
pub mod snapshot;
pub mod sql;
pub mod status;
pub mod tasks;
pub mod web;

/// Picks the TLS crypto provider once per process: both `ring` (async-nats) and `aws-lc-rs`
/// (the S3/WebDAV HTTP client) are compiled in, and rustls refuses to guess between them.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git commit this build was made from (`unknown` outside a checkout).
pub const GIT_COMMIT: &str = env!("HARMONYLITE_GIT_COMMIT");
