//! Whether a snapshot may be downloaded at all, judged from its manifest before the first byte
//! moves: its sizes within `[snapshot] max_size_mb`, and room for it on disk.
//!
//! A manifest comes from a store others can write; its sizes also bound the download and the
//! decompression (`verify`), so a manifest that lies about them is caught there, but only after
//! filling the disk up to what it claimed. Here the claim itself is judged. What must fit: the
//! database the download decompresses to (in the work directory: the compressed bytes are
//! unpacked as they arrive and never stored, `unpack`), then the install, which writes the
//! database's pages through the live database's WAL (in the database's directory) while the
//! verified copy still exists. When both directories are on one file system, their needs add
//! up. A margin stays free for SQLite and whoever else writes there.

use std::path::{Path, PathBuf};

use super::manifest::Manifest;
use super::{SnapshotError, work_dir};
use crate::config::Config;

/// Least margin left free beyond what the restore writes.
const MARGIN_MIN: u64 = 64 * 1024 * 1024;
/// The margin is also at least this share of what the restore writes (1/20: 5 %).
const MARGIN_DIVISOR: u64 = 20;

/// The bounds a download must fit: where it goes, where it is installed, how large it may be.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Where the compressed and the decompressed file are written.
    pub work_dir: PathBuf,
    /// The live database's directory (its WAL grows there during the install).
    pub db_dir: PathBuf,
    /// `[snapshot] max_size_mb`, in bytes.
    pub max_bytes: u64,
}

impl Limits {
    pub fn new(cfg: &Config) -> Limits {
        Limits {
            work_dir: work_dir(cfg),
            db_dir: cfg.db_dir(),
            max_bytes: cfg.snapshot.max_size_bytes(),
        }
    }
}

/// Refuses `m` when its sizes exceed `limits.max_bytes` (a bad snapshot: an older one may do) or
/// the disk lacks room for it (not the snapshot's fault: the restore waits). `work_dir` must
/// exist.
pub fn check(m: &Manifest, limits: &Limits) -> Result<(), SnapshotError> {
    if m.size > limits.max_bytes || m.raw_size > limits.max_bytes {
        return Err(SnapshotError::TooLarge {
            id: m.id.clone(),
            size: m.size,
            raw_size: m.raw_size,
            limit_mb: limits.max_bytes / (1024 * 1024),
        });
    }
    let same_fs = device(&limits.work_dir)? == device(&limits.db_dir)?;
    for need in needs(m, same_fs) {
        let path = if need.in_work_dir {
            &limits.work_dir
        } else {
            &limits.db_dir
        };
        let free =
            free_bytes(path).map_err(|e| SnapshotError::io("checking free space in", path, e))?;
        if free < need.bytes {
            return Err(SnapshotError::NoRoom {
                id: m.id.clone(),
                path: path.clone(),
                what: need.what,
                need: need.bytes,
                free,
            });
        }
    }
    Ok(())
}

/// Space one file system must have free.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Need {
    in_work_dir: bool,
    bytes: u64,
    what: &'static str,
}

/// What the restore of `m` writes, per file system, margin included.
fn needs(m: &Manifest, same_fs: bool) -> Vec<Need> {
    let with_margin = |n: u64| n.saturating_add(MARGIN_MIN.max(n / MARGIN_DIVISOR));
    if same_fs {
        return vec![Need {
            in_work_dir: true,
            bytes: with_margin(m.raw_size.saturating_add(m.raw_size)),
            what: "the database and the install's WAL, on one file system",
        }];
    }
    vec![
        Need {
            in_work_dir: true,
            bytes: with_margin(m.raw_size),
            what: "the database",
        },
        Need {
            in_work_dir: false,
            bytes: with_margin(m.raw_size),
            what: "the install's WAL",
        },
    ]
}

fn device(path: &Path) -> Result<u64, SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.dev())
        .map_err(|e| SnapshotError::io("reading", path, e))
}

/// Bytes an unprivileged process may still write on `path`'s file system.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and outlives the call; `stat` points to writable memory
    // of the right type, which statvfs fills when it returns 0.
    if unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u32 or u64).
    #[allow(clippy::unnecessary_cast)]
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(size: u64, raw_size: u64) -> Manifest {
        let mut m = crate::snapshot::manifest::tests::sample();
        (m.size, m.raw_size) = (size, raw_size);
        m
    }

    fn limits(dir: &Path, max_bytes: u64) -> Limits {
        Limits {
            work_dir: dir.to_path_buf(),
            db_dir: dir.to_path_buf(),
            max_bytes,
        }
    }

    #[test]
    fn both_phases_and_a_margin_must_fit() {
        const MIB: u64 = 1024 * 1024;
        let m = manifest(100 * MIB, 400 * MIB);
        // One file system: the verified database and the install's WAL. The compressed file
        // is never stored.
        let one = needs(&m, true);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].bytes, 800 * MIB + 64 * MIB);
        // Two: each its own, the margin at least 64 MiB or 5 %.
        let two = needs(&m, false);
        assert_eq!(two[0].bytes, 400 * MIB + 64 * MIB);
        assert_eq!(two[1].bytes, 400 * MIB + 64 * MIB);
        let big = needs(&manifest(10_000 * MIB, 20_000 * MIB), false);
        assert_eq!(big[1].bytes, 21_000 * MIB);
        // Lying sizes do not overflow.
        assert_eq!(
            needs(&manifest(u64::MAX, u64::MAX), true)[0].bytes,
            u64::MAX
        );
    }

    #[test]
    fn sizes_beyond_the_limit_are_a_bad_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        check(&manifest(1000, 4000), &limits(dir.path(), 4000)).unwrap();
        for m in [manifest(4001, 4001), manifest(1000, 4001)] {
            let e = check(&m, &limits(dir.path(), 4000)).unwrap_err();
            assert!(matches!(e, SnapshotError::TooLarge { .. }), "{e}");
            assert!(e.is_bad_snapshot());
            let text = e.to_string();
            assert!(
                text.contains(&m.id) && text.contains("snapshot.max_size_mb"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_disk_too_small_is_refused_and_not_the_snapshots_fault() {
        let dir = tempfile::tempdir().unwrap();
        // Within the size limit, beyond any test machine's disk.
        let huge = manifest(1 << 50, 1 << 52);
        let e = check(&huge, &limits(dir.path(), u64::MAX)).unwrap_err();
        let SnapshotError::NoRoom { need, free, .. } = &e else {
            panic!("{e}");
        };
        assert!(need > free, "{e}");
        assert!(!e.is_bad_snapshot());
        assert!(e.to_string().contains(&huge.id), "{e}");
        let free_now = free_bytes(dir.path()).unwrap();
        assert!(free_now > 0);
        let missing = limits(&dir.path().join("missing"), u64::MAX);
        assert!(check(&manifest(1, 1), &missing).is_err());
    }
}
