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

use crate::common::link::Link;
use crate::common::ports::ClosedPort;

/// The link node `from` dials to reach node `to`.
struct Route {
    from: usize,
    to: usize,
    link: Link,
}

pub struct Proxy {
    routes: Vec<Route>,
    sinks: Vec<ClosedPort>,
}

impl Proxy {
    /// Proxies for every ordered pair of the nodes whose route listeners are `cluster_ports`.
    pub fn start(cluster_ports: &[u16]) -> Proxy {
        let mut routes = Vec::new();
        for from in 0..cluster_ports.len() {
            for (to, port) in cluster_ports.iter().enumerate() {
                if from != to {
                    let link = Link::start(*port);
                    routes.push(Route { from, to, link });
                }
            }
        }
        let sinks = cluster_ports.iter().map(|_| ClosedPort::bind()).collect();
        Proxy { routes, sinks }
    }

    /// The port node `from` dials to reach node `to`.
    pub fn port(&self, from: usize, to: usize) -> u16 {
        self.routes
            .iter()
            .find(|r| r.from == from && r.to == to)
            .expect("no such link")
            .link
            .port()
    }

    /// The route address node `i` advertises: a sink, so gossip cannot bypass the proxy.
    pub fn sink_port(&self, i: usize) -> u16 {
        self.sinks[i].port
    }

    /// Cuts node `n` off: closes its routes and refuses new ones.
    pub fn cut(&self, n: usize) {
        for route in self.routes.iter().filter(|r| r.from == n || r.to == n) {
            route.link.cut();
        }
    }

    pub fn heal(&self) {
        for route in &self.routes {
            route.link.heal();
        }
    }
}
