//! The tracing subscriber: console or JSON lines on stderr, debug with `logging.verbose`.
//!
//! `RUST_LOG` overrides the level when it is set and valid. Secrets never reach a log line: config
//! values that hold them are `Secret<String>`, and every URL we log goes through
//! `config::redact_url`.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::Dispatch;
use tracing::dispatcher::SetGlobalDefaultError;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogFormat, LoggingConfig};

/// Installs the global subscriber writing to stderr. Colours only when stderr is a terminal, so
/// journald never receives escape codes. A second call is a no-op.
pub fn init(cfg: &LoggingConfig) {
    let ansi = std::io::stderr().is_terminal();
    // Already installed (a test harness or an earlier call): keep the first one.
    let _ = tracing::dispatcher::set_global_default(build(cfg, std::io::stderr, ansi));
}

/// Installs the global subscriber writing to `writer` (no colours). For tests and tools that
/// capture logs, for example into a [`LogCapture`].
pub fn init_with_writer<W>(cfg: &LoggingConfig, writer: W) -> Result<(), SetGlobalDefaultError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing::dispatcher::set_global_default(build(cfg, writer, false))
}

/// The subscriber [`init`] would install, writing to `writer` (no colours), for scoped use with
/// `tracing::dispatcher::with_default` or `set_default` where the global one is taken.
pub fn dispatch<W>(cfg: &LoggingConfig, writer: W) -> Dispatch
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    build(cfg, writer, false)
}

fn build<W>(cfg: &LoggingConfig, writer: W, ansi: bool) -> Dispatch
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(cfg))
        .with_writer(writer)
        .with_ansi(ansi);
    match cfg.format {
        LogFormat::Console => Dispatch::new(builder.finish()),
        LogFormat::Json => Dispatch::new(builder.json().flatten_event(true).finish()),
    }
}

/// `RUST_LOG` when set and valid; otherwise info, with our own crate at debug when verbose (the
/// NATS client at debug would drown the engine's lines).
fn filter(cfg: &LoggingConfig) -> EnvFilter {
    let default = if cfg.verbose {
        "info,harmonylite=debug,async_nats=warn"
    } else {
        // The client's own connection events are logged by us (nats::client), once.
        "info,async_nats=warn"
    };
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// An in-memory log sink: pass it to [`init_with_writer`] or [`dispatch`], read the lines back
/// with [`LogCapture::contents`]. Clones share the buffer.
#[derive(Debug, Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything written so far, lossily decoded.
    pub fn contents(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        // A panicking writer thread leaves whole lines behind; keep collecting after it.
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_captured() {
        let capture = LogCapture::new();
        let cfg = LoggingConfig {
            verbose: false,
            format: LogFormat::Json,
        };
        tracing::dispatcher::with_default(&dispatch(&cfg, capture.clone()), || {
            tracing::info!(shard = 3, "hello");
        });
        let out = capture.contents();
        let line: serde_json::Value = serde_json::from_str(out.trim()).expect("one json line");
        assert_eq!(line["message"], "hello");
        assert_eq!(line["shard"], 3);
        assert_eq!(line["level"], "INFO");
    }

    #[test]
    fn console_lines_are_captured_without_colours() {
        let capture = LogCapture::new();
        let cfg = LoggingConfig::default();
        tracing::dispatcher::with_default(&dispatch(&cfg, capture.clone()), || {
            tracing::warn!(error = %"boom", "degraded");
        });
        let out = capture.contents();
        assert!(out.contains("WARN"), "{out}");
        assert!(out.contains("degraded"), "{out}");
        assert!(!out.contains('\u{1b}'), "escape codes in {out:?}");
    }
}
