//! The accept loop shared by the three web servers (health check, Prometheus, dashboard).
//!
//! axum's own `serve` bounds neither slow clients nor the connections it holds, so a few
//! hundred idle sockets (slowloris) could hold any of the three. Here:
//! - a connection must send each request's headers within `HEADER_READ_TIMEOUT` (hyper's timer
//!   also runs while a keep-alive connection idles between requests);
//! - a request must be answered within `REQUEST_TIMEOUT` (a trickled body is read inside it);
//! - a connection lives at most `CONNECTION_LIFETIME` (a client that never reads its response
//!   holds it no longer; browsers reconnect transparently);
//! - a listener serves at most `MAX_CONNECTIONS` at once, `MAX_PER_CLIENT` of them from one
//!   address; past the first it stops accepting until one ends (the kernel's backlog queues
//!   the rest), past the second it closes the new connection at once.
//!
//! Many hosts together can still fill a listener for as long as they keep sending; that is a
//! firewall's job (docs/security.md). Each request carries the peer's address (`ConnectInfo`)
//! for the dashboard's rate limit.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A client must have sent a request's headers within this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request (its body included) must be answered within this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a connection is kept.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);
/// Connections one listener serves at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections one listener serves at once from one client address.
pub const MAX_PER_CLIENT: usize = 32;
/// How long requests in flight may finish at shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors, usually), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `cancel`, then lets requests in flight finish.
pub async fn serve(
    what: &'static str,
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    info!(server = what, addr = ?addr, "listening");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_client = PerClient::default();
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot?,
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(server = what, error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(client_slot) = per_client.take(peer.ip()) else {
            // Dropping the stream closes it: this address holds enough connections.
            continue;
        };
        let app = TowerToHyperService::new(router.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let answer = app.call(req);
            async move {
                match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
                    Ok(answered) => answered,
                    Err(_) => Ok(StatusCode::REQUEST_TIMEOUT.into_response()),
                }
            }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop((slot, client_slot));
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            server = what,
            "connections still open at shutdown are cut off"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Open connections per client address.
#[derive(Default, Clone)]
struct PerClient(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection of a client; counted until dropped.
struct ClientSlot {
    table: PerClient,
    client: IpAddr,
}

impl PerClient {
    /// A slot for `client`, unless it already holds `MAX_PER_CLIENT` connections.
    fn take(&self, client: IpAddr) -> Option<ClientSlot> {
        let mut table = self.lock();
        let open = table.entry(client).or_insert(0);
        if *open >= MAX_PER_CLIENT {
            return None;
        }
        *open += 1;
        Some(ClientSlot {
            table: self.clone(),
            client,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        if let Some(open) = table.get_mut(&self.client) {
            *open -= 1;
            if *open == 0 {
                table.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_holds_at_most_its_share_and_gets_it_back() {
        let table = PerClient::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<ClientSlot> = (0..MAX_PER_CLIENT)
            .map(|_| table.take(a).unwrap())
            .collect();
        assert!(table.take(a).is_none(), "one more is refused");
        assert!(
            table.take("192.0.2.2".parse().unwrap()).is_some(),
            "others are not"
        );
        drop(held);
        assert!(table.lock().is_empty(), "dropped slots are given back");
        assert!(table.take(a).is_some());
    }
}
