//! Parsing with line numbers, validation with precise messages, and the address parsers that
//! validation and the servers share.
//!
//! Every message names the key, the value and what is allowed, and, when the text is known, the
//! line: `config line 4: replication_log.shards value 0 is invalid: must be 1..=64`.

use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;

use super::{Config, SnapshotStore};
use crate::logging::redact_url;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML (syntax error, duplicate key).
    #[error("config{}: {message}", at_line(.line))]
    Parse {
        line: Option<usize>,
        message: String,
    },
    /// A key the section does not have. `section` is the dotted table path, empty at top level.
    #[error(
        "config{}: unknown key \"{key}\" {}; allowed: {allowed}",
        at_line(.line),
        in_section(.section)
    )]
    UnknownKey {
        line: Option<usize>,
        key: String,
        section: String,
        allowed: String,
    },
    /// A value of the wrong type or out of its type's range (`u32`, `bool`, ...).
    #[error("config{}: {key}: {message}", at_line(.line))]
    Value {
        line: Option<usize>,
        key: String,
        message: String,
    },
    /// A well-typed value that breaks a rule. `value` is already quoted when it is a string.
    #[error("{}{key} value {value} is invalid: {allowed}", line_prefix(.line))]
    Invalid {
        line: Option<usize>,
        key: String,
        value: String,
        allowed: String,
    },
}

fn at_line(line: &Option<usize>) -> String {
    line.map(|n| format!(" line {n}")).unwrap_or_default()
}

fn line_prefix(line: &Option<usize>) -> String {
    line.map(|n| format!("config line {n}: "))
        .unwrap_or_default()
}

fn in_section(section: &str) -> String {
    if section.is_empty() {
        "at top level".to_owned()
    } else {
        format!("in [{section}]")
    }
}

impl ConfigError {
    /// The 1-based line of the config text the error points at, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Read { .. } => None,
            Self::Parse { line, .. }
            | Self::UnknownKey { line, .. }
            | Self::Value { line, .. }
            | Self::Invalid { line, .. } => *line,
        }
    }

    /// Points a validation error at the line of its key in `text` (or of the nearest enclosing
    /// table present, for a required key that is missing).
    pub(super) fn locate(self, text: &str) -> Self {
        match self {
            Self::Invalid {
                line: None,
                key,
                value,
                allowed,
            } => Self::Invalid {
                line: key_line(text, &key),
                key,
                value,
                allowed,
            },
            other => other,
        }
    }
}

/// An address that is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("expected host:port or :port")]
    MissingPort,
    #[error("port {port:?} is not a number in {allowed}")]
    BadPort { port: String, allowed: &'static str },
    #[error("host {host:?} is not an IP address or localhost")]
    BadHost { host: String },
}

/// Parses a listen address: `ip:port`, `[ipv6]:port`, `localhost:port`, or Go's `:port` meaning
/// every interface (`0.0.0.0`). Host names other than `localhost` are refused: a listen address
/// that depends on DNS at start-up is a surprise waiting to happen.
pub fn parse_bind(s: &str) -> Result<SocketAddr, BindError> {
    let (host, port) = split_host_port(s.trim())?;
    let port: u16 = port.parse().map_err(|_| BindError::BadPort {
        port: port.to_owned(),
        allowed: "0..=65535",
    })?;
    let ip: IpAddr = match host {
        "" => Ipv4Addr::UNSPECIFIED.into(),
        h if h.eq_ignore_ascii_case("localhost") => Ipv4Addr::LOCALHOST.into(),
        h => h
            .parse()
            .map_err(|_| BindError::BadHost { host: h.to_owned() })?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// Parses `nats.bind_address`: `host:port` or `:port` (host `0.0.0.0`); port `-1` asks the
/// bundled server for a free port. The host may be a name; nats-server resolves it.
pub fn parse_nats_bind(s: &str) -> Result<(String, i32), BindError> {
    let (host, port) = split_host_port(s.trim())?;
    let port = port
        .parse::<i32>()
        .ok()
        .filter(|p| (-1..=65535).contains(p))
        .ok_or_else(|| BindError::BadPort {
            port: port.to_owned(),
            allowed: "-1 (any free port) or 0..=65535",
        })?;
    if host.chars().any(char::is_whitespace) {
        return Err(BindError::BadHost {
            host: host.to_owned(),
        });
    }
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok((host.to_owned(), port))
}

fn split_host_port(s: &str) -> Result<(&str, &str), BindError> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(BindError::MissingPort)?;
        let port = after.strip_prefix(':').ok_or(BindError::MissingPort)?;
        return Ok((host, port));
    }
    let (host, port) = s.rsplit_once(':').ok_or(BindError::MissingPort)?;
    if host.contains(':') {
        // An IPv6 address without brackets: its last group would be taken for the port.
        return Err(BindError::BadHost {
            host: host.to_owned(),
        });
    }
    Ok((host, port))
}

