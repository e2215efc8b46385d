//! Command-line flags, in Go's single-dash style (`-config PATH`) and in double-dash style.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

/// HarmonyLite: leaderless SQLite replication over NATS JetStream.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "harmonylite", disable_version_flag = true)]
pub struct Cli {
    /// Path to the configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Overrides `node_id` from the config.
    #[arg(long = "node-id")]
    pub node_id: Option<u64>,
    /// Remove every trigger and internal object from the database, then exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Database path (with -cleanup; overrides `db_path`).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Take one snapshot, upload it and exit.
    #[arg(long = "save-snapshot")]
    pub save_snapshot: bool,
    /// Cluster (route) listen address of the bundled NATS server, host:port.
    #[arg(long = "cluster-addr")]
    pub cluster_addr: Option<String>,
    /// Comma-separated routes to peers' bundled servers (nats://host:port,...).
    #[arg(long = "cluster-peers")]
    pub cluster_peers: Option<String>,
    /// Comma-separated leaf-node remotes for the bundled server.
    #[arg(long = "leaf-servers")]
    pub leaf_servers: Option<String>,
    /// Print the version, git commit and bundled nats-server version.
    #[arg(long)]
    pub version: bool,
}

/// Parses the process arguments (exits with usage on error, like clap does).
pub fn parse() -> Cli {
    Cli::parse_from(std::env::args_os())
}

/// Parses arguments, for tests.
pub fn try_parse_from<I: IntoIterator<Item = OsString>>(args: I) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(args)
}
