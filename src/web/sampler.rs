//! The sampler task: every `SAMPLE_EVERY` it asks JetStream for each shard's consumer state
//! (per-shard lag into `NodeStatus`), notes whether JetStream answered at all (a frozen server
//! keeps the TCP connection open), counts new conflict journal entries per table into the
//! metrics and the quarantined changes into `NodeStatus` (after applies, else once a minute),
//! lets the dashboard connection's schema go when idle, and keeps the last `KEEP_SAMPLES`
//! throughput and lag samples for the dashboard chart.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::WebState;
use crate::config::Config;
use crate::hlc::now_ms;
use crate::ids::{NodeId, ShardId};
use crate::metrics::ShardLag;

pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// The conflict journal and the quarantine are read at least this often, and after applies.
const JOURNAL_EVERY: Duration = Duration::from_secs(60);
/// The dashboard's connection lets its parsed schema go after this long unused.
const RELEASE_IDLE_DB: Duration = Duration::from_secs(10);
/// Ten minutes of samples.
pub const KEEP_SAMPLES: usize = 300;
/// A JetStream request slower than this counts as no answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One point of the dashboard chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    pub at_ms: u64,
    /// Row changes published per second since the previous sample.
    pub published_per_s: f64,
    /// Remote row changes applied per second since the previous sample.
    pub applied_per_s: f64,
    /// Unapplied messages over every shard.
    pub lag_messages: u64,
    /// Oldest unapplied message over every shard.
    pub lag_seconds: f64,
}

/// The samples kept in memory.
#[derive(Debug, Default)]
pub struct Samples(Mutex<VecDeque<Sample>>);

impl Samples {
    pub fn push(&self, sample: Sample) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == KEEP_SAMPLES {
            q.pop_front();
        }
        q.push_back(sample);
    }

    pub fn snapshot(&self) -> Vec<Sample> {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().copied().collect()
    }
}

/// Durable consumer name of a node (as `replication::consumer` creates it).
pub fn durable_name(node: NodeId) -> String {
    format!("harmonylite-node-{node}")
}

/// Task body: sample until cancelled. Failures are logged and retried at the next tick.
pub async fn run(state: WebState, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_conflict: Option<i64> = None;
    let mut previous: Option<(Instant, u64, u64)> = None;
    let mut was_responsive = true;
    let mut journal_read: Option<(Instant, u64)> = None;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let status = state.status().clone();
        let before = status.shard_lag();
        let (lags, responsive) = probe(&state.0.js, state.cfg(), status.node_id, &before).await;
        status.nats_responsive.store(responsive, Ordering::Relaxed);
        if responsive != was_responsive {
            if responsive {
                warn!("JetStream answers again");
            } else {
                warn!("JetStream does not answer; reporting NATS as not connected");
            }
            was_responsive = responsive;
        }
        if let Some(lags) = lags {
            status.set_shard_lag(lags);
        }
        // The journal and the quarantine grow only through applies (and repairs, counted as
        // applies) and restores (which count what they hold as quarantined); reading them parses the schema into the dashboard's connection, so an idle
        // node reads them once a minute and otherwise lets that connection's schema go.
        let m = state.metrics();
        let applies = m.applied_changes.get() + m.quarantined_changes.get();
        if journal_read.is_none_or(|(at, seen)| seen != applies || at.elapsed() >= JOURNAL_EVERY) {
            let counted = count_conflicts(&state, last_conflict).await;
            if let Ok((_, held)) = state.db(|r| r.quarantined(0)).await {
                status.set_quarantine_held(held);
            }
            // A read that failed is tried again at the next tick, not after the next apply.
            if let Some(last) = counted {
                last_conflict = Some(last);
                journal_read = Some((Instant::now(), applies));
            }
        }
        state.release_idle_db(RELEASE_IDLE_DB).await;

        let now = Instant::now();
        let published = state.metrics().published_changes.get();
        let m = state.metrics();
        let applied = m.applied_changes.get() + m.quarantined_changes.get();
        if let Some((then, p0, a0)) = previous {
            let secs = now.duration_since(then).as_secs_f64().max(0.001);
            let lag = status.shard_lag();
            state.0.samples.push(Sample {
                at_ms: now_ms(),
                published_per_s: published.saturating_sub(p0) as f64 / secs,
                applied_per_s: applied.saturating_sub(a0) as f64 / secs,
                lag_messages: lag.iter().map(|l| l.messages).sum(),
                lag_seconds: lag.iter().map(|l| l.seconds).fold(0.0, f64::max),
            });
        }
        previous = Some((now, published, applied));
    }
}

