//! The bounds of the three web listeners (health check, Prometheus, dashboard) against slow and
//! idle clients: a connection that has not sent its request headers within about 10 s is
//! closed; a listener serves at most 256 connections at once, the rest waiting until one ends;
//! one client address holds at most 32 of them, a 33rd is closed at once. Clients take
//! several loopback addresses (127.0.0.x) to be several clients.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{admin_addr, health_addr, http, metrics_addr, serve_all};
use crate::harness::{Node, test_config};

/// The servers' header-read timeout and connection limit (`src/web/server.rs`).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 256;
const MAX_PER_CLIENT: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_connections_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), 1);
    serve_all(&mut cfg);
    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    let listeners = [health_addr(&node), metrics_addr(&node), admin_addr(&node)];
    let slow = listeners.map(|addr| tokio::spawn(closed_after_partial_headers(addr)));
    let bounded = tokio::spawn(connections_are_bounded(health_addr(&node)));
    one_client_holds_its_share_only(admin_addr(&node)).await;
    for (addr, waited) in listeners.iter().zip(slow) {
        let waited = waited.await.unwrap();
        assert!(
            waited >= HEADER_TIMEOUT - Duration::from_secs(1)
                && waited <= HEADER_TIMEOUT + Duration::from_secs(5),
            "{addr}: a half-sent request was closed after {waited:?}"
        );
    }
    bounded.await.unwrap();
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

/// Sends half a request and returns how long the server held the connection open.
async fn closed_after_partial_headers(addr: SocketAddr) -> Duration {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    until_closed(&mut stream, Duration::from_secs(30)).await;
    started.elapsed()
}

/// Reads until the server closes the connection (EOF or reset), failing past `deadline`.
async fn until_closed(stream: &mut TcpStream, deadline: Duration) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(deadline, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection past {deadline:?}"
    );
}

/// `MAX_CONNECTIONS` idle connections fill the listener: one more request waits (its TCP
/// connect succeeds in the kernel's backlog) until the idle ones are cut off, then is served.
async fn connections_are_bounded(addr: SocketAddr) {
    let started = Instant::now();
    let mut idle = Vec::with_capacity(MAX_CONNECTIONS);
    for i in 0..MAX_CONNECTIONS {
        // Eight clients of 32 connections each (127.0.0.2 to .9).
        idle.push(connect_from(2 + (i / MAX_PER_CLIENT) as u8, addr).await);
    }
    let mut waiting = tokio::spawn(async move {
        let mut stream = connect_from(10, addr).await;
        stream
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    });
    let early = tokio::time::timeout(Duration::from_secs(3), &mut waiting).await;
    assert!(
        early.is_err(),
        "a connection beyond the limit was served at once"
    );
    let answer = waiting.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A slot frees when an idle connection (accepted after `started`) times out.
    let waited = started.elapsed();
    assert!(
        waited >= HEADER_TIMEOUT - Duration::from_secs(1),
        "served after {waited:?}, before the idle connections timed out"
    );
    // Every idle one is cut off too (one may have been accepted late: the slow-header check
    // holds a slot of this listener as well).
    for mut stream in idle {
        until_closed(&mut stream, HEADER_TIMEOUT + Duration::from_secs(5)).await;
    }
}

/// A connection to `addr` from the loopback address 127.0.0.`host`.
async fn connect_from(host: u8, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, host], 0).into()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// 32 connections of one client are served; its 33rd is closed at once, while another client
/// is still served.
async fn one_client_holds_its_share_only(addr: SocketAddr) {
    let mut held = Vec::with_capacity(MAX_PER_CLIENT);
    for _ in 0..MAX_PER_CLIENT {
        held.push(connect_from(20, addr).await);
    }
    let mut extra = connect_from(20, addr).await;
    until_closed(&mut extra, Duration::from_secs(5)).await;
    let mut last = held.pop().unwrap();
    last.write_all(b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    last.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let other = http::get(addr, "/api/overview").await;
    assert_eq!(other.status, 200, "another client is served");
}