impl Config {
    /// Parses TOML text and validates it; every error carries its line.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg = Self::parse_toml(text)?;
        cfg.validate().map_err(|e| e.locate(text))?;
        Ok(cfg)
    }

    /// Parses TOML text without validating it (to apply command-line overrides first).
    pub fn parse_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| parse_error(text, &e))
    }

    /// Checks every value against what is allowed. The first broken rule is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.db_path.as_os_str().is_empty() {
            return Err(invalid(
                "db_path",
                "\"\"",
                "required: the path of the SQLite database file",
            ));
        }
        in_range("scan_max_changes", self.scan_max_changes, 1..=100_000)?;

        let log = &self.replication_log;
        in_range("replication_log.shards", log.shards, 1..=64)?;
        in_range("replication_log.replicas", log.replicas, 1..=5)?;
        if log.max_entries < 1 {
            return Err(invalid(
                "replication_log.max_entries",
                log.max_entries,
                "must be at least 1",
            ));
        }
        in_range(
            "replication.max_payload_mb",
            self.replication.max_payload_mb,
            1..=64,
        )?;
        if self
            .sharding
            .ignore_tables
            .iter()
            .any(|t| t.trim().is_empty())
        {
            return Err(invalid(
                "sharding.ignore_tables",
                "\"\"",
                "table names must not be empty",
            ));
        }

        if self.schema.registry_refresh_ms < 100 {
            return Err(invalid(
                "schema.registry_refresh_ms",
                self.schema.registry_refresh_ms,
                "must be at least 100 (milliseconds)",
            ));
        }

        self.validate_snapshot()?;
        self.validate_nats()?;
        self.validate_servers()
    }

    fn validate_snapshot(&self) -> Result<(), ConfigError> {
        let snap = &self.snapshot;
        if snap.leader_ttl < 1000 {
            return Err(invalid(
                "snapshot.leader_ttl",
                snap.leader_ttl,
                "must be at least 1000 (milliseconds)",
            ));
        }
        if snap.keep < 1 {
            return Err(invalid("snapshot.keep", snap.keep, "must be at least 1"));
        }
        in_range("snapshot.nats.replicas", snap.nats.replicas, 1..=5)?;
        if !snap.enabled {
            return Ok(());
        }
        match snap.store {
            SnapshotStore::Nats => {}
            SnapshotStore::S3 => {
                required("snapshot.s3.endpoint", &snap.s3.endpoint, "s3")?;
                required("snapshot.s3.bucket", &snap.s3.bucket, "s3")?;
            }
            SnapshotStore::Webdav => {
                let url = snap.webdav.url.expose();
                required("snapshot.webdav.url", url, "webdav")?;
                scheme_in("snapshot.webdav.url", url, &["http", "https"])?;
            }
            SnapshotStore::Sftp => {
                let url = snap.sftp.url.expose();
                required("snapshot.sftp.url", url, "sftp")?;
                scheme_in("snapshot.sftp.url", url, &["sftp"])?;
            }
            SnapshotStore::Fs => required("snapshot.fs.path", &snap.fs.path, "fs")?,
        }
        Ok(())
    }

    fn validate_nats(&self) -> Result<(), ConfigError> {
        let nats = &self.nats;
        for url in &nats.urls {
            check_nats_url(url)?;
        }
        parse_nats_bind(&nats.bind_address)
            .map_err(|e| invalid("nats.bind_address", quote(&nats.bind_address), e))?;
        name_part(
            "nats.subject_prefix",
            &nats.subject_prefix,
            &['*', '>'],
            "a NATS subject token",
        )?;
        name_part(
            "nats.stream_prefix",
            &nats.stream_prefix,
            &['.', '*', '>', '/', '\\'],
            "a JetStream stream name",
        )?;
        match (nats.cert_file.is_empty(), nats.key_file.is_empty()) {
            (false, true) => Err(invalid(
                "nats.key_file",
                "\"\"",
                "nats.cert_file is set, so nats.key_file must be set too",
            )),
            (true, false) => Err(invalid(
                "nats.cert_file",
                "\"\"",
                "nats.key_file is set, so nats.cert_file must be set too",
            )),
            _ => Ok(()),
        }
    }

    fn validate_servers(&self) -> Result<(), ConfigError> {
        let prom = &self.prometheus;
        metric_name("prometheus.namespace", &prom.namespace, false)?;
        metric_name("prometheus.subsystem", &prom.subsystem, true)?;
        if prom.enable {
            bind("prometheus.bind", &prom.bind)?;
        }

        let health = &self.health_check;
        if !health.path.starts_with('/') {
            return Err(invalid(
                "health_check.path",
                quote(&health.path),
                "must start with \"/\"",
            ));
        }
        if health.enable {
            bind("health_check.bind", &health.bind)?;
        }

        let admin = &self.admin;
        if admin.enable {
            let addr = bind("admin.bind", &admin.bind)?;
            if !addr.ip().is_loopback() && admin.auth_token.is_empty() {
                return Err(invalid(
                    "admin.bind",
                    quote(&admin.bind),
                    "binding beyond loopback requires admin.auth_token",
                ));
            }
        }
        Ok(())
    }
}

