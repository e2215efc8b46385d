//! Ports a server must be told before it starts.
//!
//! Client and monitoring ports are never picked here: servers take `-1` (or `:0`) and the tests
//! read the real port back (nats-server's ports file, a server's log line). What cannot work that
//! way are route (cluster) ports, which every peer must know before any of them starts, servers
//! that cannot take port 0 (sshd), and scripts that take a base port (the README's example).
//! Those come from `fixed_port`, `fixed_ports` and `fixed_port_span`, and from nowhere else.
//!
//! Why this is race-free in practice:
//! - The ports lie below the kernel's ephemeral range (`ip_local_port_range`), so no `bind(0)`
//!   and no outgoing connection anywhere on the machine is given one of them meanwhile.
//! - The range is cut into blocks; a test process owns a block by holding an exclusive `flock`
//!   on a file named after it (the kernel drops the lock when the process ends, however it
//!   ends), so two test processes, of this checkout or another, never hand out the same port.
//! - Inside its blocks a process hands out each port once (never twice, so a stopped node's
//!   port is not given to another node), after checking with a bind that nothing listens there.
//!
//! `ClosedPort` is the other kind: a port where connections are refused (a store or peer that
//! is down), held by a bound socket that never listens, so no one else can take it meanwhile.

use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// Ports per block: enough for every cluster of a test binary's run, and for the example's span.
const BLOCK: u16 = 256;
/// The lowest port handed out (above the well-known and most registered service ports).
const LOWEST: u16 = 10_000;

struct Blocks {
    /// Lock files of the blocks this process owns (kept open: closing one releases the block).
    held: Vec<File>,
    /// Next port to hand out in the current block, and the block's end (exclusive).
    next: u16,
    end: u16,
    /// Blocks to try, in order.
    candidates: Vec<u16>,
}

static BLOCKS: Mutex<Option<Blocks>> = Mutex::new(None);

/// One port for a server that must be told its port before it starts (see the module docs).
pub fn fixed_port() -> u16 {
    fixed_port_span(1)
}

/// `n` ports, not necessarily consecutive (route ports of an `n`-node cluster).
pub fn fixed_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| fixed_port()).collect()
}

/// The first of `len` consecutive free ports, none of them handed out before (for a script that
/// derives its ports from one base).
pub fn fixed_port_span(len: u16) -> u16 {
    assert!(
        (1..=BLOCK).contains(&len),
        "a span of {len} ports does not fit a block"
    );
    let mut guard = BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
    let blocks = guard.get_or_insert_with(Blocks::new);
    loop {
        if blocks.end - blocks.next < len {
            blocks.claim_next_block();
            continue;
        }
        let start = blocks.next;
        match (start..start + len).find(|p| !free(*p)) {
            // Skip past the busy port; the ports before it are left unused (never handed out).
            Some(busy) => blocks.next = busy + 1,
            None => {
                blocks.next = start + len;
                return start;
            }
        }
    }
}

impl Blocks {
    fn new() -> Blocks {
        let (low, _) = ephemeral_range();
        assert!(
            low >= LOWEST + BLOCK,
            "the ephemeral port range starts at {low}: no room below it for fixed test ports \
             (see /proc/sys/net/ipv4/ip_local_port_range)"
        );
        let count = (low - LOWEST) / BLOCK;
        // Start at a block that depends on the pid, so successive runs do not reuse the ports
        // the previous run just closed; wrap around to try every block.
        let first = std::process::id() as u16 % count;
        let candidates = (0..count)
            .map(|i| LOWEST + ((first + i) % count) * BLOCK)
            .collect();
        Blocks {
            held: Vec::new(),
            next: 0,
            end: 0,
            candidates,
        }
    }

    /// Takes the next block no other process holds.
    fn claim_next_block(&mut self) {
        let dir = lock_dir();
        while !self.candidates.is_empty() {
            let start = self.candidates.remove(0);
            let path = dir.join(format!("block-{start}.lock"));
            // Read-only is enough for flock (a file another user created stays usable).
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .or_else(|_| File::open(&path))
                .unwrap_or_else(|e| panic!("port block lock {}: {e}", path.display()));
            // SAFETY: flock on a descriptor this function owns.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                self.held.push(file);
                self.next = start;
                self.end = start + BLOCK;
                return;
            }
        }
        panic!(
            "every block of fixed test ports ({LOWEST}..{}) is held by another process",
            ephemeral_range().0
        );
    }
}

/// Where the block lock files live (shared by every test process on the machine).
fn lock_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("harmonylite-test-ports");
    if !dir.exists() {
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        // Like /tmp: every user's test runs may add their lock files.
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    dir
}

/// Whether nothing is bound to `port` on loopback.
fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The kernel's ephemeral port range (where `bind(0)` and outgoing connections take ports).
fn ephemeral_range() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().map(|s| s.parse::<u16>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(low), Some(high)) => (low, high),
        // Linux's default.
        _ => (32_768, 60_999),
    }
}

/// A loopback port where connections are refused for as long as this value lives: a socket
/// bound to it that never listens, so no other program can take the port meanwhile.
pub struct ClosedPort {
    _socket: OwnedFd,
    pub port: u16,
}

impl ClosedPort {
    pub fn bind() -> ClosedPort {
        // SAFETY: plain socket(2)/bind(2)/getsockname(2) on a socket this function owns; the
        // sockaddr structs are fully initialised and their sizes passed.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let socket = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(fd, (&raw const addr).cast(), len);
            assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
            let mut len = len;
            let rc = libc::getsockname(fd, (&raw mut addr).cast(), &mut len);
            assert_eq!(rc, 0, "getsockname: {}", io::Error::last_os_error());
            ClosedPort {
                _socket: socket,
                port: u16::from_be(addr.sin_port),
            }
        }
    }
}
