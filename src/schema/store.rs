//! The node's schema state on disk, `<data_dir>/schema-state.json`, so the previous hash survives
//! restarts and `harmonylite -schema-status` can show it without the daemon.
//!
//! Written atomically (temp file, fsync, rename) on every change of hash or pause state. A
//! missing or unreadable file means "no previous hash", never a failure to start.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::SchemaHash;
use crate::ids::NodeId;

/// File name inside the data directory.
pub const STATE_FILE: &str = "schema-state.json";

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    pub node_id: NodeId,
    pub schema_hash: SchemaHash,
    #[serde(default)]
    pub previous_hash: Option<SchemaHash>,
    #[serde(default)]
    pub paused_shards: Vec<u32>,
    /// RFC 3339.
    #[serde(default)]
    pub updated_at: String,
}

/// Path of the state file in `data_dir`.
pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_FILE)
}

/// Reads the state file; `Ok(None)` when it does not exist.
pub fn load(path: &Path) -> std::io::Result<Option<StoredState>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the state file atomically.
pub fn save(path: &Path, state: &StoredState) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        // The rename is durable once the directory is; a failure here only risks the old file.
        let _ = d.sync_all();
    }
    Ok(())
}

/// RFC 3339 UTC with milliseconds for a Unix time in milliseconds, e.g.
/// `2025-01-17T09:30:00.123Z`.
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_737_106_200_123), "2025-01-17T09:30:00.123Z");
        assert_eq!(rfc3339(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn round_trips_and_tolerates_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        assert_eq!(load(&path).unwrap(), None);
        let state = StoredState {
            node_id: NodeId(3),
            schema_hash: SchemaHash("b".into()),
            previous_hash: Some(SchemaHash("a".into())),
            paused_shards: vec![1],
            updated_at: rfc3339(0),
        };
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state));
        std::fs::write(&path, "not json").unwrap();
        assert!(load(&path).is_err());
    }
}
