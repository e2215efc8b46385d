//! JetStream objects: one stream per shard, created at start, updated when asked to.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use tracing::{info, warn};

use super::NatsError;
use crate::config::Config;
use crate::ids::ShardId;
use crate::retry::Backoff;

/// How long we wait for JetStream to accept stream creation (a cluster may still be electing
/// its meta leader).
const STREAM_SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Wait between attempts while JetStream is not ready yet.
const STREAM_RETRY: Duration = Duration::from_millis(500);

/// The stream configuration a shard should have.
pub fn stream_config(cfg: &Config, shard: ShardId) -> stream::Config {
    stream::Config {
        name: cfg.stream_name(shard),
        subjects: vec![cfg.subject(shard)],
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas(),
        max_messages: cfg.replication_log.max_entries,
        discard: stream::DiscardPolicy::Old,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// Creates missing shard streams; updates mismatched ones when `update_existing` is set, warns
/// otherwise. Retries while JetStream is not ready yet.
pub async fn ensure_streams(js: &jetstream::Context, cfg: &Config) -> Result<(), NatsError> {
    for n in 0..cfg.replication_log.shards {
        let want = stream_config(cfg, ShardId(n));
        let deadline = Instant::now() + STREAM_SETUP_TIMEOUT;
        let mut backoff = Backoff::new(STREAM_RETRY, STREAM_RETRY);
        loop {
            match ensure_stream(js, cfg, &want).await {
                Ok(()) => break,
                Err(error) if Instant::now() < deadline => {
                    warn!(stream = %want.name, %error, "stream not ready yet, retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(error) => {
                    return Err(NatsError::Stream {
                        stream: want.name.clone(),
                        reason: error,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Gets shard `shard`'s stream, creating it when missing (deleted while the node runs: a lost
/// JetStream store, an operator's `nats stream rm`); the node reads it from its start then.
pub async fn shard_stream(
    js: &jetstream::Context,
    cfg: &Config,
    shard: ShardId,
) -> Result<stream::Stream, NatsError> {
    let name = cfg.stream_name(shard);
    if let Ok(found) = js.get_stream(&name).await {
        return Ok(found);
    }
    let stream_err = |reason: String| NatsError::Stream {
        stream: name.clone(),
        reason,
    };
    ensure_stream(js, cfg, &stream_config(cfg, shard))
        .await
        .map_err(stream_err)?;
    js.get_stream(&name)
        .await
        .map_err(|e| stream_err(e.to_string()))
}

async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &Config,
    want: &stream::Config,
) -> Result<(), String> {
    match js.get_stream(&want.name).await {
        Ok(mut existing) => {
            let have = existing
                .info()
                .await
                .map_err(|e| e.to_string())?
                .config
                .clone();
            let differs = have.subjects != want.subjects
                || have.num_replicas != want.num_replicas
                || have.max_messages != want.max_messages;
            if differs && cfg.replication_log.update_existing {
                js.update_stream(want.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                info!(stream = %want.name, "stream updated to match the config");
            } else if differs {
                warn!(
                    stream = %want.name,
                    have_replicas = have.num_replicas,
                    want_replicas = want.num_replicas,
                    have_max_entries = have.max_messages,
                    want_max_entries = want.max_messages,
                    "stream differs from the config; set replication_log.update_existing = true to update it"
                );
            }
            Ok(())
        }
        Err(_) => {
            js.create_stream(want.clone())
                .await
                .map_err(|e| e.to_string())?;
            info!(stream = %want.name, replicas = want.num_replicas, "stream created");
            Ok(())
        }
    }
}