fn invalid(key: &str, value: impl Display, allowed: impl Display) -> ConfigError {
    ConfigError::Invalid {
        line: None,
        key: key.to_owned(),
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

fn quote(s: &str) -> String {
    format!("{s:?}")
}

fn in_range<T: PartialOrd + Display>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(invalid(
        key,
        &value,
        format_args!("must be {}..={}", range.start(), range.end()),
    ))
}

fn required(key: &str, value: &str, store: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(invalid(
            key,
            "\"\"",
            format_args!("required when snapshot.store is \"{store}\""),
        ));
    }
    Ok(())
}

/// The value may carry credentials, so the message shows it redacted.
fn scheme_in(key: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let ok = url
        .split_once("://")
        .is_some_and(|(scheme, _)| schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)));
    if ok {
        return Ok(());
    }
    let allowed: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
    Err(invalid(
        key,
        quote(&redact_url(url)),
        format_args!("must start with {}", allowed.join(" or ")),
    ))
}

fn check_nats_url(url: &str) -> Result<(), ConfigError> {
    const SCHEMES: [&str; 4] = ["nats", "tls", "ws", "wss"];
    let allowed = "must be nats://, tls://, ws:// or wss:// followed by host:port, or host:port";
    let ok = match url.trim().split_once("://") {
        Some((scheme, rest)) => {
            SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) && !rest.is_empty()
        }
        None => split_host_port(url.trim())
            .is_ok_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid("nats.urls", quote(&redact_url(url)), allowed))
    }
}

fn name_part(key: &str, value: &str, forbidden: &[char], what: &str) -> Result<(), ConfigError> {
    let bad = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || forbidden.contains(&c));
    if !bad {
        return Ok(());
    }
    let listed: Vec<String> = forbidden.iter().map(|c| format!("'{c}'")).collect();
    Err(invalid(
        key,
        quote(value),
        format_args!(
            "must be non-empty and usable in {what}: no spaces, {}",
            listed.join(", ")
        ),
    ))
}

