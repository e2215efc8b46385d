//! The configuration model: every TOML key of HarmonyLite (DESIGN §6) with its default.
//!
//! Owns parsing (`Config::from_toml_str`, `Config::load`) and the derived paths. Validation lives
//! in `validate.rs`, secrets in `secret.rs`. Existing keys keep HarmonyLite's millisecond integers;
//! conversion to `Duration` happens in the accessor methods, never in the model. A HarmonyLite
//! config file must load unchanged; unknown keys are errors that name the key and its line.

pub mod identity;
mod keys;
mod secret;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use keys::{DEFAULT_MAX_SIZE_MB, KeyList, MIN_KEY_BYTES};
pub use secret::{Secret, redact_url};
pub use validate::{BindError, ConfigError, parse_bind, parse_nats_bind};

use crate::ids::{Lane, NodeId, ShardId};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub db_path: PathBuf,
    pub node_id: Option<u64>,
    /// Where `node_id` came from, once resolved (`Config::resolve_node_id`); not a key.
    #[serde(skip)]
    pub node_id_source: Option<identity::NodeIdSource>,
    pub seq_map_path: Option<PathBuf>,
    /// Our addition: where the bundled nats-server, its JetStream store and our temp files
    /// live. Default: `<db dir>/harmonylite-node-<id>` (the Go layout for the embedded store).
    pub data_dir: Option<PathBuf>,
    pub publish: bool,
    pub replicate: bool,
    pub scan_max_changes: u32,
    pub cleanup_interval: u64,
    pub sleep_timeout: u64,
    pub polling_interval: u64,
    pub replication_log: ReplicationLogConfig,
    pub replication: ReplicationConfig,
    pub sharding: ShardingConfig,
    pub snapshot: SnapshotConfig,
    pub nats: NatsConfig,
    pub prometheus: PrometheusConfig,
    pub logging: LoggingConfig,
    pub health_check: HealthCheckConfig,
    pub admin: AdminConfig,
    pub schema: SchemaConfig,
    pub consistency: ConsistencyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            db_path: PathBuf::new(),
            node_id: None,
            node_id_source: None,
            seq_map_path: None,
            data_dir: None,
            publish: true,
            replicate: true,
            scan_max_changes: 512,
            cleanup_interval: 5000,
            sleep_timeout: 0,
            polling_interval: 0,
            replication_log: ReplicationLogConfig::default(),
            replication: ReplicationConfig::default(),
            sharding: ShardingConfig::default(),
            snapshot: SnapshotConfig::default(),
            nats: NatsConfig::default(),
            prometheus: PrometheusConfig::default(),
            logging: LoggingConfig::default(),
            health_check: HealthCheckConfig::default(),
            admin: AdminConfig::default(),
            schema: SchemaConfig::default(),
            consistency: ConsistencyConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationLogConfig {
    pub shards: u32,
    pub max_entries: i64,
    /// Unset: 3 on an embedded cluster of three or more servers, 1 otherwise
    /// (`Config::resolve_replicas`).
    pub replicas: Option<u32>,
    pub compress: bool,
    pub update_existing: bool,
    /// Our addition: read and write the Go HarmonyLite peer's streams and message format, so a
    /// Go cluster can be replaced one node at a time (`docs/migrating-from-go.md`).
    pub go_compat: bool,
}

impl Default for ReplicationLogConfig {
    fn default() -> Self {
        Self {
            shards: 1,
            max_entries: 1024,
            replicas: None,
            compress: true,
            update_existing: false,
            go_compat: false,
        }
    }
}

/// `[replication]`: documented by HarmonyLite, implemented here.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Largest message we publish, and the embedded server's `max_payload`.
    pub max_payload_mb: u32,
    /// How far ahead of this node's clock a remote change's version may be; further, it is
    /// quarantined for an operator instead of applied.
    pub max_clock_skew_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            max_payload_mb: 1,
            max_clock_skew_ms: 60_000,
        }
    }
}

