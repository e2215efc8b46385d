//! Snapshot authenticity: an HMAC-SHA256 in each manifest, over every other field of it (the
//! data's SHA-256 among them, so the MAC binds the data too), keyed by `[snapshot] signing_key`.
//!
//! With keys configured, a manifest that is unsigned, signed with a key this node does not hold,
//! or whose MAC does not match is refused before anything is downloaded; the first key signs,
//! any key verifies (rotation: `[new, old]`, later `[new]`). Without keys nothing is signed and
//! nothing checked, as before. The MAC input is a canonical, length-prefixed encoding of the
//! fields, never the JSON text: the JSON's spacing and field order do not matter. A key is never
//! logged, shown or compared by hand (`hmac`'s `verify_slice` compares in constant time); a key
//! id, a short hash of the key under its own domain, lets a verifier pick the key and an
//! operator see which key signed. Design: `docs/decisions/011-snapshot-authenticity.md`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::manifest::Manifest;
use crate::config::{ConfigError, KeyList, Secret, SnapshotConfig};

type HmacSha256 = Hmac<Sha256>;

/// The scheme tag that opens a signature.
pub const SCHEME: &str = "hmac-sha256";
/// Hex characters of a key id: 32 bits tell a handful of keys apart; they say nothing useful
/// about a key of 256 bits.
const KEY_ID_HEX: usize = 8;
/// Separates key ids from any other use of SHA-256 over the same key.
const KEY_ID_DOMAIN: &[u8] = b"harmonylite snapshot signing key id\0";
/// Opens the MAC input: a MAC over a manifest is never a MAC over anything else.
const MAC_DOMAIN: &[u8] = b"harmonylite snapshot manifest v1\0";

/// Why a manifest's signature is refused. `kind` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("not signed, and this node requires signed snapshots (snapshot.signing_key)")]
    Unsigned,
    #[error("signature is not {SCHEME}:<key id>:<64 hex digits>")]
    Malformed,
    #[error("signed with key {key_id}, which is not one of this node's snapshot.signing_key")]
    UnknownKey { key_id: String },
    #[error(
        "signature by key {key_id} does not match: the manifest was changed after signing, or \
         signed with another key"
    )]
    Mismatch { key_id: String },
}

impl SignatureError {
    /// Bounded label for `harmonylite_snapshot_refused_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            SignatureError::Unsigned => "unsigned",
            SignatureError::Malformed => "malformed",
            SignatureError::UnknownKey { .. } => "unknown_key",
            SignatureError::Mismatch { .. } => "mismatch",
        }
    }
}

/// One key: its id and the bytes it MACs with.
#[derive(Clone)]
struct Key {
    id: String,
    secret: Secret<Vec<u8>>,
}

/// The keys a node signs and verifies with; none: snapshots are neither signed nor checked.
#[derive(Clone, Default)]
pub struct Keys {
    keys: Vec<Key>,
}

/// Only the key ids.
impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ids()).finish()
    }
}

impl Keys {
    /// Keys from a list, the first signing.
    pub fn new(list: &KeyList) -> Keys {
        let keys = list
            .keys()
            .iter()
            .map(|k| Key {
                id: key_id(k.as_bytes()),
                secret: Secret::new(k.as_bytes().to_vec()),
            })
            .collect();
        Keys { keys }
    }

    /// The keys `[snapshot]` configures (reading `signing_key_file` now).
    pub fn load(cfg: &SnapshotConfig) -> Result<Keys, ConfigError> {
        Ok(Keys::new(&cfg.signing_keys()?))
    }

    /// Whether manifests are signed and checked.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Ids of the accepted keys, the signing one first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// `m` with its signature by the first key (any old one replaced); unchanged without keys.
    pub fn sign(&self, mut m: Manifest) -> Manifest {
        m.signature = self.keys.first().map(|key| {
            let mac = mac(key, &m).finalize().into_bytes();
            format!("{SCHEME}:{}:{}", key.id, hex::encode(mac))
        });
        m
    }

