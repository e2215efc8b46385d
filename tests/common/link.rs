//! A TCP link that can be cut: one loopback listener forwarding every connection to a target
//! port, in user space (no root, no firewall rules). `cut` closes every forwarded connection
//! and refuses new ones until `heal`. The fault program's partition (tests/faults/proxy.rs)
//! is a link per ordered pair of nodes; the edge tests put one between an edge and its hub.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    port: u16,
    target: SocketAddr,
    /// Locked together with `open`'s check, so a connection accepted during a cut is never
    /// registered after the cut closed the others.
    conns: Mutex<Vec<TcpStream>>,
    open: AtomicBool,
    stop: AtomicBool,
}

impl Link {
    /// Forwards a new loopback port to `target_port` on loopback.
    pub fn start(target_port: u16) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a link port");
        let inner = Arc::new(Inner {
            port: listener.local_addr().expect("link port").port(),
            target: SocketAddr::from(([127, 0, 0, 1], target_port)),
            conns: Mutex::new(Vec::new()),
            open: AtomicBool::new(true),
            stop: AtomicBool::new(false),
        });
        let accepting = inner.clone();
        std::thread::spawn(move || accept_loop(listener, accepting));
        Link { inner }
    }

    /// The port to dial instead of the target's.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        let mut conns = self.inner.conns.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.open.store(false, Ordering::SeqCst);
        for c in conns.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.inner.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.inner.port));
    }
}

fn accept_loop(listener: TcpListener, link: Arc<Inner>) {
    for conn in listener.incoming() {
        if link.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(down) = conn else { continue };
        if !link.open.load(Ordering::SeqCst) {
            continue; // dropped: the dialler sees the connection close at once
        }
        let Ok(up) = TcpStream::connect_timeout(&link.target, Duration::from_secs(1)) else {
            continue;
        };
        let mut conns = link.conns.lock().unwrap_or_else(|e| e.into_inner());
        if !link.open.load(Ordering::SeqCst) {
            continue;
        }
        let (Ok(d2), Ok(u2)) = (down.try_clone(), up.try_clone()) else {
            continue;
        };
        conns.retain(|c| c.peer_addr().is_ok());
        conns.push(d2);
        conns.push(u2);
        drop(conns);
        pipe(down, up);
    }
}

/// Copies both ways until either side closes (or a cut shuts the sockets down).
fn pipe(a: TcpStream, b: TcpStream) {
    let spawn = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        spawn(a, b);
        spawn(b2, a2);
    }
}
