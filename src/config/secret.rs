//! Secrets in configuration: `Secret<T>`, a value that never prints (`Debug`, `Display` and
//! `Serialize` show `***`, and a value of the wrong type is reported without the value), and
//! `redact_url`, which masks the credentials a URL may carry before it is shown or logged.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The real value, for the one place that must hand it to a library.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl Secret<String> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl<T> std::fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl<T> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

/// serde's type errors quote the value (`invalid type: integer `1234`, expected a string`); for a
/// secret the error keeps only what kind of value was found and what was expected. The key and
/// line are added by the caller (the TOML deserializer) as for any other error.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer)
            .map(Secret)
            .map_err(|e| D::Error::custom(without_value(&e.to_string())))
    }
}

/// A serde error message with the offending value left out: `invalid type: string "x",
/// expected a sequence` → `invalid type: string, expected a sequence (the value is not shown)`.
/// A message of any other shape is replaced entirely, since it might quote the value.
pub(super) fn without_value(message: &str) -> String {
    const NOT_SHOWN: &str = "(the value is not shown: this key may hold a secret)";
    let shaped = ["invalid type: ", "invalid value: ", "invalid length "]
        .into_iter()
        .find_map(|prefix| Some((prefix, message.strip_prefix(prefix)?)));
    let Some((prefix, rest)) = shaped else {
        return format!("invalid value {NOT_SHOWN}");
    };
    let what = prefix.trim_end_matches([':', ' ']);
    let Some((found, expected)) = rest.rsplit_once(", expected ") else {
        return format!("{what} {NOT_SHOWN}");
    };
    // `found` is serde's `Unexpected`: a kind, then the value in backticks or quotes.
    let kind = found.split(['`', '"']).next().unwrap_or("").trim();
    let expected = expected.lines().next().unwrap_or("").trim();
    if kind.is_empty() {
        return format!("{what}, expected {expected} {NOT_SHOWN}");
    }
    format!("{prefix}{kind}, expected {expected} {NOT_SHOWN}")
}

/// Query parameters whose values are credentials (HarmonyLite's WebDAV URL carries `secret=`).
const SECRET_PARAMS: [&str; 3] = ["secret", "password", "token"];

/// Schemes where a user part without a password is an authentication token (`nats://TOKEN@host`).
const TOKEN_SCHEMES: [&str; 4] = ["nats", "tls", "ws", "wss"];

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
    fn never_prints_the_value() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s:#?}"), "***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "hunter2");
        assert!(!s.is_empty());
        assert!(Secret::<String>::default().is_empty());
    }

    #[test]
    fn deserializes_the_plain_value() {
        #[derive(Deserialize)]
        struct Holder {
            token: Secret<String>,
        }
        let h: Holder = toml::from_str("token = \"abc\"").unwrap();
        assert_eq!(h.token.expose(), "abc");
        assert_eq!(h.token, Secret::new("abc".to_owned()));
    }

    #[test]
    fn does_not_leak_through_tracing() {
        let capture = crate::logging::LogCapture::new();
        let cfg = crate::config::LoggingConfig {
            verbose: true,
            format: crate::config::LogFormat::Json,
        };
        let secret = Secret::new("hunter2".to_owned());
        tracing::dispatcher::with_default(&crate::logging::dispatch(&cfg, capture.clone()), || {
            tracing::info!(password = %secret, debug = ?secret, "connecting");
        });
        let out = capture.contents();
        assert!(out.contains("connecting"), "{out}");
        assert!(!out.contains("hunter2"), "{out}");
    }
}