    /// Checks `m`'s signature against these keys; without keys every manifest passes. Returns
    /// the id of the key that signed, when checked.
    pub fn verify(&self, m: &Manifest) -> Result<Option<String>, SignatureError> {
        if !self.enabled() {
            return Ok(None);
        }
        let signature = m.signature.as_deref().ok_or(SignatureError::Unsigned)?;
        let (key_id, tag) = parse(signature).ok_or(SignatureError::Malformed)?;
        // Ids are short: two keys may share one, so each holder of the id is tried.
        let mut holders = self.keys.iter().filter(|k| k.id == key_id).peekable();
        if holders.peek().is_none() {
            return Err(SignatureError::UnknownKey {
                key_id: key_id.to_owned(),
            });
        }
        if holders.any(|key| mac(key, m).verify_slice(&tag).is_ok()) {
            return Ok(Some(key_id.to_owned()));
        }
        Err(SignatureError::Mismatch {
            key_id: key_id.to_owned(),
        })
    }
}

/// The warning a node without signing keys gives when its snapshots go to a store beyond the
/// cluster: S3, WebDAV or SFTP credentials are often held by more people and systems than the
/// cluster's own. The NATS object store is not warned about: whoever can write it can write the
/// change streams too, which no key protects; nor is a local directory (`fs`).
pub fn unsigned_store_warning(cfg: &crate::config::Config) -> Option<String> {
    use crate::config::SnapshotStore;
    let snap = &cfg.snapshot;
    let remote = match snap.store {
        SnapshotStore::S3 => "S3",
        SnapshotStore::Webdav => "WebDAV",
        SnapshotStore::Sftp => "SFTP",
        SnapshotStore::Nats | SnapshotStore::Fs => return None,
    };
    let unsigned = snap.signing_key.expose().is_empty() && snap.signing_key_file.is_empty();
    (snap.enabled && unsigned).then(|| {
        format!(
            "snapshots are stored on {remote} without a signature: anyone who can write there \
             can have a node restore a database of their making; set snapshot.signing_key or \
             snapshot.signing_key_file (docs/security.md)"
        )
    })
}

/// The id of a key: the first hex digits of a domain-separated SHA-256 of it.
pub fn key_id(key: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(KEY_ID_DOMAIN)
        .chain_update(key)
        .finalize();
    hex::encode(digest)[..KEY_ID_HEX].to_owned()
}

fn mac(key: &Key, m: &Manifest) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(key.secret.expose()).expect("HMAC takes a key of any length");
    mac.update(&canonical(m));
    mac
}

/// `hmac-sha256:<id>:<hex>` → (id, MAC bytes).
fn parse(signature: &str) -> Option<(&str, Vec<u8>)> {
    let rest = signature.strip_prefix(SCHEME)?.strip_prefix(':')?;
    let (id, tag) = rest.split_once(':')?;
    let hex_digits = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if id.len() != KEY_ID_HEX || !hex_digits(id) || tag.len() != 64 || !hex_digits(tag) {
        return None;
    }
    Some((id, hex::decode(tag).ok()?))
}

/// The bytes the MAC covers: every field but the signature, each number as 8 big-endian bytes,
/// each string as its length then its bytes, the map as its length then its entries in key
/// order. Unambiguous, and independent of how the JSON was written.
pub fn canonical(m: &Manifest) -> Vec<u8> {
    // Destructured whole: a field added to the manifest does not compile until it is covered
    // here (or deliberately left out).
    let Manifest {
        format,
        id,
        node_id,
        created_ms,
        size,
        raw_size,
        sha256,
        schema_hash,
        sequences,
        harmonylite_version,
        signature: _,
    } = m;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(MAC_DOMAIN);
    let number = |out: &mut Vec<u8>, n: u64| out.extend_from_slice(&n.to_be_bytes());
    let text = |out: &mut Vec<u8>, s: &str| {
        number(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    };
    number(&mut out, u64::from(*format));
    text(&mut out, id);
    number(&mut out, *node_id);
    number(&mut out, *created_ms);
    number(&mut out, *size);
    number(&mut out, *raw_size);
    text(&mut out, sha256);
    text(&mut out, schema_hash);
    number(&mut out, sequences.len() as u64);
    for (stream, seq) in sequences {
        text(&mut out, stream);
        number(&mut out, *seq);
    }
    text(&mut out, harmonylite_version);
    out
}

#[cfg(test)]
#[path = "signing_tests.rs"]
mod tests;
