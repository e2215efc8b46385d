//! Tests of parsing errors and validation messages.

use super::*;

fn err(text: &str) -> String {
    Config::from_toml_str(text).unwrap_err().to_string()
}

#[test]
fn unknown_key_names_key_section_line_and_allowed_keys() {
    let text = "db_path = \"/d.db\"\n[nats]\nurls = []\nfooo = 1\n";
    let e = Config::from_toml_str(text).unwrap_err();
    assert_eq!(e.line(), Some(4));
    assert_eq!(
        e.to_string(),
        "config line 4: unknown key \"fooo\" in [nats]; allowed: urls, subject_prefix, \
         stream_prefix, bind_address, server_config, jetstream_domain, connect_retries, \
         reconnect_wait_seconds, user_name, user_password, seed_file, ca_file, tls_ca_file, \
         cert_file, tls_cert_file, key_file, tls_key_file, cluster"
    );
    assert!(
        matches!(e, ConfigError::UnknownKey { ref key, ref section, .. }
        if key == "fooo" && section == "nats")
    );
}

#[test]
fn unknown_key_at_top_level_and_in_nested_and_dotted_tables() {
    let top = err("db_path = \"/d.db\"\n\nfooo = 1\n");
    assert!(
        top.starts_with(
            "config line 3: unknown key \"fooo\" at top level; allowed: db_path, node_id, "
        ),
        "{top}"
    );
    assert_eq!(
        err("db_path = \"/d.db\"\n[snapshot.s3]\nbucket = \"b\"\nbad = 1\n"),
        "config line 4: unknown key \"bad\" in [snapshot.s3]; allowed: endpoint, path, \
         bucket, use_ssl, access_key, secret, session_token, region, force_path_style"
    );
    let dotted = err("db_path = \"/d.db\"\nsnapshot.webdav.uri = \"x\"\n");
    assert!(
        dotted.starts_with("config line 2: unknown key \"uri\" in [snapshot.webdav]; "),
        "{dotted}"
    );
    let section = err("db_path = \"/d.db\"\n[natz]\nurls = []\n");
    assert!(
        section.starts_with("config line 2: unknown key \"natz\" at top level; "),
        "{section}"
    );
}

#[test]
fn wrong_type_names_dotted_key_and_line() {
    let text = "db_path = \"/d.db\"\n[replication_log]\nshards = \"x\"\n";
    let e = Config::from_toml_str(text).unwrap_err();
    assert_eq!(
        e.to_string(),
        "config line 3: replication_log.shards: invalid type: string \"x\", expected u32"
    );
    assert_eq!(
        err("db_path = \"/d.db\"\n[replication_log]\nshards = 99999999999\n"),
        "config line 3: replication_log.shards: invalid value: integer `99999999999`, \
         expected u32"
    );
    assert_eq!(
        err("db_path = \"/d.db\"\nnats.urls = [\"nats://a:4222\", 1]\n"),
        "config line 2: nats.urls: invalid type: integer, expected a string (the value is not \
         shown: this key may hold a secret)"
    );
    assert_eq!(
        err("db_path = \"/d.db\"\npublish = \"yes\"\n"),
        "config line 2: publish: invalid type: string \"yes\", expected a boolean"
    );
    assert_eq!(
        err("db_path = \"/d.db\"\n[replication_log]\ngo_compat = \"yes\"\n"),
        "config line 3: replication_log.go_compat: invalid type: string \"yes\", expected a \
         boolean"
    );
    assert_eq!(
        err("db_path = 5\n"),
        "config line 1: db_path: invalid type: integer `5`, expected path string"
    );
}

#[test]
fn unknown_enum_value_lists_allowed_values() {
    assert_eq!(
        err("db_path = \"/d.db\"\n[logging]\nformat = \"xml\"\n"),
        "config line 3: logging.format value \"xml\" is invalid: must be one of console, json"
    );
    assert_eq!(
        err("db_path = \"/d.db\"\n[snapshot]\nstore = \"ftp\"\n"),
        "config line 3: snapshot.store value \"ftp\" is invalid: must be one of nats, s3, \
         webdav, sftp, fs"
    );
}

#[test]
fn syntax_error_has_line() {
    let e =
        Config::from_toml_str("db_path = \"/d.db\"\n[replication_log\nshards = 1\n").unwrap_err();
    assert!(
        matches!(e, ConfigError::Parse { line: Some(2), .. }),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("config line 2: "), "{e}");
    let dup = err("db_path = \"/a\"\ndb_path = \"/b\"\n");
    assert!(dup.starts_with("config line 2: "), "{dup}");
}

