//! Parsing with line numbers and validation with precise messages.

use std::path::PathBuf;

use super::Config;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Parse(String),
    #[error("{key} value {value} is invalid: {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
}

impl Config {
    /// Parses TOML text and validates it.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value against what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.db_path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "db_path",
                value: "\"\"".to_owned(),
                allowed: "it is required".to_owned(),
            });
        }
        Ok(())
    }
}
