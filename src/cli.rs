//! Command-line flags, in Go's single-dash style (`-config PATH`) and in double-dash style.
//!
//! HarmonyLite's flags come from Go's `flag` package, which takes `-flag`, `--flag`, `-flag value`,
//! `-flag=value`, and `-flag=true|false` for booleans. clap takes the double-dash forms, so a
//! pre-pass ([`go_style_args`]) rewrites the single-dash spelling of the known flags only, and
//! boolean flags accept an optional `=BOOL`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, Parser};

use crate::config::{Config, ConfigError};

/// Flags that take a value (`-config PATH`, `-config=PATH`).
const VALUE_FLAGS: [&str; 7] = [
    "config",
    "node-id",
    "db",
    "cluster-addr",
    "cluster-peers",
    "leaf-servers",
    "pprof",
];

/// Flags without a value; all but `help` also accept Go's `=true` / `=false`.
const BOOL_FLAGS: [&str; 9] = [
    "cleanup",
    "save-snapshot",
    "version",
    "help",
    "schema-status",
    "schema-status-cluster",
    "verify-cluster",
    "accept-gaps",
    "force-restore",
];

/// HarmonyLite: leaderless SQLite replication over NATS JetStream.
///
/// Flags take one or two dashes: `-config /etc/harmonylite/config.toml` works as in HarmonyLite.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "harmonylite",
    disable_version_flag = true,
    args_override_self = true,
    mut_args(go_bool_flag)
)]
pub struct Cli {
    /// Path to the configuration file.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Overrides `node_id` from the config.
    #[arg(long = "node-id", value_name = "ID")]
    pub node_id: Option<u64>,
    /// Remove every trigger and internal table (clocks, positions, journals) from the database,
    /// then exit; refused while a node runs on it. The next start installs capture again and
    /// baselines the rows below every real write, so they never override other nodes' changes.
    #[arg(long)]
    pub cleanup: bool,
    /// Database path (with -cleanup; overrides `db_path`).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Take one snapshot, upload it and exit.
    #[arg(long = "save-snapshot")]
    pub save_snapshot: bool,
    /// Cluster (route) listen address of the bundled NATS server, host:port.
    #[arg(long = "cluster-addr", value_name = "HOST:PORT")]
    pub cluster_addr: Option<String>,
    /// Comma-separated routes to peers' bundled servers (nats://host:port,...).
    #[arg(long = "cluster-peers", value_name = "URLS")]
    pub cluster_peers: Option<String>,
    /// Comma-separated leaf-node remotes for the bundled server.
    #[arg(long = "leaf-servers", value_name = "URLS")]
    pub leaf_servers: Option<String>,
    /// Print the version, git commit and bundled nats-server version.
    #[arg(long)]
    pub version: bool,
    /// Print this node's schema hash and replication pause state, then exit.
    #[arg(long = "schema-status")]
    pub schema_status: bool,
    /// Print every node's schema hash from the cluster registry, then exit.
    #[arg(long = "schema-status-cluster")]
    pub schema_status_cluster: bool,
    /// Compare every node's content digests, print which tables agree, then exit: 0 all
    /// agree, 1 some differ, 3 cannot tell yet (changes in flight, or too few digests).
    #[arg(long = "verify-cluster")]
    pub verify_cluster: bool,
    /// Accept, for this run, the loss of what a gap misses (a stream trimmed past this node's
    /// position that no snapshot covers). Each accepted gap is recorded and shown.
    #[arg(long = "accept-gaps")]
    pub accept_gaps: bool,
    /// Let a snapshot replace this database (whatever its floors and schema) instead of being
    /// merged into it.
    #[arg(long = "force-restore")]
    pub force_restore: bool,
    /// HarmonyLite's Go profiler address: accepted so old unit files start, then ignored.
    #[arg(long, hide = true, value_name = "ADDR")]
    pub pprof: Option<String>,
}

impl Cli {
    /// `-cluster-peers` split on commas, trimmed, empties dropped.
    pub fn peers(&self) -> Vec<String> {
        split_list(self.cluster_peers.as_deref())
    }

