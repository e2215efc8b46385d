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
use crate::config::redact_url;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `node_id` unset on a machine with neither a machine id nor a kernel host name.
    #[error(
        "node_id: not set, and this machine has no machine id (/etc/machine-id) and no host \
         name to derive it from; set node_id to a number unique in the cluster"
    )]
    NoNodeId,
    #[error("cannot read config file {path}")]
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
            Self::Read { .. } | Self::NoNodeId => None,
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
        if let Some(replicas) = log.replicas {
            in_range("replication_log.replicas", replicas, 1..=5)?;
        }
        in_range(
            "replication.max_clock_skew_ms",
            self.replication.max_clock_skew_ms,
            1_000..=86_400_000,
        )?;
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
        snap.validate_signing()?;
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
        if !nats.jetstream_domain.is_empty() {
            name_part(
                "nats.jetstream_domain",
                &nats.jetstream_domain,
                &['.', '*', '>'],
                "a JetStream domain (one NATS subject token)",
            )?;
        }
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
        }?;
        self.validate_nats_cluster()
    }

    /// `[nats.cluster]`: credentials come as a pair; TLS files only with `tls` on, and then all
    /// three (own or shared with the client).
    fn validate_nats_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.nats.cluster;
        if c.user_name.is_empty() && !c.user_password.is_empty() {
            return Err(invalid(
                "nats.cluster.user_name",
                "\"\"",
                "nats.cluster.user_password is set, so nats.cluster.user_name must be set too",
            ));
        }
        let own = [
            ("ca_file", &c.ca_file),
            ("cert_file", &c.cert_file),
            ("key_file", &c.key_file),
        ];
        if !c.tls {
            if let Some((key, value)) = own.iter().find(|(_, v)| !v.is_empty()) {
                return Err(invalid(
                    &format!("nats.cluster.{key}"),
                    quote(value),
                    "route TLS is off: set nats.cluster.tls = true to use it",
                ));
            }
            return Ok(());
        }
        let shared = [
            &self.nats.ca_file,
            &self.nats.cert_file,
            &self.nats.key_file,
        ];
        for ((key, value), shared) in own.iter().zip(shared) {
            if value.is_empty() && shared.is_empty() {
                return Err(invalid(
                    &format!("nats.cluster.{key}"),
                    "\"\"",
                    format_args!(
                        "required when nats.cluster.tls is true (or set nats.{key}, which it \
                         then shares with the client connection)"
                    ),
                ));
            }
        }
        Ok(())
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

pub(super) fn invalid(key: &str, value: impl Display, allowed: impl Display) -> ConfigError {
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
    let key = keys.join(".");
    // Secret keys (`Secret<T>`) already leave their value out; these are lists of URLs that
    // may carry credentials without being secrets as a whole.
    let message = if CREDENTIAL_LISTS.contains(&key.as_str()) {
        super::secret::without_value(&message)
    } else {
        message
    };
    ConfigError::Value { line, key, message }
}

/// Keys that are not `Secret` but whose values may carry credentials (`nats://user:pass@host`):
/// a type error must not quote them (a URL given as a string where a list belongs).
const CREDENTIAL_LISTS: [&str; 1] = ["nats.urls"];

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
mod tests;
