//! The configuration model: every TOML key of HarmonyLite (DESIGN §6) with its default.
//!
//! Owns parsing (`Config::from_toml_str`, `Config::load`) and the derived paths. Validation lives
//! in `validate.rs`, secrets in `secret.rs`. Existing keys keep HarmonyLite's millisecond integers;
//! conversion to `Duration` happens in the accessor methods, never in the model. A HarmonyLite
//! config file must load unchanged; unknown keys are errors that name the key and its line.

mod secret;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use secret::Secret;
pub use validate::{BindError, ConfigError, parse_bind, parse_nats_bind};

use crate::ids::NodeId;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub db_path: PathBuf,
    pub node_id: Option<u64>,
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            db_path: PathBuf::new(),
            node_id: None,
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
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationLogConfig {
    pub shards: u32,
    pub max_entries: i64,
    pub replicas: u32,
    pub compress: bool,
    pub update_existing: bool,
}

impl Default for ReplicationLogConfig {
    fn default() -> Self {
        Self {
            shards: 1,
            max_entries: 1024,
            replicas: 1,
            compress: true,
            update_existing: false,
        }
    }
}

/// `[replication]`: documented by HarmonyLite, implemented here.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Largest message we publish, and the embedded server's `max_payload`.
    pub max_payload_mb: u32,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self { max_payload_mb: 1 }
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
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            subject_prefix: "harmonylite-change-log".to_owned(),
            stream_prefix: "harmonylite-changes".to_owned(),
            bind_address: ":-1".to_owned(),
            server_config: String::new(),
            connect_retries: 5,
            reconnect_wait_seconds: 2,
            user_name: String::new(),
            user_password: Secret::default(),
            seed_file: String::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
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
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enable: false,
            bind: "127.0.0.1:8091".to_owned(),
            auth_token: Secret::default(),
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

impl Config {
    /// This node's id: configured, or derived from the machine id like HarmonyLite does.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.node_id.unwrap_or_else(machine_node_id))
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

    /// Largest message payload we publish, in bytes.
    pub fn max_payload_bytes(&self) -> usize {
        self.replication.max_payload_mb.max(1) as usize * 1024 * 1024
    }

    /// Name of the JetStream stream for a shard.
    pub fn stream_name(&self, shard: crate::ids::ShardId) -> String {
        format!("{}-{}", self.nats.stream_prefix, shard.0)
    }

    /// Subject the changes of a shard are published on.
    pub fn subject(&self, shard: crate::ids::ShardId) -> String {
        format!("{}-{}", self.nats.subject_prefix, shard.0)
    }

    /// `snapshot.interval`: `None` means only when the log nears `max_entries`.
    pub fn snapshot_interval(&self) -> Option<Duration> {
        (self.snapshot.interval > 0).then(|| Duration::from_millis(self.snapshot.interval))
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
        Ok(cfg)
    }
}

/// HarmonyLite's derivation: FNV-1 64 of the OS machine id. Falls back to the host name.
fn machine_node_id() -> u64 {
    let id = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| "harmonylite".to_owned()));
    fnv1_64(id.as_bytes())
}

fn fnv1_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        hash ^= u64::from(*b);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of `reference/production-deployment-guide.txt`, verbatim.
    const PRODUCTION_GUIDE: &str = r#"# Database settings
db_path = "/var/lib/harmonylite/data.db"
node_id = 1 # Unique per node
seq_map_path = "/var/lib/harmonylite/seq-map.cbor"
cleanup_interval = 30000 # 30 seconds
[replication_log]
shards = 4
max_entries = 2048
replicas = 3
compress = true
[snapshot]
enabled = true
store = "s3" # Or another supported backend
interval = 3600000 # 1 hour
[snapshot.s3]
# See Configuration Reference for full S3 settings
endpoint = "s3.amazonaws.com"
bucket = "your-backup-bucket"
path = "harmonylite/snapshots"
use_ssl = true
access_key = "your-access-key"
secret = "your-secret-key"
[nats]
urls = ["nats://nats-server-1:4222", "nats://nats-server-2:4222", "nats://nats-server-3:4222"]
connect_retries = 10
reconnect_wait_seconds = 5
[prometheus]
enable = true
bind = "127.0.0.1:3010" # Only bind to localhost if using a reverse proxy
[logging]
verbose = false # Less verbose in production
format = "json" # Structured logging
"#;

    /// Every key, none at its default.
    const EVERY_KEY: &str = r#"