    /// `-leaf-servers` split on commas, trimmed, empties dropped.
    pub fn leaf_servers(&self) -> Vec<String> {
        split_list(self.leaf_servers.as_deref())
    }

    /// Applies the flags that override config keys: `-node-id` and `-db`.
    pub fn apply_overrides(&self, cfg: &mut Config) {
        if let Some(id) = self.node_id {
            cfg.node_id = Some(id);
        }
        if let Some(db) = &self.db {
            cfg.db_path = db.clone();
        }
    }

    /// The effective configuration: the `-config` file (or the defaults without one) with the
    /// flag overrides applied, validated.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        match &self.config {
            Some(path) => Config::load_with(path, |cfg| self.apply_overrides(cfg)),
            None => {
                let mut cfg = Config::default();
                self.apply_overrides(&mut cfg);
                cfg.validate()?;
                Ok(cfg)
            }
        }
    }

    /// Warns about flags that are accepted for compatibility but do nothing. Call once logging
    /// is set up.
    pub fn warn_ignored_flags(&self) {
        if let Some(addr) = &self.pprof {
            tracing::warn!(addr = %addr, "-pprof is not supported by this build; ignored");
        }
    }
}

/// Parses the process arguments; prints usage and exits on error, like clap does.
pub fn parse() -> Cli {
    Cli::parse_from(go_style_args(std::env::args_os()))
}

/// Parses arguments (the first is the program name) with the Go-style pre-pass.
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    Cli::try_parse_from(go_style_args(args))
}

/// The pre-pass: `-flag` → `--flag` and `-flag=v` → `--flag=v` for the known flags only; a
/// value given as the next argument is joined as `--flag=value`, so a value that starts with a
/// dash stays a value, as in Go. Everything after `--` and every unknown argument is left alone
/// for clap to accept or report.
pub fn go_style_args<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut args = args.into_iter().map(Into::into);
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    let mut wants_value = false;
    let mut verbatim = false;
    for arg in args {
        if verbatim {
            out.push(arg);
            continue;
        }
        if wants_value {
            wants_value = false;
            if let Some(flag) = out.last_mut() {
                flag.push("=");
                flag.push(&arg);
                continue;
            }
        }
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            verbatim = true;
            out.push(arg);
            continue;
        }
        let Some(body) = text.strip_prefix("--").or_else(|| text.strip_prefix('-')) else {
            out.push(arg);
            continue;
        };
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        if VALUE_FLAGS.contains(&name) {
            match value {
                Some(value) => out.push(format!("--{name}={value}").into()),
                None => {
                    out.push(format!("--{name}").into());
                    wants_value = true;
                }
            }
        } else if BOOL_FLAGS.contains(&name) {
            out.push(format!("--{body}").into());
        } else {
            out.push(arg);
        }
    }
    out
}

/// Makes the boolean flags of `BOOL_FLAGS` behave like Go's: `-flag`, `-flag=true` and
/// `-flag=false` (the value only with `=`); other arguments pass unchanged.
fn go_bool_flag(arg: Arg) -> Arg {
    let go_bool = arg
        .get_long()
        .is_some_and(|long| long != "help" && BOOL_FLAGS.contains(&long));
    if !go_bool {
        return arg;
    }
    arg.action(ArgAction::Set)
        .num_args(0..=1)
        .require_equals(true)
        .default_value("false")
        .default_missing_value("true")
        .hide_default_value(true)
        .value_name("BOOL")
        .value_parser(parse_go_bool)
}

/// Go's `strconv.ParseBool` spellings.
fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(format!("invalid boolean {other:?}: use true or false")),
    }
}

