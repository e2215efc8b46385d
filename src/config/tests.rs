//! Tests of the configuration model: defaults, compatibility with HarmonyLite files, secrets.

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
signing_key = ["snapshot-signing-secret-value-0123456789", "snapshot-old-signing-secret-0123456789"]
max_size_mb = 4096

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
jetstream_domain = "hub"
connect_retries = 9
reconnect_wait_seconds = 3
user_name = "hl"
user_password = "nats-secret-value"
seed_file = "/etc/hl/seed.nk"
ca_file = "/etc/hl/ca.pem"
cert_file = "/etc/hl/cert.pem"
key_file = "/etc/hl/key.pem"

[nats.cluster]
user_name = "route"
user_password = "route-secret-value"
tls = true
ca_file = "/etc/hl/route-ca.pem"
cert_file = "/etc/hl/route.pem"
key_file = "/etc/hl/route.key"
allow_insecure = true

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
behind_tls = true

[schema]
recheck_interval_ms = 1000
registry_refresh_ms = 5000

[consistency]
digest_interval_ms = 20000
repair = false
settle_ms = 1000
"#;

const SECRETS: [&str; 9] = [
    "snapshot-signing-secret-value-0123456789",
    "snapshot-old-signing-secret-0123456789",
    "route-secret-value",
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
    assert_eq!(log.replicas, None, "unset: resolved at start");
    assert!(log.compress);
    assert!(!log.update_existing);
    assert!(!log.go_compat);
    assert_eq!(c.replication.max_payload_mb, 1);
    assert!(c.sharding.ignore_tables.is_empty());

    let snap = &c.snapshot;
    assert!(snap.enabled);
    assert_eq!(snap.store, SnapshotStore::Nats);
    assert_eq!(snap.interval, 0);
    assert_eq!(snap.leader_ttl, 30_000);
    assert_eq!(snap.keep, 3);
    assert!(snap.signing_key.expose().is_empty() && snap.signing_key_file.is_empty());
    assert_eq!(snap.max_size_mb, 1024 * 1024);
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
    assert_eq!(nats.bind_address, "127.0.0.1:-1");
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
    assert_eq!(c.replication_log.replicas, Some(3));
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
        node_id_source: None,
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
            replicas: Some(3),
            compress: false,
            update_existing: true,
            go_compat: false,
        },
        replication: ReplicationConfig {
            max_payload_mb: 8,
            max_clock_skew_ms: 60_000,
        },
        sharding: ShardingConfig {
            ignore_tables: vec![s("sessions"), s("cache")],
        },
        snapshot: every_key_snapshot(),
        nats: every_key_nats(),
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
            behind_tls: true,
        },
        schema: SchemaConfig {
            recheck_interval_ms: 1000,
            registry_refresh_ms: 5000,
        },
        consistency: ConsistencyConfig {
            digest_interval_ms: 20000,
            repair: false,
            settle_ms: 1000,
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

/// `EVERY_KEY`'s `[snapshot]` sections as they must be read.
fn every_key_snapshot() -> SnapshotConfig {
    SnapshotConfig {
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
        signing_key: Secret::new(crate::config::KeyList::new(vec![
            s("snapshot-signing-secret-value-0123456789"),
            s("snapshot-old-signing-secret-0123456789"),
        ])),
        signing_key_file: String::new(),
        max_size_mb: 4096,
    }
}

/// `EVERY_KEY`'s `[nats]` section as it must be read.
fn every_key_nats() -> NatsConfig {
    NatsConfig {
        urls: vec![s("nats://a:4222"), s("tls://b:4443")],
        subject_prefix: s("sp"),
        stream_prefix: s("st"),
        bind_address: s("127.0.0.1:4333"),
        server_config: s("/etc/hl/nats.conf"),
        jetstream_domain: s("hub"),
        connect_retries: 9,
        reconnect_wait_seconds: 3,
        user_name: s("hl"),
        user_password: Secret::new(s("nats-secret-value")),
        seed_file: s("/etc/hl/seed.nk"),
        ca_file: s("/etc/hl/ca.pem"),
        cert_file: s("/etc/hl/cert.pem"),
        key_file: s("/etc/hl/key.pem"),
        cluster: NatsClusterConfig {
            user_name: s("route"),
            user_password: Secret::new(s("route-secret-value")),
            tls: true,
            ca_file: s("/etc/hl/route-ca.pem"),
            cert_file: s("/etc/hl/route.pem"),
            key_file: s("/etc/hl/route.key"),
            allow_insecure: true,
        },
    }
}

#[test]
fn unset_replicas_follow_the_embedded_cluster() {
    let resolved = |peers: usize, urls: &[&str], set: Option<u32>| {
        let mut c = Config::from_toml_str("db_path = \"/d.db\"").unwrap();
        c.nats.urls = urls.iter().map(|u| u.to_string()).collect();
        c.replication_log.replicas = set;
        c.resolve_replicas(peers, false).unwrap();
        c.replicas()
    };
    assert_eq!(resolved(0, &[], None), 1, "a single bundled server");
    assert_eq!(
        resolved(1, &[], None),
        1,
        "two servers cannot hold three replicas"
    );
    assert_eq!(resolved(2, &[], None), 3, "three bundled servers");
    assert_eq!(resolved(8, &[], None), 3);
    assert_eq!(
        resolved(2, &["nats://ext:4222"], None),
        1,
        "an external cluster: as set"
    );
    assert_eq!(resolved(2, &[], Some(1)), 1, "a set value wins");
}

#[test]
fn an_edge_holds_no_replica_so_its_value_is_not_bounded() {
    let mut c =
        Config::from_toml_str("db_path = \"/d.db\"\n[replication_log]\nreplicas = 3\n").unwrap();
    c.resolve_replicas(0, true)
        .expect("the hub's servers hold the replicas");
    assert_eq!(c.replicas(), 3);
    let mut unset = Config::from_toml_str("db_path = \"/d.db\"").unwrap();
    unset.resolve_replicas(0, true).unwrap();
    assert_eq!(
        unset.replicas(),
        1,
        "unset: what the edge creates, as a lone server would"
    );
}

#[test]
fn an_edge_needs_the_hubs_domain_and_a_domain_is_one_token() {
    let mut c = Config::from_toml_str("db_path = \"/d.db\"").unwrap();
    let err = c.check_edge().unwrap_err().to_string();
    assert!(err.contains("nats.jetstream_domain"), "{err}");
    assert!(err.contains("-leaf-servers"), "{err}");
    c.nats.jetstream_domain = "hub".to_owned();
    c.check_edge().expect("a domain is set");
    let bad = Config::from_toml_str("db_path = \"/d.db\"\n[nats]\njetstream_domain = \"a.b\"\n")
        .unwrap_err()
        .to_string();
    assert!(bad.contains("nats.jetstream_domain"), "{bad}");
}

#[test]
fn more_replicas_than_bundled_servers_name_the_key() {
    let mut c =
        Config::from_toml_str("db_path = \"/d.db\"\n[replication_log]\nreplicas = 3\n").unwrap();
    let err = c.resolve_replicas(0, false).unwrap_err().to_string();
    assert!(err.contains("replication_log.replicas"), "{err}");
    assert!(err.contains("-cluster-peers"), "{err}");
    c.resolve_replicas(2, false)
        .expect("three bundled servers hold three replicas");
    c.nats.urls = vec!["nats://ext:4222".to_owned()];
    c.resolve_replicas(0, false)
        .expect("an external cluster's size is not known here");
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
    let mut c = Config::from_toml_str("db_path = \"/var/lib/hl/data.db\"\nnode_id = 3\n").unwrap();
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

#[test]
fn go_compat_moves_our_names_out_of_the_go_peers_way() {
    use crate::ids::{Lane, ShardId};
    let mut c =
        Config::from_toml_str("db_path = \"/d.db\"\n[replication_log]\nshards = 2\n").unwrap();
    // Without the switch: the names every existing installation has.
    assert_eq!(c.stream_name(ShardId(1)), "harmonylite-changes-1");
    assert_eq!(c.subject(ShardId(1)), "harmonylite-change-log-1");
    assert_eq!(
        c.lanes(),
        [Lane::Native(ShardId(0)), Lane::Native(ShardId(1))]
    );
    c.replication_log.go_compat = true;
    assert_eq!(c.stream_name(ShardId(1)), "harmonylite-changes-rs-1");
    assert_eq!(c.subject(ShardId(1)), "harmonylite-change-log-rs-1");
    // The Go peer's: from 1, `-c` when it compresses.
    assert_eq!(c.go_stream_name(1), "harmonylite-changes-c-1");
    assert_eq!(c.go_subject(2), "harmonylite-change-log-2");
    assert_eq!(c.lane_stream(Lane::Go(2)), "harmonylite-changes-c-2");
    assert_eq!(c.lanes().len(), 4);
    c.replication_log.compress = false;
    assert_eq!(c.go_stream_name(1), "harmonylite-changes-1");
    let ours: Vec<String> = (0..2).map(|n| c.subject(ShardId(n))).collect();
    assert!((1..=2).all(|n| !ours.contains(&c.go_subject(n))));
}

/// Every key whose value is (or may carry) a secret, with the table it lives in.
const SECRET_KEYS: [(&str, &str); 9] = [
    ("snapshot", "signing_key"),
    ("nats", "user_password"),
    ("nats.cluster", "user_password"),
    ("nats", "urls"),
    ("admin", "auth_token"),
    ("snapshot.s3", "secret"),
    ("snapshot.s3", "session_token"),
    ("snapshot.webdav", "url"),
    ("snapshot.sftp", "url"),
];

/// Values of the wrong type, each holding the marker `982451653` in some form, so any echo of
/// the value shows up in the message.
const WRONG_TYPES: [&str; 6] = [
    "982451653",
    "982451653.5",
    "\"nats://u:982451653@h:4222\"",
    "[\"nats://u:982451653@h:4222\", 982451653]",
    "{ pw = \"982451653\" }",
    "1982-04-05T16:53:00Z",
];

#[test]
fn a_secret_key_with_a_wrong_type_is_reported_without_its_value() {
    for (section, key) in SECRET_KEYS {
        for value in WRONG_TYPES {
            let text = format!("db_path = \"/d.db\"\n[{section}]\n{key} = {value}\n");
            // A string is the right type except for nats.urls (whose list value here holds a
            // number, so it fails too).
            if key != "urls" && value.starts_with('"') {
                continue;
            }
            let e = Config::from_toml_str(&text).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(
                !shown.contains("982451653"),
                "{section}.{key} = {value}: {shown}"
            );
            assert!(
                !shown.contains("1982"),
                "{section}.{key} = {value}: {shown}"
            );
            // Still says where and what is wrong.
            assert_eq!(e.line(), Some(3), "{shown}");
            assert!(shown.contains(&format!("{section}.{key}")), "{shown}");
        }
    }
    let e = Config::from_toml_str("db_path = \"/d.db\"\n[nats]\nuser_password = 982451653\n")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "config line 3: nats.user_password: invalid type: integer, expected a string (the value \
         is not shown: this key may hold a secret)"
    );
    let e = Config::from_toml_str("db_path = \"/d.db\"\n[nats]\nurls = \"nats://u:pw@h:4222\"\n")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "config line 3: nats.urls: invalid type: string, expected a sequence (the value is not \
         shown: this key may hold a secret)"
    );
}

