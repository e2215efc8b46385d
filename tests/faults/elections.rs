//! The part of heal-to-convergence that JetStream itself spends: from the last heal until every
//! stream and every node's durable consumer has a leader again (their elections run on timings
//! compiled into nats-server). Asked of each stream's leader through one node's server.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use harmonylite::config::Config;
use harmonylite::ids::ShardId;

/// Starts measuring in a thread: `join` gives the time from `healed` until every leader is back,
/// or `None` if that did not happen within `deadline`.
pub fn measure(
    url: String,
    shards: u32,
    nodes: usize,
    healed: Instant,
    deadline: Duration,
) -> JoinHandle<Option<Duration>> {
    std::thread::spawn(move || {
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