fn split_list(list: Option<&str>) -> Vec<String> {
    list.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        try_parse_from(std::iter::once("harmonylite").chain(args.iter().copied()))
    }

    /// A field of `Cli` rendered for comparison.
    fn field(cli: &Cli, flag: &str) -> String {
        match flag {
            "config" => format!("{:?}", cli.config),
            "node-id" => format!("{:?}", cli.node_id),
            "db" => format!("{:?}", cli.db),
            "cluster-addr" => format!("{:?}", cli.cluster_addr),
            "cluster-peers" => format!("{:?}", cli.cluster_peers),
            "leaf-servers" => format!("{:?}", cli.leaf_servers),
            "pprof" => format!("{:?}", cli.pprof),
            "cleanup" => cli.cleanup.to_string(),
            "save-snapshot" => cli.save_snapshot.to_string(),
            "version" => cli.version.to_string(),
            "schema-status" => cli.schema_status.to_string(),
            "schema-status-cluster" => cli.schema_status_cluster.to_string(),
            "verify-cluster" => cli.verify_cluster.to_string(),
            "accept-gaps" => cli.accept_gaps.to_string(),
            "force-restore" => cli.force_restore.to_string(),
            other => panic!("no field for {other}"),
        }
    }

    #[test]
    fn every_flag_in_every_spelling() {
        let value_flags = [
            (
                "config",
                "/etc/harmonylite/config.toml",
                "Some(\"/etc/harmonylite/config.toml\")",
            ),
            ("node-id", "42", "Some(42)"),
            (
                "db",
                "/var/lib/harmonylite/data.db",
                "Some(\"/var/lib/harmonylite/data.db\")",
            ),
            ("cluster-addr", "0.0.0.0:4222", "Some(\"0.0.0.0:4222\")"),
            (
                "cluster-peers",
                "nats://a:4222,nats://b:4222",
                "Some(\"nats://a:4222,nats://b:4222\")",
            ),
            (
                "leaf-servers",
                "nats://hub:7422",
                "Some(\"nats://hub:7422\")",
            ),
            ("pprof", "127.0.0.1:6060", "Some(\"127.0.0.1:6060\")"),
        ];
        assert_eq!(value_flags.len(), VALUE_FLAGS.len());
        for (flag, value, want) in value_flags {
            for dashes in ["-", "--"] {
                let spaced = parse(&[&format!("{dashes}{flag}"), value]).unwrap();
                assert_eq!(field(&spaced, flag), want, "{dashes}{flag} {value}");
                let joined = parse(&[&format!("{dashes}{flag}={value}")]).unwrap();
                assert_eq!(field(&joined, flag), want, "{dashes}{flag}={value}");
            }
        }

        let bool_flags = ["cleanup", "save-snapshot", "version", "schema-status"];
        let bool_flags = bool_flags
            .into_iter()
            .chain(["schema-status-cluster", "verify-cluster"]);
        for flag in bool_flags {
            assert_eq!(
                field(&parse(&[]).unwrap(), flag),
                "false",
                "default of {flag}"
            );
            for dashes in ["-", "--"] {
                let cases = [
                    (format!("{dashes}{flag}"), "true"),
                    (format!("{dashes}{flag}=true"), "true"),
                    (format!("{dashes}{flag}=false"), "false"),
                    (format!("{dashes}{flag}=1"), "true"),
                    (format!("{dashes}{flag}=F"), "false"),
                ];
                for (arg, want) in cases {
                    assert_eq!(field(&parse(&[&arg]).unwrap(), flag), want, "{arg}");
                }
                let bad = parse(&[&format!("{dashes}{flag}=maybe")]).unwrap_err();
                assert_eq!(
                    bad.kind(),
                    ErrorKind::ValueValidation,
                    "{dashes}{flag}=maybe"
                );
            }
        }

        for help in ["-help", "--help", "-h"] {
            assert_eq!(
                parse(&[help]).unwrap_err().kind(),
                ErrorKind::DisplayHelp,
                "{help}"
            );
        }
    }

    #[test]
    fn guide_command_lines() {
        let run = parse(&["-config", "/etc/harmonylite/config.toml"]).unwrap();
        assert_eq!(
            run.config,
            Some(PathBuf::from("/etc/harmonylite/config.toml"))
        );
        assert!(!run.cleanup);

        let cleanup = parse(&["-cleanup", "-db", "/var/lib/harmonylite/data.db"]).unwrap();
        assert!(cleanup.cleanup);
        assert_eq!(
            cleanup.db,
            Some(PathBuf::from("/var/lib/harmonylite/data.db"))
        );

        let mixed = parse(&[
            "-config=/c.toml",
            "--node-id",
            "2",
            "-cluster-addr",
            "127.0.0.1:6222",
            "--cluster-peers=nats://a:6222, nats://b:6222,",
            "-leaf-servers",
            "",
            "-save-snapshot",
        ])
        .unwrap();
        assert_eq!(mixed.config, Some(PathBuf::from("/c.toml")));
        assert_eq!(mixed.node_id, Some(2));
        assert_eq!(mixed.cluster_addr.as_deref(), Some("127.0.0.1:6222"));
        assert_eq!(mixed.peers(), ["nats://a:6222", "nats://b:6222"]);
        assert!(mixed.leaf_servers().is_empty());
        assert!(mixed.save_snapshot);
    }

    #[test]
    fn last_occurrence_wins_like_go() {
        let cli = parse(&["-cleanup", "-cleanup=false", "-db", "/a", "--db=/b"]).unwrap();
        assert!(!cli.cleanup);
        assert_eq!(cli.db, Some(PathBuf::from("/b")));
    }

    #[test]
    fn a_value_may_start_with_a_dash() {
        let cli = parse(&["-config", "-odd-name.toml"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("-odd-name.toml")));
    }

    #[test]
    fn unknown_and_malformed_arguments_are_errors() {
        let kinds = [
            (&["-bogus"][..], ErrorKind::UnknownArgument),
            (&["--bogus"][..], ErrorKind::UnknownArgument),
            (&["stray"][..], ErrorKind::UnknownArgument),
            (&["-cleanup", "true"][..], ErrorKind::UnknownArgument),
            (&["-config"][..], ErrorKind::InvalidValue),
            (&["-node-id", "x"][..], ErrorKind::ValueValidation),
        ];
        for (args, kind) in kinds {
            assert_eq!(parse(args).unwrap_err().kind(), kind, "{args:?}");
        }
    }

    #[test]
    fn pre_pass_rewrites_only_known_flags() {
        let out = go_style_args([
            "harmonylite",
            "-config",
            "x",
            "-h",
            "-unknown",
            "-cleanup=true",
            "--",
            "-db",
        ]);
        let out: Vec<_> = out
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            out,
            [
                "harmonylite",
                "--config=x",
                "-h",
                "-unknown",
                "--cleanup=true",
                "--",
                "-db"
            ]
        );
    }

    #[test]
    fn help_lists_the_flags_and_hides_pprof() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in VALUE_FLAGS
            .iter()
            .chain(&BOOL_FLAGS)
            .filter(|f| **f != "pprof")
        {
            assert!(
                help.contains(&format!("--{flag}")),
                "--{flag} missing from {help}"
            );
        }
        assert!(!help.contains("pprof"), "{help}");
        assert!(help.contains("one or two dashes"), "{help}");
    }

    #[test]
    fn lists_split_on_commas() {
        let cli = Cli {
            cluster_peers: Some(" nats://a:6222 ,,nats://b:6222 ".into()),
            ..Cli::default()
        };
        assert_eq!(cli.peers(), ["nats://a:6222", "nats://b:6222"]);
        assert!(cli.leaf_servers().is_empty());
        assert!(Cli::default().peers().is_empty());
    }

    #[test]
    fn flags_override_config() {
        let cli = parse(&["-cleanup", "-db", "/var/lib/hl/data.db", "-node-id", "9"]).unwrap();
        let cfg = cli.load_config().unwrap();
        assert_eq!(cfg.db_path, PathBuf::from("/var/lib/hl/data.db"));
        assert_eq!(cfg.node_id, Some(9));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "db_path = \"/from/file.db\"\nnode_id = 1\n").unwrap();
        let cli = parse(&["-config", path.to_str().unwrap(), "-node-id", "3"]).unwrap();
        let cfg = cli.load_config().unwrap();
        assert_eq!(cfg.db_path, PathBuf::from("/from/file.db"));
        assert_eq!(cfg.node_id, Some(3));

        assert!(Cli::default().load_config().is_err(), "db_path is required");
    }
}
