//! The tracing subscriber: console or JSON lines, debug with `logging.verbose`.

use crate::config::{LogFormat, LoggingConfig};

/// Installs the global subscriber. `RUST_LOG` overrides the level when set.
pub fn init(cfg: &LoggingConfig) {
    let default = if cfg.verbose { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Console => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
