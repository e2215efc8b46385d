//! The snapshot manifest: what a snapshot is, where it came from and what it covers.
//!
//! Stored as JSON beside the snapshot (`<id>.manifest.json`) and as the latest-pointer
//! (`latest.json`). It is read from a store anyone with credentials can write to, so parsing
//! never trusts it: every field is checked, and a manifest that fails a check is an error that
//! names the field, never a panic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
/// A manifest larger than this is refused before parsing (a real one is a few hundred bytes
/// per shard).
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// Longest `signature` accepted (a real one is 85 characters).
const MAX_SIGNATURE_LEN: usize = 256;
/// Most shards a manifest may list (`[replication_log] shards` is capped far below this).
const MAX_SHARDS: usize = 4096;

/// One snapshot's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `MANIFEST_FORMAT` of the writer.
    pub format: u32,
    /// `<created_ms, 13 digits>-<node_id>`: sorts by time, unique per node.
    pub id: String,
    /// The node that took it.
    pub node_id: u64,
    /// Unix milliseconds when the database copy was taken.
    pub created_ms: u64,
    /// Bytes of the compressed snapshot as stored.
    pub size: u64,
    /// Bytes of the database once decompressed.
    pub raw_size: u64,
    /// Lower-case hex SHA-256 of the compressed bytes as stored.
    pub sha256: String,
    /// Schema hash of the captured tables in the snapshot.
    pub schema_hash: String,
    /// Stream name → the last sequence applied into the snapshot. A node restored from it
    /// resumes each stream right after this.
    pub sequences: BTreeMap<String, u64>,
    /// HarmonyLite version of the writer (informational).
    pub harmonylite_version: String,
    /// `hmac-sha256:<key id>:<mac>` over every other field, when the writer had a signing key
    /// (`signing`). Absent from unsigned manifests, which older builds (that refuse unknown
    /// fields) read as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is {0} bytes, more than the {MAX_MANIFEST_BYTES} allowed")]
    TooLarge(usize),
    #[error("manifest is not valid JSON of the expected shape: {0}")]
    Syntax(String),
    #[error("manifest format {found} is not supported (this build reads {MANIFEST_FORMAT})")]
    Format { found: u32 },
    #[error("manifest field {field} is invalid: {reason}")]
    Field { field: &'static str, reason: String },
}

impl Manifest {
    /// The id for a snapshot taken at `created_ms` by `node_id`.
    pub fn make_id(created_ms: u64, node_id: u64) -> String {
        format!("{created_ms:013}-{node_id}")
    }

    /// Parses and checks a manifest.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Syntax(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Pretty JSON, as stored.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, integers and a string-keyed map always serialises.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The checks `parse` applies.
    pub fn check(&self) -> Result<(), ManifestError> {
        let field = |field: &'static str, reason: &str| ManifestError::Field {
            field,
            reason: reason.to_owned(),
        };
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format { found: self.format });
        }
        if self.id != Manifest::make_id(self.created_ms, self.node_id) {
            return Err(field(
                "id",
                "must be <created_ms, 13 digits>-<node_id> of this manifest",
            ));
        }
        if self.node_id == 0 {
            return Err(field("node_id", "must be a positive node id"));
        }
        if self.size == 0 || self.raw_size == 0 {
            return Err(field("size", "an empty snapshot is not a snapshot"));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(field("sha256", "must be 64 lower-case hex digits"));
        }
        if self.schema_hash.len() > 128 || !self.schema_hash.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(field("schema_hash", "must be a hex digest"));
        }
        if self.sequences.len() > MAX_SHARDS {
            return Err(field(
                "sequences",
                "lists more streams than any cluster has",
            ));
        }
        if self
            .sequences
            .keys()
            .any(|s| s.is_empty() || s.len() > 256 || s.contains(['.', '*', '>', ' ']))
        {
            return Err(field("sequences", "holds a stream name that is not valid"));
        }
        if self.harmonylite_version.len() > 64 {
            return Err(field("harmonylite_version", "is too long"));
        }
        // Its shape is checked by `signing`, with a reason the refusal reports.
        if self.signature.as_ref().is_some_and(|s| {
            s.len() > MAX_SIGNATURE_LEN || !s.bytes().all(|b| b.is_ascii_graphic())
        }) {
            return Err(field("signature", "is not a signature"));
        }
        Ok(())
    }

    /// Name of the compressed database in a store.
    pub fn data_name(&self) -> String {
        format!("{}.db.zst", self.id)
    }

    /// Name of this manifest in a store.
    pub fn manifest_name(&self) -> String {
        manifest_name(&self.id)
    }
}

/// Name of the manifest of snapshot `id` in a store.
pub fn manifest_name(id: &str) -> String {
    format!("{id}.manifest.json")
}

/// The snapshot id a stored manifest name belongs to, if it is one.
pub fn id_of_manifest_name(name: &str) -> Option<&str> {
    let id = name.strip_suffix(".manifest.json")?;
    let (ms, node) = id.split_once('-')?;
    (ms.len() == 13
        && ms.bytes().all(|b| b.is_ascii_digit())
        && !node.is_empty()
        && node.bytes().all(|b| b.is_ascii_digit()))
    .then_some(id)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            id: Manifest::make_id(1_764_000_000_000, 3),
            node_id: 3,
            created_ms: 1_764_000_000_000,
            size: 1234,
            raw_size: 8192,
            sha256: "ab".repeat(32),
            schema_hash: "cd".repeat(32),
            sequences: [("harmonylite-changes-0".to_owned(), 42)].into(),
            harmonylite_version: "0.1.0".to_owned(),
            signature: None,
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_json()).unwrap(), m);
        assert_eq!(m.data_name(), "1764000000000-3.db.zst");
        assert_eq!(id_of_manifest_name(&m.manifest_name()), Some(m.id.as_str()));
    }

    #[test]
    fn every_bad_field_is_named() {
        type Spoil = fn(&mut Manifest);
        let cases: Vec<(Spoil, &str)> = vec![
            (|m| m.format = 2, "format 2"),
            (|m| m.id = "x".into(), "id"),
            (|m| m.sha256 = "AB".repeat(32), "sha256"),
            (|m| m.sha256 = "ab".into(), "sha256"),
            (|m| m.size = 0, "size"),
            (|m| m.schema_hash = "zz".into(), "schema_hash"),
            (|m| m.signature = Some("a b".into()), "signature"),
            (
                |m| {
                    m.sequences.insert("a.b".into(), 1);
                },
                "sequences",
            ),
        ];
        for (spoil, named) in cases {
            let mut m = sample();
            spoil(&mut m);
            let err = Manifest::parse(&m.to_json()).unwrap_err().to_string();
            assert!(err.contains(named), "{err} should name {named}");
        }
        let err = Manifest::parse(b"{\"format\": 1}").unwrap_err();
        assert!(matches!(err, ManifestError::Syntax(_)), "{err}");
        let err = Manifest::parse(&vec![b' '; MAX_MANIFEST_BYTES + 1]).unwrap_err();
        assert!(matches!(err, ManifestError::TooLarge(_)));
    }

    #[test]
    fn only_manifest_names_are_ids() {
        assert_eq!(
            id_of_manifest_name("1764000000000-12.manifest.json"),
            Some("1764000000000-12")
        );
        for name in [
            "latest.json",
            "1764000000000-12.db.zst",
            "176400000000-1.manifest.json",
            "1764000000000-.manifest.json",
            "x764000000000-1.manifest.json",
        ] {
            assert_eq!(id_of_manifest_name(name), None, "{name}");
        }
    }
}