/// Each rule: the config text (after `db_path`), and the exact message.
const RULES: &[(&str, &str)] = &[
    (
        "scan_max_changes = 0",
        "scan_max_changes value 0 is invalid: must be 1..=100000",
    ),
    (
        "scan_max_changes = 100001",
        "scan_max_changes value 100001 is invalid: must be 1..=100000",
    ),
    (
        "[replication_log]\nshards = 0",
        "replication_log.shards value 0 is invalid: must be 1..=64",
    ),
    (
        "[replication_log]\nshards = 65",
        "replication_log.shards value 65 is invalid: must be 1..=64",
    ),
    (
        "[replication_log]\nreplicas = 0",
        "replication_log.replicas value 0 is invalid: must be 1..=5",
    ),
    (
        "[replication_log]\nreplicas = 6",
        "replication_log.replicas value 6 is invalid: must be 1..=5",
    ),
    (
        "[replication_log]\nmax_entries = 0",
        "replication_log.max_entries value 0 is invalid: must be at least 1",
    ),
    (
        "[replication_log]\nmax_entries = -1",
        "replication_log.max_entries value -1 is invalid: must be at least 1",
    ),
    (
        "[replication]\nmax_payload_mb = 0",
        "replication.max_payload_mb value 0 is invalid: must be 1..=64",
    ),
    (
        "[replication]\nmax_payload_mb = 65",
        "replication.max_payload_mb value 65 is invalid: must be 1..=64",
    ),
    (
        "[sharding]\nignore_tables = [\"a\", \" \"]",
        "sharding.ignore_tables value \"\" is invalid: table names must not be empty",
    ),
    (
        "[schema]\nregistry_refresh_ms = 99",
        "schema.registry_refresh_ms value 99 is invalid: must be at least 100 (milliseconds)",
    ),
    (
        "[snapshot]\nleader_ttl = 999",
        "snapshot.leader_ttl value 999 is invalid: must be at least 1000 (milliseconds)",
    ),
    (
        "[snapshot]\nkeep = 0",
        "snapshot.keep value 0 is invalid: must be at least 1",
    ),
    (
        "[snapshot.nats]\nreplicas = 6",
        "snapshot.nats.replicas value 6 is invalid: must be 1..=5",
    ),
    (
        "[snapshot]\nstore = \"s3\"\n[snapshot.s3]\nbucket = \"b\"",
        "snapshot.s3.endpoint value \"\" is invalid: required when snapshot.store is \
         \"s3\"",
    ),
    (
        "[snapshot]\nstore = \"s3\"\n[snapshot.s3]\nendpoint = \"s3.local\"",
        "snapshot.s3.bucket value \"\" is invalid: required when snapshot.store is \"s3\"",
    ),
    (
        "[snapshot]\nstore = \"webdav\"",
        "snapshot.webdav.url value \"\" is invalid: required when snapshot.store is \
         \"webdav\"",
    ),
    (
        "[snapshot]\nstore = \"webdav\"\n[snapshot.webdav]\n\
         url = \"ftp://h/x?login=u&secret=pw\"",
        "snapshot.webdav.url value \"ftp://h/x?login=u&secret=***\" is invalid: must \
         start with http:// or https://",
    ),
    (
        "[snapshot]\nstore = \"sftp\"",
        "snapshot.sftp.url value \"\" is invalid: required when snapshot.store is \
         \"sftp\"",
    ),
    (
        "[snapshot]\nstore = \"sftp\"\n[snapshot.sftp]\nurl = \"ssh://u:pw@h/x\"",
        "snapshot.sftp.url value \"ssh://u:***@h/x\" is invalid: must start with sftp://",
    ),
    (
        "[snapshot]\nstore = \"fs\"",
        "snapshot.fs.path value \"\" is invalid: required when snapshot.store is \"fs\"",
    ),
    (
        "[nats]\nurls = [\"nats://a:4222\", \"http://u:pw@b:4222\"]",
        "nats.urls value \"http://u:***@b:4222\" is invalid: must be nats://, tls://, \
         ws:// or wss:// followed by host:port, or host:port",
    ),
    (
        "[nats]\nurls = [\"just-a-host\"]",
        "nats.urls value \"just-a-host\" is invalid: must be nats://, tls://, ws:// or \
         wss:// followed by host:port, or host:port",
    ),
    (
        "[nats]\nbind_address = \"0.0.0.0\"",
        "nats.bind_address value \"0.0.0.0\" is invalid: expected host:port or :port",
    ),
    (
        "[nats]\nbind_address = \":-2\"",
        "nats.bind_address value \":-2\" is invalid: port \"-2\" is not a number in -1 \
         (any free port) or 0..=65535",
    ),
    (
        "[nats.cluster]\nuser_password = \"pw\"",
        "nats.cluster.user_name value \"\" is invalid: nats.cluster.user_password is set, so \
         nats.cluster.user_name must be set too",
    ),
    (
        "[nats.cluster]\ncert_file = \"/r.pem\"",
        "nats.cluster.cert_file value \"/r.pem\" is invalid: route TLS is off: set \
         nats.cluster.tls = true to use it",
    ),
    (
        "[nats]\ncert_file = \"/c.pem\"\nkey_file = \"/c.key\"\n[nats.cluster]\ntls = true",
        "nats.cluster.ca_file value \"\" is invalid: required when nats.cluster.tls is true \
         (or set nats.ca_file, which it then shares with the client connection)",
    ),
    (
        "[nats]\nsubject_prefix = \"a b\"",
        "nats.subject_prefix value \"a b\" is invalid: must be non-empty and usable in \
         a NATS subject token: no spaces, '*', '>'",
    ),
    (
        "[nats]\nstream_prefix = \"a.b\"",
        "nats.stream_prefix value \"a.b\" is invalid: must be non-empty and usable in a \
         JetStream stream name: no spaces, '.', '*', '>', '/', '\\'",
    ),
    (
        "[nats]\ncert_file = \"/c.pem\"",
        "nats.key_file value \"\" is invalid: nats.cert_file is set, so nats.key_file \
         must be set too",
    ),
    (
        "[nats]\ntls_key_file = \"/k.pem\"",
        "nats.cert_file value \"\" is invalid: nats.key_file is set, so nats.cert_file \
         must be set too",
    ),
    (
        "[prometheus]\nnamespace = \"harmony-lite\"",
        "prometheus.namespace value \"harmony-lite\" is invalid: must match \
         [a-zA-Z_][a-zA-Z0-9_]* (a Prometheus name part)",
    ),
    (
        "[prometheus]\nsubsystem = \"9x\"",
        "prometheus.subsystem value \"9x\" is invalid: must match \
         [a-zA-Z_][a-zA-Z0-9_]* (a Prometheus name part) or be empty",
    ),
    (
        "[prometheus]\nenable = true\nbind = \"3010\"",
        "prometheus.bind value \"3010\" is invalid: expected host:port or :port; use \
         ip:port, [ipv6]:port, localhost:port or :port",
    ),
    (
        "[health_check]\nenable = true\nbind = \"example.com:8090\"",
        "health_check.bind value \"example.com:8090\" is invalid: host \"example.com\" \
         is not an IP address or localhost; use ip:port, [ipv6]:port, localhost:port or \
         :port",
    ),
    (
        "[health_check]\npath = \"health\"",
        "health_check.path value \"health\" is invalid: must start with \"/\"",
    ),
    (
        "[admin]\nenable = true\nbind = \"127.0.0.1:99999\"",
        "admin.bind value \"127.0.0.1:99999\" is invalid: port \"99999\" is not a number \
         in 0..=65535; use ip:port, [ipv6]:port, localhost:port or :port",
    ),
    (
        "[admin]\nenable = true\nbind = \"0.0.0.0:8091\"",
        "admin.bind value \"0.0.0.0:8091\" is invalid: binding beyond loopback requires \
         admin.auth_token",
    ),
];