/// Per-shard lag (None when this node does not replicate) and whether JetStream answered.
async fn probe(
    js: &jetstream::Context,
    cfg: &Config,
    node: NodeId,
    before: &[ShardLag],
) -> (Option<Vec<ShardLag>>, bool) {
    if !cfg.replicate {
        let answered = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, js.query_account()).await,
            Ok(Ok(_))
        );
        return (None, answered);
    }
    let durable = durable_name(node);
    let mut lags = Vec::new();
    let mut answered = true;
    for n in 0..cfg.replication_log.shards {
        let stream = cfg.stream_name(ShardId(n));
        match tokio::time::timeout(PROBE_TIMEOUT, shard_lag(js, &stream, &durable, n)).await {
            Ok(Ok(lag)) => lags.push(lag),
            Ok(Err(error)) => {
                // JetStream answered (the consumer may be being recreated): keep the last value.
                debug!(%stream, error = %format!("{error:#}"), "cannot read consumer state");
                if let Some(old) = before.iter().find(|l| l.shard == n) {
                    lags.push(old.clone());
                }
            }
            Err(_) => {
                answered = false;
                break;
            }
        }
    }
    (answered.then_some(lags), answered)
}

/// Unapplied messages of this node's consumer, and the age of the oldest.
async fn shard_lag(
    js: &jetstream::Context,
    stream_name: &str,
    durable: &str,
    shard: u32,
) -> anyhow::Result<ShardLag> {
    let stream = js.get_stream_no_info(stream_name).await?;
    let info: consumer::Info = stream.consumer_info(durable).await?;
    let messages = info.num_pending + info.num_ack_pending as u64;
    let mut seconds = 0.0;
    if messages > 0 {
        let oldest = info.ack_floor.stream_sequence + 1;
        // The oldest unapplied message may be gone (trimmed); then its age is unknown, not 0.
        if let Ok(msg) = stream.get_raw_message(oldest).await {
            let stored_ms = (msg.time.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
            seconds = now_ms().saturating_sub(stored_ms) as f64 / 1000.0;
        }
    }
    Ok(ShardLag {
        shard,
        messages,
        seconds,
    })
}

/// Adds conflict journal entries newer than `after` to the metrics; returns the new position,
/// or `None` when the journal could not be read.
async fn count_conflicts(state: &WebState, after: Option<i64>) -> Option<i64> {
    match state.db(move |r| r.new_conflicts(after)).await {
        Ok(new) => {
            for (table, kind, n) in &new.counts {
                state.metrics().count_conflicts(table.as_deref(), kind, *n);
            }
            Some(new.last_id)
        }
        Err(error) => {
            debug!(error = %error.describe(), "cannot read the conflict journal");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_samples() {
        let samples = Samples::default();
        for i in 0..(KEEP_SAMPLES as u64 + 5) {
            samples.push(Sample {
                at_ms: i,
                published_per_s: 0.0,
                applied_per_s: 0.0,
                lag_messages: 0,
                lag_seconds: 0.0,
            });
        }
        let kept = samples.snapshot();
        assert_eq!(kept.len(), KEEP_SAMPLES);
        assert_eq!(kept[0].at_ms, 5);
    }
}
