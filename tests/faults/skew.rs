//! Clock skew for one node's application writers, without touching the system clock.
//!
//! Versions are stamped by the capture triggers inside the application's own transaction, from
//! SQLite's `julianday('now')`, which asks the connection's VFS for the time
//! (`xCurrentTimeInt64`). Each node's writers open their database through a VFS of their own: a
//! copy of the default VFS whose two time methods add that node's offset. This skews exactly the
//! clock that matters (the one the triggers read, on one node) while the harmonylite process and
//! nats-server keep the real time; it needs no libfaketime, no subprocess, and the offset can
//! change in the middle of a run. Everything else (files, locks, WAL shared memory) is the
//! default VFS's own code, so the writers' I/O is that of an ordinary application.

use std::ffi::{CString, c_int};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};

use rusqlite::ffi;

/// `sqlite3_vfs` first, so SQLite's `*mut sqlite3_vfs` is also a pointer to this struct.
#[repr(C)]
struct SkewVfs {
    vfs: ffi::sqlite3_vfs,
    real: *mut ffi::sqlite3_vfs,
    offset_ms: AtomicI64,
}

// SAFETY: `real` points at SQLite's default VFS, which lives for the whole process and is
// thread-safe; the offset is atomic.
unsafe impl Sync for SkewVfs {}
unsafe impl Send for SkewVfs {}

static VFS: OnceLock<Vec<&'static SkewVfs>> = OnceLock::new();

/// Up to this many nodes have a VFS each.
const MAX_NODES: usize = 8;

/// Name of node `i`'s VFS (0-based), registering them all on first use.
pub fn vfs_name(i: usize) -> String {
    vfs_list();
    format!("faults-skew-{i}")
}

/// Sets node `i`'s skew in milliseconds (negative: behind).
pub fn set_offset_ms(i: usize, ms: i64) {
    vfs_list()[i].offset_ms.store(ms, Ordering::Relaxed);
}

pub fn reset() {
    for v in vfs_list() {
        v.offset_ms.store(0, Ordering::Relaxed);
    }
}

fn vfs_list() -> &'static [&'static SkewVfs] {
    VFS.get_or_init(|| (0..MAX_NODES).map(register).collect())
}

fn register(i: usize) -> &'static SkewVfs {
    // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS, a static of the bundled SQLite. We
    // copy it (method pointers, pAppData, sizes) and replace the name and the time methods; the
    // copy is leaked, as SQLite requires a registered VFS to outlive every connection.
    unsafe {
        assert_eq!(ffi::sqlite3_initialize(), ffi::SQLITE_OK);
        let real = ffi::sqlite3_vfs_find(std::ptr::null());
        assert!(!real.is_null(), "no default sqlite VFS");
        assert!((*real).iVersion >= 2 && (*real).xCurrentTimeInt64.is_some());
        let mut vfs = *real;
        vfs.zName = CString::new(format!("faults-skew-{i}")).unwrap().into_raw();
        vfs.pNext = std::ptr::null_mut();
        vfs.xCurrentTimeInt64 = Some(current_time_int64);
        vfs.xCurrentTime = Some(current_time);
        let me: &'static mut SkewVfs = Box::leak(Box::new(SkewVfs {
            vfs,
            real,
            offset_ms: AtomicI64::new(0),
        }));
        let rc = ffi::sqlite3_vfs_register(&mut me.vfs, 0);
        assert_eq!(rc, ffi::SQLITE_OK, "registering the skew VFS");
        me
    }
}

/// Julian day in milliseconds, plus the node's offset.
unsafe extern "C" fn current_time_int64(
    vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite passes back the pointer we registered, which is a `SkewVfs`.
    unsafe {
        let me = &*(vfs as *const SkewVfs);
        let real_fn = (*me.real)
            .xCurrentTimeInt64
            .expect("checked at registration");
        let rc = real_fn(me.real, out);
        *out += me.offset_ms.load(Ordering::Relaxed);
        rc
    }
}

unsafe extern "C" fn current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let mut ms: ffi::sqlite3_int64 = 0;
    // SAFETY: as above; `ms` is a valid out pointer.
    let rc = unsafe { current_time_int64(vfs, &mut ms) };
    // SAFETY: SQLite hands us a valid out pointer.
    unsafe { *out = ms as f64 / 86_400_000.0 };
    rc
}
