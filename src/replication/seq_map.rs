//! The sequence map file (`seq_map_path`): the contiguous applied floor per stream, CBOR.
//!
//! The authoritative copy lives in the database (`__harmonylite__floors`, written in the same
//! transaction as the changes it covers). This file only mirrors it for operators and tools:
//! nothing reads it to decide anything, and where it disagrees with the database, the database
//! wins. It is written atomically: temp file, fsync, rename, fsync of the directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ids::StreamSeq;

/// Stream name → last applied sequence.
pub type SeqMap = BTreeMap<String, u64>;

#[derive(Debug, thiserror::Error)]
pub enum SeqMapError {
    #[error("cannot write sequence map {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read sequence map {path}: {reason}")]
    Read { path: PathBuf, reason: String },
}

/// Writes the map atomically.
pub fn save(path: &Path, seqs: &BTreeMap<String, StreamSeq>) -> Result<(), SeqMapError> {
    let map: SeqMap = seqs.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    let err = |source| SeqMapError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    ciborium::into_writer(&map, &mut bytes)
        .map_err(|e| err(std::io::Error::other(e.to_string())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    file.write_all(&bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads the map; a missing file is an empty map.
pub fn load(path: &Path) -> Result<SeqMap, SeqMapError> {
    match std::fs::read(path) {
        Ok(bytes) => ciborium::from_reader(bytes.as_slice()).map_err(|e| SeqMapError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SeqMap::new()),
        Err(e) => Err(SeqMapError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq-map.cbor");
        assert!(load(&path).unwrap().is_empty());
        let mut seqs = BTreeMap::new();
        seqs.insert("harmonylite-changes-0".to_owned(), StreamSeq(42));
        save(&path, &seqs).unwrap();
        seqs.insert("harmonylite-changes-1".to_owned(), StreamSeq(7));
        save(&path, &seqs).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.get("harmonylite-changes-0"), Some(&42));
        assert_eq!(back.get("harmonylite-changes-1"), Some(&7));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq-map.cbor");
        std::fs::write(&path, b"\xff\x00garbage").unwrap();
        assert!(load(&path).is_err());
    }
}
