//! The accept loop shared by the three web servers (health check, Prometheus, dashboard).
//!
//! axum's own `serve` neither times out a client that never finishes its request headers nor
//! bounds the connections it holds, so a few hundred idle sockets (slowloris) could hold any of
//! the three. Here every connection must send its headers within `HEADER_READ_TIMEOUT` (for
//! each request, keep-alive idling included), and a listener serves at most `MAX_CONNECTIONS`
//! at once; past that it stops accepting until one ends, so the kernel's backlog queues the
//! rest. Each request carries the peer's address (`ConnectInfo`) for the dashboard's rate limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A client must have sent a request's headers within this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one listener serves at once.
pub const MAX_CONNECTIONS: usize = 256;
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
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
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
        let app = TowerToHyperService::new(router.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.call(req)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        // One task per connection, as every hyper server does; it ends with the connection
        // (the header timeout bounds an idle one), and the slot is freed with it.
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            server = what,
            "connections still open at shutdown were closed"
        );
    }
    Ok(())
}
