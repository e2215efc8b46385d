//! `[snapshot] signing_key`, `signing_key_file` and `max_size_mb`: the keys that sign and verify
//! snapshot manifests, and how large a snapshot this node agrees to download.
//!
//! Owns the key list's two shapes (one string, or a list; the first key signs), reading the key
//! file (one key a line, the first signs; its permissions are checked like a private key's) and
//! the rules (one source, long enough keys). The MAC itself is `snapshot::signing`. No message
//! here ever shows a key: errors name the key's position, never its value
//! (`docs/decisions/011-snapshot-authenticity.md`).

use std::path::Path;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::validate::invalid;
use super::{ConfigError, SnapshotConfig};

/// Shortest key accepted, in bytes: 256 bits, HMAC-SHA256's own strength, when the key is
/// random bytes; a pass phrase of this length is weaker, but no longer trivially guessed.
pub const MIN_KEY_BYTES: usize = 32;
/// `snapshot.max_size_mb` when unset: 1 TiB, far above any database we expect, so only a
/// manifest that lies about its size meets it (the free-space check guards the disk).
pub const DEFAULT_MAX_SIZE_MB: u64 = 1024 * 1024;
/// What a key value is shown as in messages.
const NOT_SHOWN: &str = "(not shown)";

/// The accepted keys, newest first: the first signs, every one verifies. Deserialized from a
/// string (one key; `""`: none) or a list of strings.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyList(Vec<String>);

impl KeyList {
    pub fn new(keys: Vec<String>) -> KeyList {
        KeyList(keys)
    }

    pub fn keys(&self) -> &[String] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Never the keys, even outside a `Secret`.
impl std::fmt::Debug for KeyList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyList({} keys)", self.0.len())
    }
}

impl Serialize for KeyList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for KeyList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = KeyList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key or a list of keys")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyList, E> {
                Ok(KeyList(if v.is_empty() {
                    Vec::new()
                } else {
                    vec![v.to_owned()]
                }))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyList, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = seq.next_element::<String>()? {
                    keys.push(key);
                }
                Ok(KeyList(keys))
            }
        }
        deserializer.deserialize_any(Keys)
    }
}

impl SnapshotConfig {
    /// The signing rules that need no file: one source of keys, each long enough, and a size
    /// limit of at least 1 MiB.
    pub(super) fn validate_signing(&self) -> Result<(), ConfigError> {
        if self.max_size_mb < 1 {
            return Err(invalid(
                "snapshot.max_size_mb",
                self.max_size_mb,
                "must be at least 1 (MiB)",
            ));
        }
        let inline = self.signing_key.expose();
        if !inline.is_empty() && !self.signing_key_file.is_empty() {
            return Err(invalid(
                "snapshot.signing_key_file",
                format_args!("{:?}", self.signing_key_file),
                "snapshot.signing_key is set too: set one of snapshot.signing_key and \
                 snapshot.signing_key_file",
            ));
        }
        check_keys("snapshot.signing_key", inline.keys())
    }

    /// The accepted keys, the first signs: `signing_key`, or the lines of `signing_key_file`
    /// (read now, its permissions checked). Empty: snapshots are neither signed nor checked.
    pub fn signing_keys(&self) -> Result<KeyList, ConfigError> {
        if self.signing_key_file.is_empty() {
            return Ok(self.signing_key.expose().clone());
        }
        let keys = read_key_file(Path::new(&self.signing_key_file))?;
        check_keys("snapshot.signing_key_file", keys.keys())?;
        Ok(keys)
    }

    /// `max_size_mb` in bytes.
    pub fn max_size_bytes(&self) -> u64 {
        self.max_size_mb.saturating_mul(1024 * 1024)
    }
}

