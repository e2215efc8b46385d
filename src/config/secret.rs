//! `Secret<T>`: a value that never prints. `Debug`, `Display` and `Serialize` show `***`.

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

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
