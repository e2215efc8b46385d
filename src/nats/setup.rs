//! JetStream objects: one stream per shard, created at start, updated when asked to; with
//! `replication_log.go_compat`, also the Go peer's shard streams (created as the Go peer creates
//! them when missing, never updated: they are the Go nodes').

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use tracing::{info, warn};

use super::NatsError;
use crate::config::Config;
use crate::ids::Lane;
use crate::retry::Backoff;

/// How long we wait for JetStream to accept stream creation (a cluster may still be electing
/// its meta leader).
const STREAM_SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Wait between attempts while JetStream is not ready yet.
const STREAM_RETRY: Duration = Duration::from_millis(500);
/// How long the first attempt waits for JetStream's answer; it doubles with every retry, up to
/// `LAST_ATTEMPT_TIMEOUT`. A request sent before the cluster has a meta leader, or before a new
/// stream or bucket has elected its leader, gets no answer at all, and waiting the client's 10 s
/// request timeout for it was most of a new cluster's start (issue 18: 10.4 s to ready with
/// `replicas = 3`). Creating a stream or bucket again is harmless: the retry finds it, or
/// creates it with the same configuration.
const FIRST_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(750);
const LAST_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// JetStream contexts for the successive attempts of a setup request (streams, the registry
/// bucket, the node id claim, a consumer's setup): the first waits `FIRST_ATTEMPT_TIMEOUT` for
/// an answer, each next one twice as long, up to `LAST_ATTEMPT_TIMEOUT`.
pub struct Attempts {
    js: jetstream::Context,
    timeout: Duration,
}

impl Attempts {
    pub fn new(js: &jetstream::Context) -> Attempts {
        Attempts {
            js: js.clone(),
            timeout: FIRST_ATTEMPT_TIMEOUT,
        }
    }

    /// The context for the next attempt.
    pub fn next_context(&mut self) -> jetstream::Context {
        let mut js = self.js.clone();
        js.set_timeout(self.timeout);
        self.timeout = (self.timeout * 2).min(LAST_ATTEMPT_TIMEOUT);
        js
    }
}

/// The stream configuration a lane should have. A Go peer's stream is created with the settings
/// the Go peer gives it (deny delete, direct get, the server's duplicate window), so a Go node
/// with `update_existing` finds nothing to change.
pub fn stream_config(cfg: &Config, lane: Lane) -> stream::Config {
    let base = stream::Config {
        name: cfg.lane_stream(lane),
        subjects: vec![cfg.lane_subject(lane)],
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas(),
        max_messages: cfg.replication_log.max_entries,
        discard: stream::DiscardPolicy::Old,
        retention: stream::RetentionPolicy::Limits,
        ..Default::default()
    };
    match lane {
        Lane::Native(_) => stream::Config {
            duplicate_window: Duration::from_secs(120),
            ..base
        },
        Lane::Go(_) => stream::Config {
            deny_delete: true,
            allow_direct: true,
            max_consumers: -1,
            max_messages_per_subject: -1,
            ..base
        },
    }
}

/// Creates missing streams; updates mismatched shard streams when `update_existing` is set,
/// warns otherwise. Retries while JetStream is not ready yet.
pub async fn ensure_streams(js: &jetstream::Context, cfg: &Config) -> Result<(), NatsError> {
    for lane in cfg.lanes() {
        let want = stream_config(cfg, lane);
        let deadline = Instant::now() + STREAM_SETUP_TIMEOUT;
        let mut backoff = Backoff::new(STREAM_RETRY, STREAM_RETRY);
        let mut attempts = Attempts::new(js);
        loop {
            match ensure_stream(&attempts.next_context(), cfg, lane, &want).await {
                Ok(()) => break,
                Err(error) if is_subject_overlap(&error) => {
                    return Err(NatsError::Stream {
                        stream: want.name.clone(),
                        reason: overlap_reason(js, &want, &error).await,
                    });
                }
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

/// Gets a lane's stream, creating it when missing (deleted while the node runs: a lost
/// JetStream store, an operator's `nats stream rm`); the node reads it from its start then.
pub async fn lane_stream(
    js: &jetstream::Context,
    cfg: &Config,
    lane: Lane,
) -> Result<stream::Stream, NatsError> {
    let name = cfg.lane_stream(lane);
    if let Ok(found) = js.get_stream(&name).await {
        return Ok(found);
    }
    let stream_err = |reason: String| NatsError::Stream {
        stream: name.clone(),
        reason,
    };
    ensure_stream(js, cfg, lane, &stream_config(cfg, lane))
        .await
        .map_err(stream_err)?;
    js.get_stream(&name)
        .await
        .map_err(|e| stream_err(e.to_string()))
}

async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &Config,
    lane: Lane,
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
            // The Go peer's streams are its own: a Go node would change them back.
            let ours = matches!(lane, Lane::Native(_));
            if differs && ours && cfg.replication_log.update_existing {
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

/// JetStream refuses a stream whose subjects another stream already takes.
fn is_subject_overlap(error: &str) -> bool {
    error.contains("subjects overlap")
}

/// Names the stream that holds `want`'s subject, and what to do about it: next to a Go
/// HarmonyLite cluster with the same prefixes, its streams take our subjects.
async fn overlap_reason(js: &jetstream::Context, want: &stream::Config, error: &str) -> String {
    let subject = want.subjects.first().cloned().unwrap_or_default();
    let holder = js.stream_by_subject(subject.clone()).await.ok();
    let holder = holder.map_or_else(|| "another stream".to_owned(), |s| format!("stream {s}"));
    format!(
        "{error}: subject {subject} is taken by {holder} (a Go HarmonyLite cluster on the same \
         NATS with the same nats.subject_prefix?); set replication_log.go_compat = true to join \
         it, or give this cluster its own nats.stream_prefix and nats.subject_prefix \
         (docs/migrating-from-go.md)"
    )
}