/// `[sharding]`: documented by HarmonyLite, implemented here.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShardingConfig {
    /// Tables never captured nor applied.
    pub ignore_tables: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotStore {
    Nats,
    S3,
    Webdav,
    Sftp,
    /// Our addition: a directory on the local file system (`[snapshot.fs] path`).
    Fs,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    pub enabled: bool,
    pub store: SnapshotStore,
    pub interval: u64,
    pub leader_ttl: u64,
    /// Our addition: how many snapshots to keep in the store.
    pub keep: u32,
    pub nats: SnapshotNatsConfig,
    pub s3: SnapshotS3Config,
    pub webdav: SnapshotUrlConfig,
    pub sftp: SnapshotUrlConfig,
    pub fs: SnapshotFsConfig,
    /// Our addition: the keys that sign (the first) and verify (any) snapshot manifests; one
    /// string or a list (`keys.rs`, `docs/decisions/011-snapshot-authenticity.md`).
    pub signing_key: Secret<KeyList>,
    /// Our addition: a file of keys, one a line, the first signs (instead of `signing_key`).
    pub signing_key_file: String,
    /// Our addition: the largest snapshot, compressed or not, this node downloads, in MiB.
    pub max_size_mb: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            store: SnapshotStore::Nats,
            interval: 0,
            leader_ttl: 30_000,
            keep: 3,
            nats: SnapshotNatsConfig::default(),
            s3: SnapshotS3Config::default(),
            webdav: SnapshotUrlConfig::default(),
            sftp: SnapshotUrlConfig::default(),
            fs: SnapshotFsConfig::default(),
            signing_key: Secret::default(),
            signing_key_file: String::new(),
            max_size_mb: DEFAULT_MAX_SIZE_MB,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotNatsConfig {
    pub replicas: u32,
    pub bucket: String,
}

impl Default for SnapshotNatsConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            bucket: String::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotS3Config {
    pub endpoint: String,
    pub path: String,
    pub bucket: String,
    pub use_ssl: bool,
    pub access_key: String,
    pub secret: Secret<String>,
    pub session_token: Secret<String>,
    pub region: String,
    pub force_path_style: bool,
}

/// `[snapshot.webdav]` and `[snapshot.sftp]`: the URL may carry credentials, so it is secret.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotUrlConfig {
    pub url: Secret<String>,
    /// Our addition for SFTP: a known-hosts file; the host key is always checked against it
    /// unless `insecure_ignore_host_key` is set.
    pub known_hosts_file: String,
    pub insecure_ignore_host_key: bool,
    /// Our addition for SFTP: private key file for key authentication.
    pub key_file: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotFsConfig {
    pub path: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Empty: run the bundled server. Otherwise connect to these servers.
    pub urls: Vec<String>,
    pub subject_prefix: String,
    pub stream_prefix: String,
    /// Client listen address of the bundled server; port `-1` picks a free one.
    pub bind_address: String,
    pub server_config: String,
    /// Our addition: the JetStream domain. On a node whose bundled server runs JetStream it
    /// names that server's domain; on an edge (`-leaf-servers`), or with `urls`, the domain
    /// whose JetStream this node uses (`docs/decisions/016-edges-share-the-hubs-jetstream.md`).
    pub jetstream_domain: String,
    pub connect_retries: u32,
    pub reconnect_wait_seconds: u64,
    pub user_name: String,
    pub user_password: Secret<String>,
    pub seed_file: String,
    #[serde(alias = "tls_ca_file")]
    pub ca_file: String,
    #[serde(alias = "tls_cert_file")]
    pub cert_file: String,
    #[serde(alias = "tls_key_file")]
    pub key_file: String,
    /// Our addition: how the bundled servers' routes authenticate (`[nats.cluster]`).
    pub cluster: NatsClusterConfig,
}

/// `[nats.cluster]`: our addition. Routes between bundled servers (`-cluster-addr`,
/// `-cluster-peers`) authenticate by user and password or by mutual TLS; see
/// `docs/security.md`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsClusterConfig {
    /// Route credentials. Empty: `nats.user_name`/`user_password`, when set.
    pub user_name: String,
    pub user_password: Secret<String>,
    /// Mutual TLS on routes, with these files (each empty one: `nats.ca_file`, `cert_file`,
    /// `key_file`). Certificates need both server and client usage.
    pub tls: bool,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    /// Cluster on a non-loopback address with neither route credentials nor TLS. Anyone who
    /// reaches the route port can then write into every node's database.
    pub allow_insecure: bool,
}

