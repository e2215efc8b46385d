//! The part of heal-to-convergence that JetStream itself spends: from the last heal until every
//! stream and every node's durable consumer has a leader again, as **every** node's server sees
//! it (their elections, and a server's return to the cluster's metadata group, run on timings
//! compiled into nats-server). A server that was cut off answers `JetStream system temporarily
//! unavailable` until it has rejoined that group (about 10 s after a partition healed in seed 38
//! on a4d66fa, while the others' leaders never moved), and its node can receive nothing
//! meanwhile; asked through one node's server only, as before, that part went unreported.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use harmonylite::config::Config;
use harmonylite::ids::ShardId;

/// Measurements under way, one per node's server.
pub struct Measures(Vec<JoinHandle<Option<Duration>>>);

/// Starts measuring through each of `urls` (every node's server), each in a thread.
pub fn measure(
    urls: Vec<String>,
    shards: u32,
    nodes: usize,
    healed: Instant,
    deadline: Duration,
) -> Measures {
    Measures(
        urls.into_iter()
            .map(|url| std::thread::spawn(move || through(url, shards, nodes, healed, deadline)))
            .collect(),
    )
}

impl Measures {
    /// The time from the heal until every server saw every leader back: the slowest server's,
    /// or `None` if one did not within the deadline (or there was no server to ask).
    pub fn slowest(self) -> Option<Duration> {
        let took: Option<Vec<Duration>> = self
            .0
            .into_iter()
            .map(|m| m.join().ok().flatten())
            .collect();
        took?.into_iter().max()
    }
}

/// The time from `healed` until every leader is back as the server at `url` sees it, or `None`
/// if that did not happen within `deadline`.
fn through(
    url: String,
    shards: u32,
    nodes: usize,
    healed: Instant,
    deadline: Duration,
) -> Option<Duration> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let client = async_nats::connect(url).await.ok()?;
        let js = async_nats::jetstream::new(client);
        while healed.elapsed() < deadline {
            if all_led(&js, shards, nodes).await {
                return Some(healed.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    })
}

/// Whether every shard's stream and each node's durable consumer on it report a leader.
async fn all_led(js: &async_nats::jetstream::Context, shards: u32, nodes: usize) -> bool {
    let cfg = Config::default();
    for n in 0..shards {
        let Ok(mut stream) = js.get_stream(cfg.stream_name(ShardId(n))).await else {
            return false;
        };
        let led = |c: Option<async_nats::jetstream::stream::ClusterInfo>| {
            c.and_then(|c| c.leader).is_some()
        };
        match stream.info().await {
            Ok(info) if led(info.cluster.clone()) => {}
            _ => return false,
        }
        for id in 1..=nodes {
            let durable = format!("harmonylite-node-{id}");
            match stream.consumer_info(&durable).await {
                Ok(info) if led(info.cluster.clone()) => {}
                _ => return false,
            }
        }
    }
    true
}