db_path = "/srv/app.db"
node_id = 7
seq_map_path = "/srv/seq.cbor"
data_dir = "/srv/hl"
publish = false
replicate = false
scan_max_changes = 100
cleanup_interval = 1000
sleep_timeout = 15000
polling_interval = 50

[replication_log]
shards = 2
max_entries = 10
replicas = 3
compress = false
update_existing = true

[replication]
max_payload_mb = 8

[sharding]
ignore_tables = ["sessions", "cache"]

[snapshot]
enabled = true
store = "sftp"
interval = 60000
leader_ttl = 2000
keep = 5

[snapshot.nats]
replicas = 3
bucket = "snaps"

[snapshot.s3]
endpoint = "minio:9000"
path = "snap/path"
bucket = "bkt"
use_ssl = true
access_key = "AKIA"
secret = "s3-secret-value"
session_token = "s3-session-value"
region = "eu-west-1"
force_path_style = true

[snapshot.webdav]
url = "https://dav.example/x?dir=/s&login=bob&secret=dav-secret-value"

[snapshot.sftp]
url = "sftp://bob:sftp-secret-value@backup:22/snaps"
known_hosts_file = "/etc/ssh/known"
insecure_ignore_host_key = true
key_file = "/etc/hl/id_ed25519"

[snapshot.fs]
path = "/backup"

[nats]
urls = ["nats://a:4222", "tls://b:4443"]
subject_prefix = "sp"
stream_prefix = "st"
bind_address = "127.0.0.1:4333"
server_config = "/etc/hl/nats.conf"
connect_retries = 9
reconnect_wait_seconds = 3
user_name = "hl"
user_password = "nats-secret-value"
seed_file = "/etc/hl/seed.nk"
ca_file = "/etc/hl/ca.pem"
cert_file = "/etc/hl/cert.pem"
key_file = "/etc/hl/key.pem"

[prometheus]
enable = true
bind = ":9100"
namespace = "hlns"
subsystem = "sub"

[logging]
verbose = true
format = "json"

[health_check]
enable = true
bind = "127.0.0.1:9090"
path = "/healthz"
detailed = false
ready_max_lag_seconds = 5
ready_max_lag_messages = 100

[admin]
enable = true
bind = "0.0.0.0:9091"
auth_token = "admin-secret-value"

