//! `harmonylite`: parse flags, set up logging, run the node, exit with its outcome.

use std::process::ExitCode;

use harmonylite::cli::{self, Cli};
use harmonylite::config::Config;
use harmonylite::error::Chain;
use harmonylite::metrics::Metrics;
use harmonylite::nats::bundle::NATS_SERVER_VERSION;
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::{self, Outcome, Settings};
use harmonylite::{GIT_COMMIT, VERSION, db, logging, schema, status::NodeStatus};

/// The commands that print a report and exit (`-schema-status[-cluster]`, `-verify-cluster`);
/// `None` when none was asked for.
fn report_command(cli: &Cli, config: &Config) -> Option<ExitCode> {
    if cli.schema_status || cli.schema_status_cluster {
        return Some(
            match schema::report::run(config, cli.schema_status, cli.schema_status_cluster) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("harmonylite: {}", Chain(&e));
                    ExitCode::FAILURE
                }
            },
        );
    }
    if cli.verify_cluster {
        return Some(match harmonylite::consistency::report::run(config) {
            Ok((text, code)) => {
                print!("{text}");
                ExitCode::from(code)
            }
            Err(e) => {
                eprintln!("harmonylite: {}", Chain(&e));
                ExitCode::from(harmonylite::consistency::report::UNKNOWN)
            }
        });
    }
    None
}

fn main() -> ExitCode {
    harmonylite::memory::configure_allocator();
    let cli = cli::parse();
    if cli.version {
        println!(
            "harmonylite {VERSION} (commit {GIT_COMMIT}, bundled nats-server {NATS_SERVER_VERSION})"
        );
        return ExitCode::SUCCESS;
    }
    if cli.cleanup {
        return cleanup(&cli);
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("harmonylite: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(&config.logging);
    cli.warn_ignored_flags();
    if let Some(code) = report_command(&cli, &config) {
        return code;
    }
    if cli.save_snapshot && node_is_running(&config) {
        return save_snapshot_on_running_node(&config);
    }
    let settings = Settings {
        save_snapshot: cli.save_snapshot.then(progress_printer),
        accept_gaps: cli.accept_gaps,
        force_restore: cli.force_restore,
        config,
        embedded: EmbeddedOptions {
            cluster_addr: cli.cluster_addr.clone(),
            cluster_peers: cli.peers(),
            leaf_servers: cli.leaf_servers(),
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("harmonylite: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node_id = settings.config.node_id();
    let metrics = match Metrics::new(&settings.config.prometheus, node_id) {
        Ok(m) => std::sync::Arc::new(m),
        Err(e) => {
            eprintln!("harmonylite: cannot declare the metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = NodeStatus::new(node_id);
    // The handlers are installed now, before the node starts: a SIGTERM right after "node
    // ready" would otherwise meet the default action and kill the process.
    let stop = {
        let _runtime = runtime.enter();
        shutdown_signal()
    };
    match runtime.block_on(node::run(settings, status, metrics, stop)) {
        Ok(Outcome::Stopped | Outcome::Slept) => ExitCode::SUCCESS,
        Ok(Outcome::Fatal(reason)) => {
            tracing::error!(%reason, "exiting after a fatal error");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot start");
            // A setting to change, like a configuration error: exit 2, which the unit does
            // not restart.
            if needs_the_operator(&e) {
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}

/// A start refused for something only the operator can change, where restarting cannot help:
/// an insecure setting on a new installation, or a database a newer build ran on (a
/// downgrade). Looked for anywhere in the error's chain.
fn needs_the_operator(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<node::Insecure>().is_some()
            || matches!(
                cause.downcast_ref::<db::DbError>(),
                Some(db::DbError::NewerFormat { .. })
            )
    })
}

/// `-save-snapshot`'s progress display on stderr: one line per phase and per tenth uploaded.
fn progress_printer() -> harmonylite::snapshot::service::ProgressFn {
    harmonylite::snapshot::service::by_tenths(std::sync::Arc::new(
        |phase: &str, done: u64, total: u64| match phase {
            "copy" => eprintln!("harmonylite: snapshot: copying the database"),
            _ => eprintln!(
                "harmonylite: snapshot: {phase} {:>3}% ({done} of {total} bytes)",
                done.saturating_mul(10) / total.max(1) * 10
            ),
        },
    ))
}

/// Whether a process holds this node's lock (then commands ask it instead of starting a node).
fn node_is_running(config: &Config) -> bool {
    use harmonylite::instance::{InstanceLock, LockError};
    let data_dir = config.data_dir();
    matches!(
        InstanceLock::acquire(&data_dir, &config.db_path),
        Err(LockError::Held { .. })
    )
}

/// `-save-snapshot` while the node runs: the running node takes it (`admin`), we show progress.
fn save_snapshot_on_running_node(config: &Config) -> ExitCode {
    eprintln!("harmonylite: the node is running; asking it for a snapshot");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("harmonylite: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let asked = runtime.block_on(async {
        let client = harmonylite::nats::command::connect(config)
            .await
            .map_err(|e| e.to_string())?;
        harmonylite::admin::request_snapshot(&client, config.node_id(), progress_printer())
            .await
            .map_err(|e| e.to_string())
    });
    match asked {
        Ok((id, size)) => {
            eprintln!("harmonylite: snapshot {id} saved ({size} bytes)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("harmonylite: -save-snapshot failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The config file with the command line's overrides applied.
fn load_config(cli: &Cli) -> Result<Config, String> {
    cli.load_config().map_err(|e| Chain(&e).to_string())
}

/// `harmonylite -cleanup [-db PATH | -config FILE]`: removes every trigger and internal object.
fn cleanup(cli: &Cli) -> ExitCode {
    let path = match (&cli.db, &cli.config) {
        (Some(db), _) => db.clone(),
        (None, Some(_)) => match load_config(cli) {
            Ok(c) => c.db_path,
            Err(e) => {
                eprintln!("harmonylite: {e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            eprintln!("harmonylite: -cleanup needs -db PATH or -config FILE");
            return ExitCode::from(2);
        }
    };
    // Never under a running node: its capture would be gone while it runs.
    let _lock = match harmonylite::instance::InstanceLock::acquire_database(&path) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!(
                "harmonylite: -cleanup refused: {e}. A running node notices schema changes by \
                 itself within a second, so nothing needs forcing; to remove capture, stop the \
                 node first."
            );
            return ExitCode::FAILURE;
        }
    };
    match db::remove_all(&path) {
        Ok(report) => {
            println!(
                "harmonylite: removed {} triggers and {} internal tables from {}",
                report.triggers,
                report.tables,
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "harmonylite: cleanup of {} failed: {}",
                path.display(),
                Chain(&e)
            );
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
/// Installs the SIGTERM and SIGINT handlers at once (inside the runtime) and returns what
/// resolves on the first signal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers we can only run until killed.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