#[test]
fn a_syntax_error_on_a_secret_line_does_not_quote_the_line() {
    let lines = [
        "user_password = hunter2secret",
        "user_password = \"hunter2secret",
        "user_password = \"hunter2secret\" trailing",
        "user_password = 'hunter2secret'''",
        "user_password = \"\\qhunter2secret\"",
        "user_password = \"hunter2secret\"\nuser_password = \"hunter2secret\"",
        "urls = [\"nats://u:hunter2secret@h:4222\"",
    ];
    for line in lines {
        let text = format!("db_path = \"/d.db\"\n[nats]\n{line}\n");
        let e = Config::from_toml_str(&text).unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("hunter2secret"), "{line}: {shown}");
        assert!(e.line().is_some_and(|n| n >= 3), "{line}: {shown}");
    }
}

#[test]
fn without_value_keeps_the_kinds_and_drops_the_value() {
    use super::secret::without_value;
    let not_shown = "(the value is not shown: this key may hold a secret)";
    let cases = [
        (
            "invalid type: integer `5`, expected a string",
            "invalid type: integer, expected a string",
        ),
        (
            "invalid type: string \"a, expected b\", expected a sequence",
            "invalid type: string, expected a sequence",
        ),
        (
            "invalid type: map, expected a string",
            "invalid type: map, expected a string",
        ),
        (
            "invalid length 3, expected 2",
            "invalid length 3, expected 2",
        ),
        ("something else `pw`", "invalid value"),
        ("invalid value: `pw`", "invalid value"),
    ];
    for (message, want) in cases {
        assert_eq!(
            without_value(message),
            format!("{want} {not_shown}"),
            "{message}"
        );
    }
}