/// The user and password routes require and present.
#[derive(Clone, PartialEq)]
pub struct RouteCredentials {
    pub user: String,
    pub password: Secret<String>,
}

impl std::fmt::Debug for RouteCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RouteCredentials({}, ***)", self.user)
    }
}

/// The files of mutual TLS on routes.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTls {
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

impl NatsConfig {
    /// Route credentials: `[nats.cluster]`'s, else the client's user and password.
    pub fn route_credentials(&self) -> Option<RouteCredentials> {
        let (user, password) = if !self.cluster.user_name.is_empty() {
            (&self.cluster.user_name, &self.cluster.user_password)
        } else if !self.user_name.is_empty() {
            (&self.user_name, &self.user_password)
        } else {
            return None;
        };
        Some(RouteCredentials {
            user: user.clone(),
            password: password.clone(),
        })
    }

    /// Route TLS files when `nats.cluster.tls` is on (validation made sure all three are set).
    pub fn route_tls(&self) -> Option<RouteTls> {
        let c = &self.cluster;
        let or = |own: &String, shared: &String| if own.is_empty() { shared } else { own }.clone();
        c.tls.then(|| RouteTls {
            ca_file: or(&c.ca_file, &self.ca_file),
            cert_file: or(&c.cert_file, &self.cert_file),
            key_file: or(&c.key_file, &self.key_file),
        })
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            subject_prefix: "harmonylite-change-log".to_owned(),
            stream_prefix: "harmonylite-changes".to_owned(),
            bind_address: "127.0.0.1:-1".to_owned(),
            server_config: String::new(),
            jetstream_domain: String::new(),
            connect_retries: 5,
            reconnect_wait_seconds: 2,
            user_name: String::new(),
            user_password: Secret::default(),
            seed_file: String::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            cluster: NatsClusterConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    pub enable: bool,
    pub bind: String,
    pub namespace: String,
    pub subsystem: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            enable: false,
            bind: "0.0.0.0:3010".to_owned(),
            namespace: "harmonylite".to_owned(),
            subsystem: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Console,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub verbose: bool,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub enable: bool,
    pub bind: String,
    pub path: String,
    pub detailed: bool,
    /// Our addition: `<path>/ready` fails while a shard's oldest unapplied message is older
    /// than this (0 = no limit).
    pub ready_max_lag_seconds: u64,
    /// Our addition: `<path>/ready` fails while a shard has more unapplied messages than this
    /// (0 = no limit).
    pub ready_max_lag_messages: u64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            enable: false,
            bind: "0.0.0.0:8090".to_owned(),
            path: "/health".to_owned(),
            detailed: true,
            ready_max_lag_seconds: 60,
            ready_max_lag_messages: 0,
        }
    }
}

/// `[admin]`: our addition, the browser dashboard.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enable: bool,
    pub bind: String,
    pub auth_token: Secret<String>,
    /// A TLS-terminating proxy serves the dashboard: the session cookie gets `Secure`.
    pub behind_tls: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enable: false,
            bind: "127.0.0.1:8091".to_owned(),
            auth_token: Secret::default(),
            behind_tls: false,
        }
    }
}

/// `[schema]`: our addition, schema versioning knobs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaConfig {
    /// Periodic schema recheck while running (the guide's five minutes).
    pub recheck_interval_ms: u64,
    /// How often this node re-writes its schema registry entry (also written on every change).
    pub registry_refresh_ms: u64,
}

impl Default for SchemaConfig {
    fn default() -> Self {
        Self {
            recheck_interval_ms: 300_000,
            registry_refresh_ms: 30_000,
        }
    }
}

/// `[consistency]`: our addition, the content digests every node publishes for
/// `-verify-cluster` (`docs/decisions/015-consistency-digests.md`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyConfig {
    /// Time between two digest rounds, ms; 0 turns digests off.
    pub digest_interval_ms: u64,
    /// Whether this node repairs what the digests show it holds differently from the
    /// majority (off: it only reports).
    pub repair: bool,
    /// How long, ms, a difference in versions may last, unchanged, while every node applies
    /// what was in flight when it was first seen, before it counts as divergence.
    pub settle_ms: u64,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        Self {
            digest_interval_ms: 60_000,
            repair: true,
            settle_ms: 180_000,
        }
    }
}

