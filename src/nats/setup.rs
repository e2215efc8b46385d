//! JetStream objects: one stream per shard, created at start, updated when asked to; with
//! `replication_log.go_compat`, also the Go peer's shard streams (created as the Go peer creates
//! them when missing, never updated: they are the Go nodes').

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
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
/// While a setup request has no answer, it is sent again this often. A request sent before the
/// cluster has a meta leader, or before a stream or bucket has elected its leader, gets no answer
/// at all; waiting the client's 10 s request timeout for it was most of a new cluster's start
/// (issue 18: 10.4 s to ready with `replicas = 3`), and on a whole-cluster restart a request sent
/// just before an election ended held the node back seconds after it.
const RESEND: Duration = Duration::from_millis(750);
/// How long each send waits for its answer: a slow answer to an early send still counts.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Sends of one request while none is answered (their waits overlap): about 10 s of resending.
const MAX_SENDS: usize = 14;

/// Runs a setup request (`attempt` with a JetStream context; the streams, the registry bucket,
/// the node id claim, a consumer's stream) and sends it again every `RESEND` while no send has
/// had an answer; the first answer, an error included, is the result. An error that took the
/// whole `ANSWER_TIMEOUT` is a timeout, not an answer: the sends after it may still be answered.
/// Every request sent this way must be harmless to repeat: reading, or creating what the last
/// one created with the same configuration, or claiming the node id for this same instance.
pub async fn first_answer<T, E, F, Fut>(js: &jetstream::Context, mut attempt: F) -> Result<T, E>
where
    F: FnMut(jetstream::Context) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut js = js.clone();
    js.set_timeout(ANSWER_TIMEOUT);
    let sends = Sends {
        every: RESEND,
        timeout: ANSWER_TIMEOUT,
        most: MAX_SENDS,
    };
    sends.first_answer(|| attempt(js.clone())).await
}

/// How `first_answer` sends: every `every` while none was answered, at most `most` times,
/// each waiting `timeout` (the request's own timeout) for its answer.
struct Sends {
    every: Duration,
    timeout: Duration,
    most: usize,
}

impl Sends {
    async fn first_answer<T, E, Fut>(&self, mut send: impl FnMut() -> Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let timed = |request: Fut| async move {
            let sent = tokio::time::Instant::now();
            (request.await, sent.elapsed())
        };
        let mut pending = FuturesUnordered::new();
        pending.push(timed(send()));
        let mut sends = 1;
        let mut resend =
            tokio::time::interval_at(tokio::time::Instant::now() + self.every, self.every);
        loop {
            tokio::select! {
                Some((result, took)) = pending.next() => match result {
                    Ok(value) => return Ok(value),
                    Err(error) if took < self.timeout || pending.is_empty() => return Err(error),
                    Err(_) => {}
                },
                _ = resend.tick(), if sends < self.most => {
                    pending.push(timed(send()));
                    sends += 1;
                }
            }
        }
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
        let want = &stream_config(cfg, lane);
        let deadline = Instant::now() + STREAM_SETUP_TIMEOUT;
        let mut backoff = Backoff::new(STREAM_RETRY, STREAM_RETRY);
        loop {
            match first_answer(
                js,
                |js| async move { ensure_stream(&js, cfg, lane, want).await },
            )
            .await
            {
                Ok(()) => break,
                Err(error) if is_subject_overlap(&error) => {
                    return Err(NatsError::Stream {
                        stream: want.name.clone(),
                        reason: overlap_reason(js, want, &error).await,
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
        Ok(existing) => {
            let have = existing.cached_info().config.clone();
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
        // A timeout is not "missing": the stream's leader may be elected still.
        Err(error) if !is_not_found(&error) => Err(error.to_string()),
        Err(_) => {
            js.create_stream(want.clone())
                .await
                .map_err(|e| e.to_string())?;
            info!(stream = %want.name, replicas = want.num_replicas, "stream created");
            Ok(())
        }
    }
}

/// JetStream answered that the stream does not exist.
fn is_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    const SENDS: Sends = Sends {
        every: Duration::from_millis(750),
        timeout: Duration::from_secs(10),
        most: 14,
    };

    /// A server that answers nothing sent before `answers_from` (those time out), and answers
    /// at once with `answer` after; records when each send went out.
    async fn server(
        start: tokio::time::Instant,
        answers_from: Duration,
        answer: Result<u32, &'static str>,
        sent: &Mutex<Vec<Duration>>,
    ) -> Result<u32, &'static str> {
        let at = start.elapsed();
        sent.lock().unwrap().push(at);
        if at < answers_from {
            tokio::time::sleep(SENDS.timeout).await;
            return Err("timed out");
        }
        answer
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_after_the_election_is_answered_without_waiting_out_the_earlier_ones() {
        let start = tokio::time::Instant::now();
        let sent = Mutex::new(Vec::new());
        let elected = Duration::from_millis(5300);
        let result = SENDS
            .first_answer(|| server(start, elected, Ok(7), &sent))
            .await;
        assert_eq!(result, Ok(7));
        // The first send after the election, not the first send's timeout (10 s).
        assert_eq!(start.elapsed(), Duration::from_millis(6000));
        assert_eq!(sent.lock().unwrap().len(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_answered_is_the_result_at_once() {
        let start = tokio::time::Instant::now();
        let sent = Mutex::new(Vec::new());
        let result = SENDS
            .first_answer(|| server(start, Duration::ZERO, Err("no suitable peers"), &sent))
            .await;
        assert_eq!(result, Err("no suitable peers"));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(sent.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_answering_ends_in_the_timeout_after_the_last_send() {
        let start = tokio::time::Instant::now();
        let sent = Mutex::new(Vec::new());
        let result = SENDS
            .first_answer(|| server(start, Duration::MAX, Ok(1), &sent))
            .await;
        assert_eq!(result, Err("timed out"));
        assert_eq!(sent.lock().unwrap().len(), SENDS.most);
        let last_send = SENDS.every * (SENDS.most as u32 - 1);
        assert_eq!(start.elapsed(), last_send + SENDS.timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_to_an_early_send_still_counts() {
        let start = tokio::time::Instant::now();
        let sends = std::sync::atomic::AtomicUsize::new(0);
        let result: Result<u32, &str> = SENDS
            .first_answer(|| {
                let n = sends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    if n == 0 {
                        // Answered after 8 s: a loaded server, not a missing leader.
                        tokio::time::sleep(Duration::from_secs(8)).await;
                        Ok(1)
                    } else {
                        tokio::time::sleep(SENDS.timeout).await;
                        Err("timed out")
                    }
                }
            })
            .await;
        assert_eq!(result, Ok(1));
        assert_eq!(start.elapsed(), Duration::from_secs(8));
    }
}
