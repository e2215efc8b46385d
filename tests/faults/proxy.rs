//! The network partition: every NATS route between two nodes runs through a TCP proxy owned by
//! this program, one listener per ordered pair (node i dialling node j), so a partition is a
//! user-space decision that needs no root, no namespaces and no firewall rules.
//!
//! `cut(n)` closes every proxied connection touching node n and refuses new ones until `heal`.
//! nats-server also learns routes by gossip (a peer's advertised route address); each node
//! advertises a *sink*: a port bound but never listening, so a gossiped route is refused at once
//! (and not retried) and no route ever bypasses the proxy. A sink that accepted and closed made
//! the servers redial it every few tens of milliseconds.
//! Client connections (harmonylite to its own server) are local and not proxied: a cut-off node
//! keeps its process and its server, it only loses its peers.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::ports::ClosedPort;

struct Link {
    from: usize,
    to: usize,
    port: u16,
    target: SocketAddr,
    /// Locked together with `open`'s check, so a connection accepted during a cut is never
    /// registered after the cut closed the others.
    conns: Mutex<Vec<TcpStream>>,
    open: AtomicBool,
}

pub struct Proxy {
    links: Vec<Arc<Link>>,
    sinks: Vec<ClosedPort>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Proxies for every ordered pair of the nodes whose route listeners are `cluster_ports`.
    pub fn start(cluster_ports: &[u16]) -> Proxy {
        let stop = Arc::new(AtomicBool::new(false));
        let mut links = Vec::new();
        for (from, _) in cluster_ports.iter().enumerate() {
            for (to, port) in cluster_ports.iter().enumerate() {
                if from == to {
                    continue;
                }
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let link = Arc::new(Link {
                    from,
                    to,
                    port: listener.local_addr().unwrap().port(),
                    target: SocketAddr::from(([127, 0, 0, 1], *port)),
                    conns: Mutex::new(Vec::new()),
                    open: AtomicBool::new(true),
                });
                let (l, s) = (link.clone(), stop.clone());
                std::thread::spawn(move || accept_loop(listener, l, s));
                links.push(link);
            }
        }
        let sinks = cluster_ports.iter().map(|_| ClosedPort::bind()).collect();
        Proxy { links, sinks, stop }
    }

    /// The port node `from` dials to reach node `to`.
    pub fn port(&self, from: usize, to: usize) -> u16 {
        self.links
            .iter()
            .find(|l| l.from == from && l.to == to)
            .expect("no such link")
            .port
    }

    /// The route address node `i` advertises: a sink, so gossip cannot bypass the proxy.
    pub fn sink_port(&self, i: usize) -> u16 {
        self.sinks[i].port
    }

    /// Cuts node `n` off: closes its routes and refuses new ones.
    pub fn cut(&self, n: usize) {
        for link in self.links.iter().filter(|l| l.from == n || l.to == n) {
            let mut conns = link.conns.lock().unwrap();
            link.open.store(false, Ordering::SeqCst);
            for c in conns.drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    pub fn heal(&self) {
        for link in &self.links {
            link.open.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for link in &self.links {
            for c in link.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
            // Wake the accept loop so it sees `stop`.
            let _ = TcpStream::connect(("127.0.0.1", link.port));
        }
    }
}

fn accept_loop(listener: TcpListener, link: Arc<Link>, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(down) = conn else { continue };
        if !link.open.load(Ordering::SeqCst) {
            continue; // dropped: the dialler sees the connection close at once
        }
        let Ok(up) = TcpStream::connect_timeout(&link.target, Duration::from_secs(1)) else {
            continue;
        };
        let mut conns = link.conns.lock().unwrap();
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