impl Config {
    /// This node's id: configured, or derived (`identity::derive_node_id`). `Config::load`
    /// resolves it, so this derives only for configs built by hand.
    pub fn node_id(&self) -> NodeId {
        match self.node_id {
            Some(id) => NodeId(id),
            None => NodeId(
                identity::derive_node_id()
                    .expect("no machine id and no host name: node_id must be set")
                    .0,
            ),
        }
    }

    /// Fixes an unset `node_id` to the derived one; says where the id came from. Fails when
    /// the machine has neither a machine id nor a host name.
    pub fn resolve_node_id(&mut self) -> Result<(), ConfigError> {
        let source = match self.node_id {
            Some(_) => identity::NodeIdSource::Configured,
            None => {
                let (id, source) = identity::derive_node_id().ok_or(ConfigError::NoNodeId)?;
                self.node_id = Some(id);
                source
            }
        };
        self.node_id_source = Some(source);
        Ok(())
    }

    /// Directory for the bundled server, its store and our temp files.
    pub fn data_dir(&self) -> PathBuf {
        match &self.data_dir {
            Some(dir) => dir.clone(),
            None => self
                .db_dir()
                .join(format!("harmonylite-node-{}", self.node_id())),
        }
    }

    /// Where the sequence map lives: configured, or `<db dir>/seq-map.cbor` as in HarmonyLite.
    pub fn seq_map_path(&self) -> PathBuf {
        match &self.seq_map_path {
            Some(path) => path.clone(),
            None => self.db_dir().join("seq-map.cbor"),
        }
    }

    /// The directory that holds the database file.
    pub fn db_dir(&self) -> PathBuf {
        match self.db_path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn polling_interval(&self) -> Option<Duration> {
        (self.polling_interval > 0).then(|| Duration::from_millis(self.polling_interval))
    }

    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_millis(self.cleanup_interval.max(1))
    }

    pub fn sleep_timeout(&self) -> Option<Duration> {
        (self.sleep_timeout > 0).then(|| Duration::from_millis(self.sleep_timeout))
    }

    /// Stream (and KV) replicas: `replication_log.replicas`, resolved by `resolve_replicas`.
    pub fn replicas(&self) -> usize {
        self.replication_log.replicas.unwrap_or(1) as usize
    }

    /// Fills in an unset `replication_log.replicas`: 3 when this node runs the bundled server in
    /// a cluster of three or more servers (itself and `peers` routes), 1 otherwise. A set value
    /// the bundled servers cannot hold (more replicas than servers) is refused here, naming the
    /// key, rather than by JetStream when the first stream is created. An `edge` (a bundled
    /// server joined to a hub with `-leaf-servers`) holds no replica: the hub's servers do, so
    /// its value is not bounded here.
    pub fn resolve_replicas(&mut self, peers: usize, edge: bool) -> Result<(), ConfigError> {
        let bundled = self.nats.urls.is_empty() && !edge;
        let servers = peers + 1;
        let default = if bundled && servers >= 3 { 3 } else { 1 };
        let replicas = *self.replication_log.replicas.get_or_insert(default);
        if bundled && replicas as usize > servers {
            return Err(validate::invalid(
                "replication_log.replicas",
                replicas,
                format!(
                    "at most the number of bundled servers ({servers}: this node and its \
                     -cluster-peers); add peers or lower it"
                ),
            ));
        }
        Ok(())
    }

    /// An edge (a bundled server joined to a hub with `-leaf-servers`) runs no JetStream of its
    /// own and reaches the hub's through the leaf connection, which NATS allows only by domain:
    /// refused without `nats.jetstream_domain`, naming the key.
    pub fn check_edge(&self) -> Result<(), ConfigError> {
        if !self.nats.jetstream_domain.is_empty() {
            return Ok(());
        }
        Err(validate::invalid(
            "nats.jetstream_domain",
            "\"\"",
            "-leaf-servers makes this node an edge that uses its hub's JetStream, which it \
             reaches by domain: set nats.jetstream_domain here and on every hub node to the same \
             name (docs/production-deployment.md, \"Edge sites\")",
        ))
    }

    /// `replication.max_clock_skew_ms`.
    pub fn max_clock_skew_ms(&self) -> u64 {
        self.replication.max_clock_skew_ms
    }