fn metric_name(key: &str, value: &str, may_be_empty: bool) -> Result<(), ConfigError> {
    let mut chars = value.chars();
    let ok = match chars.next() {
        None => may_be_empty,
        Some(first) => {
            (first.is_ascii_alphabetic() || first == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
    };
    if ok {
        return Ok(());
    }
    let allowed = "must match [a-zA-Z_][a-zA-Z0-9_]* (a Prometheus name part)";
    if may_be_empty {
        Err(invalid(
            key,
            quote(value),
            format_args!("{allowed} or be empty"),
        ))
    } else {
        Err(invalid(key, quote(value), allowed))
    }
}

fn bind(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    parse_bind(value).map_err(|e| {
        invalid(
            key,
            quote(value),
            format_args!("{e}; use ip:port, [ipv6]:port, localhost:port or :port"),
        )
    })
}

/// Turns a toml error into a precise `ConfigError`: unknown keys name the section and the
/// allowed keys, bad values name their dotted key.
fn parse_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let line = err.span().map(|span| line_of(text, span.start));
    let message = err.message().trim_end().to_owned();
    let keys = error_keys(err);
    if let Some((key, allowed)) = unknown_named(&message, "unknown field `") {
        return ConfigError::UnknownKey {
            line,
            key,
            section: keys.join("."),
            allowed: allowed.join(", "),
        };
    }
    if keys.is_empty() {
        return ConfigError::Parse { line, message };
    }
    if let Some((variant, allowed)) = unknown_named(&message, "unknown variant `") {
        return ConfigError::Invalid {
            line,
            key: keys.join("."),
            value: quote(&variant),
            allowed: format!("must be one of {}", allowed.join(", ")),
        };
    }
    let duplicate = unknown_named(&message, "duplicate field `")
        .and_then(|(field, _)| alias_of(&field).map(|alias| (field, alias)));
    if let Some((field, alias)) = duplicate {
        // Only an alias can repeat a field: TOML itself refuses a key given twice.
        let section = keys.join(".");
        return ConfigError::Value {
            line: key_line(text, &format!("{section}.{alias}")).or(line),
            key: format!("{section}.{field}"),
            message: format!("given twice, as {field} and as its alias {alias}; keep one"),
        };
    }
    ConfigError::Value {
        line,
        key: keys.join("."),
        message,
    }
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" into `x` and `[a, b]`.
fn unknown_named(message: &str, prefix: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix(prefix)?;
    let (name, rest) = rest.split_once('`')?;
    let allowed = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((name.to_owned(), allowed))
}

/// The dotted key path toml recorded for a value error. toml only shows it in its rendering
/// when the input is detached, so render a detached copy and take the `in `…`` line.
fn error_keys(err: &toml::de::Error) -> Vec<String> {
    let mut detached = err.clone();
    detached.set_input(None);
    let rendered = detached.to_string();
    rendered
        .strip_prefix(err.message())
        .and_then(|rest| rest.trim().strip_prefix("in `"))
        .and_then(|rest| rest.strip_suffix('`'))
        .map(|path| path.split('.').map(str::to_owned).collect())
        .unwrap_or_default()
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The line of a dotted key in `text`, or of its nearest enclosing table that is present.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    for part in key.split('.') {
        let alias = alias_of(part);
        let Some((k, v)) = table
            .iter()
            .find(|(k, _)| k.get_ref() == part || alias.is_some_and(|a| k.get_ref() == a))
        else {
            break;
        };
        found = Some(k.span().start);
        match v.get_ref().as_table() {
            Some(inner) => table = inner,
            None => break,
        }
    }
    found.map(|offset| line_of(text, offset))
}

fn alias_of(key: &str) -> Option<&'static str> {
    match key {
        "ca_file" => Some("tls_ca_file"),
        "cert_file" => Some("tls_cert_file"),
        "key_file" => Some("tls_key_file"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
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
             stream_prefix, bind_address, server_config, connect_retries, \
             reconnect_wait_seconds, user_name, user_password, seed_file, ca_file, tls_ca_file, \
             cert_file, tls_cert_file, key_file, tls_key_file"
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
            "config line 2: nats.urls: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            err("db_path = \"/d.db\"\npublish = \"yes\"\n"),
            "config line 2: publish: invalid type: string \"yes\", expected a boolean"
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
        let e = Config::from_toml_str("db_path = \"/d.db\"\n[replication_log\nshards = 1\n")
            .unwrap_err();
        assert!(
            matches!(e, ConfigError::Parse { line: Some(2), .. }),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("config line 2: "), "{e}");
        let dup = err("db_path = \"/a\"\ndb_path = \"/b\"\n");
        assert!(dup.starts_with("config line 2: "), "{dup}");
    }

    /// Each rule: the config text (after `db_path`), and the exact message.
    #[test]
    fn each_validation_rule_names_key_value_and_allowed() {
        let cases: &[(&str, &str)] = &[
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
        for (body, want) in cases {
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
        assert!(
            e.to_string()
                .starts_with("cannot read config file /nonexistent/harmonylite.toml: "),
            "{e}"
        );
        assert_eq!(e.line(), None);
    }
}
