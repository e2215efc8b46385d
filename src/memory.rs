//! Returning freed memory to the system. glibc's allocator keeps what a program frees for
//! reuse: the parsed schema a connection lets go (many small blocks in the middle of the heap)
//! or the buffers of one big row stay in the process's resident size until `malloc_trim`
//! hands the free pages back. Called after such a release, not on every free: a trim walks the
//! heap.
//!
//! Buffers of `MMAP_THRESHOLD` and more are mapped on their own (`configure_allocator`) and so
//! unmapped when freed. glibc's default threshold rises to the size of the largest buffer freed
//! (up to 32 MiB), after which a big row's buffers come from the heap and stay resident.

/// Buffers at least this large get their own mapping, returned to the system when freed.
const MMAP_THRESHOLD: i32 = 1 << 20;

/// Fixes the allocator's mmap threshold (glibc; a no-op elsewhere). Call once at start, before
/// the first big allocation.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tunable of the allocator; it is called before any thread
    // allocates large buffers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Hands the allocator's free pages back to the system (glibc; a no-op elsewhere).
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator already considers free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Messages, rows or reads at least this large are followed by a trim.
const LARGE_BYTES: usize = 16 * 1024 * 1024;

/// `return_free_memory` after work that held `bytes` (a decoded group, a published message),
/// when they were `LARGE_BYTES` or more: a node that replicated one big row goes back to its
/// idle size instead of keeping the row's buffers.
pub fn return_free_memory_after(bytes: usize) {
    if bytes >= LARGE_BYTES {
        return_free_memory();
    }
}