    /// Largest message payload we publish, in bytes.
    pub fn max_payload_bytes(&self) -> usize {
        self.replication.max_payload_mb.max(1) as usize * 1024 * 1024
    }

    /// Name of the JetStream stream for a shard: `<stream_prefix>-<n>`, or `<stream_prefix>-rs-<n>`
    /// with `go_compat`, where the Go peer's streams and subjects (numbered from 1) would
    /// otherwise overlap ours (`docs/decisions/008-go-compatibility.md`).
    pub fn stream_name(&self, shard: ShardId) -> String {
        format!(
            "{}-{}{}",
            self.nats.stream_prefix,
            self.native_infix(),
            shard.0
        )
    }

    /// Subject the changes of a shard are published on (`<subject_prefix>-[rs-]<n>`).
    pub fn subject(&self, shard: ShardId) -> String {
        format!(
            "{}-{}{}",
            self.nats.subject_prefix,
            self.native_infix(),
            shard.0
        )
    }

    fn native_infix(&self) -> &'static str {
        if self.replication_log.go_compat {
            "rs-"
        } else {
            ""
        }
    }

    /// The Go peer's stream of its shard `n` (from 1): `<stream_prefix>-c-<n>` when it
    /// compresses, `<stream_prefix>-<n>` when not.
    pub fn go_stream_name(&self, n: u32) -> String {
        let c = if self.replication_log.compress {
            "-c"
        } else {
            ""
        };
        format!("{}{c}-{n}", self.nats.stream_prefix)
    }

    /// The Go peer's subject of its shard `n` (from 1).
    pub fn go_subject(&self, n: u32) -> String {
        format!("{}-{n}", self.nats.subject_prefix)
    }

    /// Every stream this node reads: its shards, and with `go_compat` the Go peer's.
    pub fn lanes(&self) -> Vec<Lane> {
        let shards = self.replication_log.shards;
        let native = (0..shards).map(|n| Lane::Native(ShardId(n)));
        let go = (1..=shards).map(Lane::Go);
        if self.replication_log.go_compat {
            native.chain(go).collect()
        } else {
            native.collect()
        }
    }

    /// The stream a lane reads.
    pub fn lane_stream(&self, lane: Lane) -> String {
        match lane {
            Lane::Native(shard) => self.stream_name(shard),
            Lane::Go(n) => self.go_stream_name(n),
        }
    }

    /// The subject of a lane's stream.
    pub fn lane_subject(&self, lane: Lane) -> String {
        match lane {
            Lane::Native(shard) => self.subject(shard),
            Lane::Go(n) => self.go_subject(n),
        }
    }

    /// `snapshot.interval`: `None` means only when the log nears `max_entries`.
    pub fn snapshot_interval(&self) -> Option<Duration> {
        (self.snapshot.interval > 0).then(|| Duration::from_millis(self.snapshot.interval))
    }

    /// `consistency.digest_interval_ms`: time between two digest rounds (`None`: off).
    pub fn consistency_interval(&self) -> Option<Duration> {
        let ms = self.consistency.digest_interval_ms;
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// `snapshot.leader_ttl`: how long the snapshot leader lease lives without renewal.
    pub fn snapshot_leader_ttl(&self) -> Duration {
        Duration::from_millis(self.snapshot.leader_ttl)
    }

    /// `nats.reconnect_wait_seconds`.
    pub fn nats_reconnect_wait(&self) -> Duration {
        Duration::from_secs(self.nats.reconnect_wait_seconds)
    }

    /// `schema.recheck_interval_ms`: `None` turns the periodic recheck off.
    pub fn schema_recheck_interval(&self) -> Option<Duration> {
        let ms = self.schema.recheck_interval_ms;
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// `schema.registry_refresh_ms`.
    pub fn schema_registry_refresh(&self) -> Duration {
        Duration::from_millis(self.schema.registry_refresh_ms.max(1))
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, |_| {})
    }

    /// Reads a config file, applies `overrides` (the command-line flags), then validates, so a
    /// flag can supply what the file lacks. Errors point at the line of the offending key.
    pub fn load_with(
        path: &Path,
        overrides: impl FnOnce(&mut Config),
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse_toml(&text)?;
        overrides(&mut cfg);
        cfg.validate().map_err(|e| e.locate(&text))?;
        cfg.resolve_node_id()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests;