#[test]
fn each_validation_rule_names_key_value_and_allowed() {
    for (body, want) in RULES {
        let text = format!("db_path = \"/d.db\"\n{body}\n");
        let e = Config::from_toml_str(&text).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { .. }), "{body}: {e:?}");
        let got = e.to_string();
        let (prefix, message) = got.split_once(": ").unwrap();
        assert!(prefix.starts_with("config line "), "{body}: {got}");
        assert_eq!(message, *want, "{body}");
        // Without the text, validate() alone gives the same message without a line.
        let cfg = Config::parse_toml(&text).unwrap();
        assert_eq!(cfg.validate().unwrap_err().to_string(), *want, "{body}");
    }
}

#[test]
fn validation_errors_point_at_the_key_line() {
    let e = Config::from_toml_str("db_path = \"/d.db\"\n[replication_log]\n\nshards = 0\n")
        .unwrap_err();
    assert_eq!(e.line(), Some(4));
    assert_eq!(
        e.to_string(),
        "config line 4: replication_log.shards value 0 is invalid: must be 1..=64"
    );
    // A missing required key points at its table.
    let e = Config::from_toml_str(
        "db_path = \"/d.db\"\n[snapshot]\nstore = \"s3\"\n[snapshot.s3]\nbucket = \"b\"\n",
    )
    .unwrap_err();
    assert_eq!(e.line(), Some(4), "{e}");
    // An alias spelling is found too.
    let e = Config::from_toml_str(
        "db_path = \"/d.db\"\n[nats]\ntls_cert_file = \"/c\"\ntls_key_file = \"\"\n",
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::Invalid { ref key, .. } if key == "nats.key_file"));
    assert_eq!(e.line(), Some(4), "{e}");
}