[schema]
recheck_interval_ms = 1000
registry_refresh_ms = 5000
"#;

    const SECRETS: [&str; 6] = [
        "s3-secret-value",
        "s3-session-value",
        "dav-secret-value",
        "sftp-secret-value",
        "nats-secret-value",
        "admin-secret-value",
    ];

    fn s(v: &str) -> String {
        v.to_owned()
    }

    /// DESIGN §6, key by key, plus our additions.
    #[test]
    fn defaults_match_design() {
        let c = Config::default();
        assert_eq!(c.db_path, PathBuf::new());
        assert_eq!(c.node_id, None);
        assert_eq!(c.seq_map_path, None);
        assert_eq!(c.data_dir, None);
        assert!(c.publish);
        assert!(c.replicate);
        assert_eq!(c.scan_max_changes, 512);
        assert_eq!(c.cleanup_interval, 5000);
        assert_eq!(c.sleep_timeout, 0);
        assert_eq!(c.polling_interval, 0);

        let log = &c.replication_log;
        assert_eq!(log.shards, 1);
        assert_eq!(log.max_entries, 1024);
        assert_eq!(log.replicas, 1);
        assert!(log.compress);
        assert!(!log.update_existing);
        assert_eq!(c.replication.max_payload_mb, 1);
        assert!(c.sharding.ignore_tables.is_empty());

        let snap = &c.snapshot;
        assert!(snap.enabled);
        assert_eq!(snap.store, SnapshotStore::Nats);
        assert_eq!(snap.interval, 0);
        assert_eq!(snap.leader_ttl, 30_000);
        assert_eq!(snap.keep, 3);
        assert_eq!(
            snap.nats,
            SnapshotNatsConfig {
                replicas: 1,
                bucket: s("")
            }
        );
        assert_eq!(snap.s3, SnapshotS3Config::default());
        assert!(!snap.s3.use_ssl && !snap.s3.force_path_style);
        assert!(snap.webdav.url.is_empty() && snap.sftp.url.is_empty());
        assert!(snap.fs.path.is_empty());

        let nats = &c.nats;
        assert!(nats.urls.is_empty());
        assert_eq!(nats.subject_prefix, "harmonylite-change-log");
        assert_eq!(nats.stream_prefix, "harmonylite-changes");
        assert_eq!(nats.bind_address, ":-1");
        assert_eq!(nats.server_config, "");
        assert_eq!(nats.connect_retries, 5);
        assert_eq!(nats.reconnect_wait_seconds, 2);
        assert_eq!(nats.user_name, "");
        assert!(nats.user_password.is_empty());
        assert_eq!(nats.seed_file, "");
        assert_eq!(
            (&*nats.ca_file, &*nats.cert_file, &*nats.key_file),
            ("", "", "")
        );

        let prom = &c.prometheus;
        assert!(!prom.enable);
        assert_eq!(prom.bind, "0.0.0.0:3010");
        assert_eq!(prom.namespace, "harmonylite");
        assert_eq!(prom.subsystem, "");

        assert!(!c.logging.verbose);
        assert_eq!(c.logging.format, LogFormat::Console);

        let health = &c.health_check;
        assert!(!health.enable);
        assert_eq!(health.bind, "0.0.0.0:8090");
        assert_eq!(health.path, "/health");
        assert!(health.detailed);
        assert_eq!(health.ready_max_lag_seconds, 60);
        assert_eq!(health.ready_max_lag_messages, 0);

        assert!(!c.admin.enable);
        assert_eq!(c.admin.bind, "127.0.0.1:8091");
        assert!(c.admin.auth_token.is_empty());
        assert_eq!(c.schema.recheck_interval_ms, 300_000);
        assert_eq!(c.schema.registry_refresh_ms, 30_000);

        // An empty file gives the defaults, and they are valid once db_path is set.
        assert_eq!(Config::parse_toml("").unwrap(), c);
        let mut valid = c;
        valid.db_path = PathBuf::from("/d.db");
        valid.validate().unwrap();
    }

    #[test]
    fn production_guide_example_loads_unchanged() {
        let c = Config::from_toml_str(PRODUCTION_GUIDE).unwrap();
        assert_eq!(c.db_path, PathBuf::from("/var/lib/harmonylite/data.db"));
        assert_eq!(c.node_id(), NodeId(1));
        assert_eq!(
            c.seq_map_path(),
            PathBuf::from("/var/lib/harmonylite/seq-map.cbor")
        );
        assert_eq!(c.cleanup_interval(), Duration::from_secs(30));
        assert_eq!(c.replication_log.shards, 4);
        assert_eq!(c.replication_log.max_entries, 2048);
        assert_eq!(c.replication_log.replicas, 3);
        assert!(c.replication_log.compress);
        assert_eq!(c.snapshot.store, SnapshotStore::S3);
        assert_eq!(c.snapshot_interval(), Some(Duration::from_secs(3600)));
        assert_eq!(c.snapshot.s3.endpoint, "s3.amazonaws.com");
        assert_eq!(c.snapshot.s3.bucket, "your-backup-bucket");
        assert_eq!(c.snapshot.s3.path, "harmonylite/snapshots");
        assert!(c.snapshot.s3.use_ssl);
        assert_eq!(c.snapshot.s3.access_key, "your-access-key");
        assert_eq!(c.snapshot.s3.secret.expose(), "your-secret-key");
        assert_eq!(c.nats.urls.len(), 3);
        assert_eq!(c.nats.urls[2], "nats://nats-server-3:4222");
        assert_eq!(c.nats.connect_retries, 10);
        assert_eq!(c.nats_reconnect_wait(), Duration::from_secs(5));
        assert!(c.prometheus.enable);
        assert_eq!(
            parse_bind(&c.prometheus.bind).unwrap().to_string(),
            "127.0.0.1:3010"
        );
        assert!(!c.logging.verbose);
        assert_eq!(c.logging.format, LogFormat::Json);
        assert!(!format!("{c:?}").contains("your-secret-key"));
    }

    #[test]
    fn every_key_is_read() {
        let got = Config::from_toml_str(EVERY_KEY).unwrap();
        let want = Config {
            db_path: PathBuf::from("/srv/app.db"),
            node_id: Some(7),
            seq_map_path: Some(PathBuf::from("/srv/seq.cbor")),
            data_dir: Some(PathBuf::from("/srv/hl")),
            publish: false,
            replicate: false,
            scan_max_changes: 100,
            cleanup_interval: 1000,
            sleep_timeout: 15_000,
            polling_interval: 50,
            replication_log: ReplicationLogConfig {
                shards: 2,
                max_entries: 10,
                replicas: 3,
                compress: false,
                update_existing: true,
            },
            replication: ReplicationConfig { max_payload_mb: 8 },
            sharding: ShardingConfig {
                ignore_tables: vec![s("sessions"), s("cache")],
            },
            snapshot: SnapshotConfig {
                enabled: true,
                store: SnapshotStore::Sftp,
                interval: 60_000,
                leader_ttl: 2000,
                keep: 5,
                nats: SnapshotNatsConfig {
                    replicas: 3,
                    bucket: s("snaps"),
                },
                s3: SnapshotS3Config {
                    endpoint: s("minio:9000"),
                    path: s("snap/path"),
                    bucket: s("bkt"),
                    use_ssl: true,
                    access_key: s("AKIA"),
                    secret: Secret::new(s("s3-secret-value")),
                    session_token: Secret::new(s("s3-session-value")),
                    region: s("eu-west-1"),
                    force_path_style: true,
                },
                webdav: SnapshotUrlConfig {
                    url: Secret::new(s(
                        "https://dav.example/x?dir=/s&login=bob&secret=dav-secret-value",
                    )),
                    ..SnapshotUrlConfig::default()
                },
                sftp: SnapshotUrlConfig {
                    url: Secret::new(s("sftp://bob:sftp-secret-value@backup:22/snaps")),
                    known_hosts_file: s("/etc/ssh/known"),
                    insecure_ignore_host_key: true,
                    key_file: s("/etc/hl/id_ed25519"),
                },
                fs: SnapshotFsConfig { path: s("/backup") },
            },
            nats: NatsConfig {
                urls: vec![s("nats://a:4222"), s("tls://b:4443")],
                subject_prefix: s("sp"),
                stream_prefix: s("st"),
                bind_address: s("127.0.0.1:4333"),
                server_config: s("/etc/hl/nats.conf"),
                connect_retries: 9,
                reconnect_wait_seconds: 3,
                user_name: s("hl"),
                user_password: Secret::new(s("nats-secret-value")),
                seed_file: s("/etc/hl/seed.nk"),
                ca_file: s("/etc/hl/ca.pem"),
                cert_file: s("/etc/hl/cert.pem"),
                key_file: s("/etc/hl/key.pem"),
            },
            prometheus: PrometheusConfig {
                enable: true,
                bind: s(":9100"),
                namespace: s("hlns"),
                subsystem: s("sub"),
            },
            logging: LoggingConfig {
                verbose: true,
                format: LogFormat::Json,
            },
            health_check: HealthCheckConfig {
                enable: true,
                bind: s("127.0.0.1:9090"),
                path: s("/healthz"),
                detailed: false,
                ready_max_lag_seconds: 5,
                ready_max_lag_messages: 100,
            },
            admin: AdminConfig {
                enable: true,
                bind: s("0.0.0.0:9091"),
                auth_token: Secret::new(s("admin-secret-value")),
            },
            schema: SchemaConfig {
                recheck_interval_ms: 1000,
                registry_refresh_ms: 5000,
            },
        };
        assert_eq!(got, want);
        assert_eq!(got.data_dir(), PathBuf::from("/srv/hl"));
        assert_eq!(got.polling_interval(), Some(Duration::from_millis(50)));
        assert_eq!(got.sleep_timeout(), Some(Duration::from_secs(15)));
        assert_eq!(got.snapshot_leader_ttl(), Duration::from_secs(2));
        assert_eq!(got.schema_recheck_interval(), Some(Duration::from_secs(1)));
        assert_eq!(got.max_payload_bytes(), 8 * 1024 * 1024);
        assert_eq!(got.stream_name(crate::ids::ShardId(1)), "st-1");
        assert_eq!(got.subject(crate::ids::ShardId(0)), "sp-0");
    }

    #[test]
    fn tls_aliases_are_accepted() {
        let text = "db_path = \"/d.db\"\n[nats]\ntls_ca_file = \"/ca\"\n\
                    tls_cert_file = \"/cert\"\ntls_key_file = \"/key\"\n";
        let c = Config::from_toml_str(text).unwrap();
        assert_eq!(c.nats.ca_file, "/ca");
        assert_eq!(c.nats.cert_file, "/cert");
        assert_eq!(c.nats.key_file, "/key");
        // Both spellings of one key at once is a mistake, not a silent override.
        let both = "db_path = \"/d.db\"\n[nats]\nca_file = \"/a\"\ntls_ca_file = \"/b\"\n";
        assert_eq!(
            Config::from_toml_str(both).unwrap_err().to_string(),
            "config line 4: nats.ca_file: given twice, as ca_file and as its alias tls_ca_file; \
             keep one"
        );
    }

    #[test]
    fn debug_of_config_shows_no_secret() {
        let c = Config::from_toml_str(EVERY_KEY).unwrap();
        for rendered in [format!("{c:?}"), format!("{c:#?}")] {
            for secret in SECRETS {
                assert!(!rendered.contains(secret), "{secret} in {rendered}");
            }
            assert!(rendered.contains("***"));
        }
        // Errors do not echo secrets either.
        let bad_url = "db_path = \"/d.db\"\n[snapshot]\nstore = \"sftp\"\n[snapshot.sftp]\n\
                       url = \"ssh://bob:sftp-secret-value@h/x\"\n";
        let e = Config::from_toml_str(bad_url).unwrap_err().to_string();
        assert!(!e.contains("sftp-secret-value"), "{e}");
    }

    #[test]
    fn derived_paths_and_durations() {
        let mut c =
            Config::from_toml_str("db_path = \"/var/lib/hl/data.db\"\nnode_id = 3\n").unwrap();
        assert_eq!(c.db_dir(), PathBuf::from("/var/lib/hl"));
        assert_eq!(
            c.data_dir(),
            PathBuf::from("/var/lib/hl/harmonylite-node-3")
        );
        assert_eq!(c.seq_map_path(), PathBuf::from("/var/lib/hl/seq-map.cbor"));
        assert_eq!(c.polling_interval(), None);
        assert_eq!(c.sleep_timeout(), None);
        assert_eq!(c.snapshot_interval(), None);
        assert_eq!(c.schema_recheck_interval(), Some(Duration::from_secs(300)));
        c.db_path = PathBuf::from("data.db");
        assert_eq!(c.db_dir(), PathBuf::from("."));
    }

    #[test]
    fn load_with_applies_overrides_before_validating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "node_id = 2\n\n[replication_log]\nshards = 2\n").unwrap();
        assert!(Config::load(&path).is_err(), "db_path missing");
        let c = Config::load_with(&path, |c| c.db_path = PathBuf::from("/from/flag.db")).unwrap();
        assert_eq!(c.db_path, PathBuf::from("/from/flag.db"));
        assert_eq!(c.replication_log.shards, 2);

        std::fs::write(
            &path,
            "db_path = \"/d.db\"\n\n[replication_log]\nshards = 0\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err();
        assert_eq!(e.line(), Some(4), "{e}");
    }
}
