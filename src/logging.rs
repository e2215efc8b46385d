//! The tracing subscriber: console or JSON lines on stderr, debug with `logging.verbose`, and the
//! redaction guard for URLs that may carry credentials.
//!
//! `RUST_LOG` overrides the level when it is set and valid. Secrets never reach a log line: config
//! values that hold them are `Secret<String>`, and every URL we log goes through [`redact_url`].

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::Dispatch;
use tracing::dispatcher::SetGlobalDefaultError;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogFormat, LoggingConfig};

/// Query parameters whose values are credentials (HarmonyLite's WebDAV URL carries `secret=`).
const SECRET_PARAMS: [&str; 3] = ["secret", "password", "token"];

/// Schemes where a user part without a password is an authentication token (`nats://TOKEN@host`).
const TOKEN_SCHEMES: [&str; 4] = ["nats", "tls", "ws", "wss"];

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

/// Removes credentials from a URL (or a comma-separated list of URLs) before it is logged:
/// the password of `user:password@`, a bare token user on NATS schemes (`nats://TOKEN@host`),
/// and the values of the query parameters `secret`, `password` and `token`.
///
/// `nats://user:pass@host:4222` → `nats://user:***@host:4222`;
/// `https://dav/x?dir=/s&login=bob&secret=pw` → `https://dav/x?dir=/s&login=bob&secret=***`.
/// Text that is not a URL comes back unchanged. When in doubt it redacts more, never less: the
/// user part ends at the last `@` before the query, so a raw `/` or `@` in a password is covered.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let query_at = rest.find(['?', '#']).unwrap_or(rest.len());
    let (head, tail) = rest.split_at(query_at);

    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    match head.rfind('@') {
        Some(at) => {
            let (userinfo, host) = head.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None if scheme.is_some_and(is_token_scheme) => out.push_str("***"),
                None => out.push_str(userinfo),
            }
            out.push_str(host);
        }
        None => out.push_str(head),
    }
    redact_query(tail, &mut out);
    out
}

fn is_token_scheme(scheme: &str) -> bool {
    TOKEN_SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme))
}

/// `tail` is empty or starts with `?` or `#`; the fragment is copied as is.
fn redact_query(tail: &str, out: &mut String) {
    let Some(query) = tail.strip_prefix('?') else {
        out.push_str(tail);
        return;
    };
    let (query, fragment) = query.split_at(query.find('#').unwrap_or(query.len()));
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _value)) if is_secret_param(name) => {
                out.push_str(name);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    out.push_str(fragment);
}

fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(name))
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
    fn redact_url_cases() {
        let cases = [
            // user:password is masked, the user stays for diagnosis
            ("nats://user:pass@host:4222", "nats://user:***@host:4222"),
            ("tls://u:p@h:4443/", "tls://u:***@h:4443/"),
            (
                "sftp://bob:s3cr3t@backup:22/snapshots",
                "sftp://bob:***@backup:22/snapshots",
            ),
            // a bare user on a NATS scheme is a token
            ("nats://s3cr3ttoken@host:4222", "nats://***@host:4222"),
            ("WSS://tok@host", "WSS://***@host"),
            // a bare user elsewhere is only a user name
            ("sftp://bob@backup/x", "sftp://bob@backup/x"),
            // secret query parameters, any case; login and others stay
            (
                "https://dav.example/x?dir=/s&login=bob&secret=pw",
                "https://dav.example/x?dir=/s&login=bob&secret=***",
            ),
            (
                "https://h/?password=a&token=b&Secret=c&x=d",
                "https://h/?password=***&token=***&Secret=***&x=d",
            ),
            ("https://h/p?secret=a#frag", "https://h/p?secret=***#frag"),
            ("https://h/p#secret=a", "https://h/p#secret=a"),
            // both at once
            ("https://u:p@h/x?token=t", "https://u:***@h/x?token=***"),
            // a password with raw '@' or '/' is still covered
            ("nats://u:p@ss/w@h:4222", "nats://u:***@h:4222"),
            // lists (cluster peers)
            (
                "nats://a:1@h1:6222, nats://h2:6222,nats://b:2@h3:6222",
                "nats://a:***@h1:6222, nats://h2:6222,nats://b:***@h3:6222",
            ),
            // no scheme
            ("user:pass@host:4222", "user:***@host:4222"),
            // nothing to redact
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("host:4222", "host:4222"),
            ("https://h/a?dir=/x", "https://h/a?dir=/x"),
            ("", ""),
            ("https://h/?secret", "https://h/?secret"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "input {input:?}");
        }
    }

    #[test]
    fn redacted_urls_never_contain_the_secret() {
        for secret in ["hunter2", "p@ss", "a/b"] {
            let urls = [
                format!("nats://user:{secret}@host:4222"),
                format!("https://dav/x?login=u&secret={secret}"),
                format!("wss://{secret}@host"),
            ];
            for url in urls {
                assert!(!redact_url(&url).contains(secret), "{url}");
            }
        }
    }

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