#[test]
fn db_path_is_required() {
    assert_eq!(
        err("[logging]\nverbose = true\n"),
        "db_path value \"\" is invalid: required: the path of the SQLite database file"
    );
    assert_eq!(
        err("db_path = \"\"\n"),
        "config line 1: db_path value \"\" is invalid: required: the path of the SQLite \
         database file"
    );
}

#[test]
fn rules_that_only_apply_when_enabled() {
    // A disabled snapshot needs no store settings; disabled servers keep any bind text.
    let text = "db_path = \"/d.db\"\n[snapshot]\nenabled = false\nstore = \"s3\"\n\
                [prometheus]\nbind = \"nonsense\"\n[health_check]\nbind = \"x\"\n\
                [admin]\nbind = \"0.0.0.0:8091\"\n";
    Config::from_toml_str(text).unwrap();
    // Beyond loopback is fine with a token; loopback is fine without.
    Config::from_toml_str(
        "db_path = \"/d.db\"\n[admin]\nenable = true\nbind = \":8091\"\nauth_token = \"t\"\n",
    )
    .unwrap();
    for bind in ["127.0.0.1:8091", "[::1]:8091", "localhost:8091"] {
        let text = format!("db_path = \"/d.db\"\n[admin]\nenable = true\nbind = \"{bind}\"\n");
        Config::from_toml_str(&text).unwrap();
    }
}

#[test]
fn accepted_nats_urls() {
    for url in [
        "nats://a:4222",
        "tls://a:4443",
        "ws://a:8080",
        "wss://a:443",
        "NATS://u:p@a:4222",
        "a:4222",
        "10.0.0.1:4222",
    ] {
        let text = format!("db_path = \"/d.db\"\n[nats]\nurls = [\"{url}\"]\n");
        Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}

#[test]
fn parse_bind_forms() {
    let ok = [
        (":3010", "0.0.0.0:3010"),
        ("0.0.0.0:3010", "0.0.0.0:3010"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("localhost:8091", "127.0.0.1:8091"),
        ("[::]:8090", "[::]:8090"),
        ("[::1]:8090", "[::1]:8090"),
        (" 10.1.2.3:80 ", "10.1.2.3:80"),
    ];
    for (input, want) in ok {
        assert_eq!(parse_bind(input).unwrap().to_string(), want, "{input}");
    }
    assert_eq!(parse_bind("3010"), Err(BindError::MissingPort));
    assert_eq!(parse_bind("[::1]"), Err(BindError::MissingPort));
    assert!(matches!(
        parse_bind("host:3010"),
        Err(BindError::BadHost { .. })
    ));
    assert!(matches!(
        parse_bind("::1:3010"),
        Err(BindError::BadHost { .. })
    ));
    assert!(matches!(
        parse_bind(":65536"),
        Err(BindError::BadPort { .. })
    ));
    assert!(matches!(parse_bind(":-1"), Err(BindError::BadPort { .. })));
    assert!(matches!(
        parse_bind("1.2.3.4:"),
        Err(BindError::BadPort { .. })
    ));
}

#[test]
fn parse_nats_bind_forms() {
    let ok = [
        (":-1", ("0.0.0.0", -1)),
        (":4222", ("0.0.0.0", 4222)),
        ("127.0.0.1:-1", ("127.0.0.1", -1)),
        ("nats-1.internal:4222", ("nats-1.internal", 4222)),
        ("[::1]:4222", ("::1", 4222)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
    ];
    for (input, (host, port)) in ok {
        assert_eq!(
            parse_nats_bind(input).unwrap(),
            (host.to_owned(), port),
            "{input}"
        );
    }
    assert_eq!(parse_nats_bind("4222"), Err(BindError::MissingPort));
    assert!(matches!(
        parse_nats_bind(":-2"),
        Err(BindError::BadPort { .. })
    ));
    assert!(matches!(
        parse_nats_bind(":65536"),
        Err(BindError::BadPort { .. })
    ));
    assert!(matches!(
        parse_nats_bind("a b:1"),
        Err(BindError::BadHost { .. })
    ));
}

#[test]
fn read_error_names_the_path() {
    let e = Config::load(std::path::Path::new("/nonexistent/harmonylite.toml")).unwrap_err();
    // What the command line prints: the message, then its cause, once.
    let shown = crate::error::Chain(&e).to_string();
    assert!(
        shown.starts_with("cannot read config file /nonexistent/harmonylite.toml: "),
        "{shown}"
    );
    assert_eq!(shown.matches("No such file").count(), 1, "{shown}");
    assert_eq!(e.line(), None);
}