fn check_keys(key: &str, keys: &[String]) -> Result<(), ConfigError> {
    for (n, k) in keys.iter().enumerate() {
        if k.len() < MIN_KEY_BYTES {
            return Err(invalid(
                key,
                NOT_SHOWN,
                format_args!(
                    "key {} of {} is shorter than {MIN_KEY_BYTES} bytes; use a random one, e.g. \
                     the output of `openssl rand -hex 32`",
                    n + 1,
                    keys.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Reads a key file: one key a line (surrounding spaces dropped), blank lines and lines starting
/// with `#` skipped. Refused when other users may read or write it, or its group may write it: a
/// key anyone on the machine can read signs for anyone.
fn read_key_file(path: &Path) -> Result<KeyList, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    const KEY: &str = "snapshot.signing_key_file";
    let shown = format!("{:?}", path.display().to_string());
    let unreadable = |e: std::io::Error| invalid(KEY, &shown, format_args!("cannot be read: {e}"));
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        return Err(invalid(
            KEY,
            &shown,
            format_args!(
                "has mode {mode:04o}: other users may read it or its group may write it; \
                 chmod 0600 (or 0640 with the service's group)"
            ),
        ));
    }
    // Not `read_to_string`'s error on bad UTF-8 alone: that would not say which key.
    let text = std::fs::read(path).map_err(unreadable)?;
    let text = String::from_utf8(text)
        .map_err(|_| invalid(KEY, &shown, "is not UTF-8 text: one key a line"))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if keys.is_empty() {
        return Err(invalid(KEY, &shown, "holds no key: one key a line"));
    }
    Ok(KeyList(keys))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config::{Config, Secret};

    const K1: &str = "k1-0123456789abcdef0123456789abcdef";
    const K2: &str = "k2-0123456789abcdef0123456789abcdef";

    fn snapshot_section(body: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(&format!("db_path = \"/d.db\"\n[snapshot]\n{body}\n"))
    }

    #[test]
    fn a_key_or_a_list_of_keys() {
        let one = snapshot_section(&format!("signing_key = \"{K1}\"")).unwrap();
        assert_eq!(one.snapshot.signing_keys().unwrap().keys(), [K1]);
        let two = snapshot_section(&format!("signing_key = [\"{K2}\", \"{K1}\"]")).unwrap();
        assert_eq!(two.snapshot.signing_keys().unwrap().keys(), [K2, K1]);
        for none in ["signing_key = \"\"", "signing_key = []", ""] {
            let c = snapshot_section(none).unwrap();
            assert!(c.snapshot.signing_keys().unwrap().is_empty(), "{none}");
        }
        assert!(!format!("{two:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn short_keys_are_named_by_position_never_shown() {
        let short = "tooshort-secret";
        let e = snapshot_section(&format!("signing_key = [\"{K1}\", \"{short}\"]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("snapshot.signing_key"), "{e}");
        assert!(
            e.contains("key 2 of 2") && e.starts_with("config line 3: "),
            "{e}"
        );
        assert!(!e.contains(short), "{e}");
    }

    #[test]
    fn both_sources_at_once_are_refused() {
        let e = snapshot_section(&format!(
            "signing_key = \"{K1}\"\nsigning_key_file = \"/etc/k\""
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("snapshot.signing_key_file") && e.contains("snapshot.signing_key is set"),
            "{e}"
        );
        assert!(!e.contains(K1), "{e}");
    }

    #[test]
    fn max_size_is_at_least_one_mib() {
        let c = snapshot_section("").unwrap();
        assert_eq!(c.snapshot.max_size_mb, DEFAULT_MAX_SIZE_MB);
        assert_eq!(c.snapshot.max_size_bytes(), 1 << 40);
        let e = snapshot_section("max_size_mb = 0").unwrap_err().to_string();
        assert!(e.contains("snapshot.max_size_mb value 0"), "{e}");
    }

    #[test]
    fn the_key_file_is_read_and_its_mode_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("# new first\n{K2}\n\n  {K1}  \n")).unwrap();
        let mode = |m: u32| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
        };
        let mut cfg = snapshot_section("").unwrap().snapshot;
        cfg.signing_key_file = path.display().to_string();
        for ok in [0o600, 0o640, 0o400] {
            mode(ok);
            assert_eq!(cfg.signing_keys().unwrap().keys(), [K2, K1], "{ok:o}");
        }
        for bad in [0o644, 0o660, 0o602] {
            mode(bad);
            let e = cfg.signing_keys().unwrap_err().to_string();
            assert!(
                e.contains("snapshot.signing_key_file") && e.contains("mode"),
                "{e}"
            );
        }
        mode(0o600);
        std::fs::write(&path, "tiny-k3y\n").unwrap();
        let e = cfg.signing_keys().unwrap_err().to_string();
        assert!(e.contains("key 1 of 1") && !e.contains("tiny-k3y"), "{e}");
        std::fs::write(&path, "# nothing\n\n").unwrap();
        let e = cfg.signing_keys().unwrap_err().to_string();
        assert!(e.contains("holds no key"), "{e}");
        cfg.signing_key_file = dir.path().join("missing").display().to_string();
        let e = cfg.signing_keys().unwrap_err().to_string();
        assert!(e.contains("cannot be read"), "{e}");
        // The inline list is ignored once a file is named (validation refuses both at once).
        cfg.signing_key = Secret::new(KeyList::new(vec![K1.to_owned()]));
        assert!(cfg.signing_keys().is_err());
    }
}
