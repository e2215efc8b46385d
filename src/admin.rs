//! Commands an operator's `harmonylite` invocation sends to the process that runs the node,
//! instead of starting a second one (`instance`): today `-save-snapshot`.
//!
//! They go over NATS, which a running node always has (its web servers may be off): the node
//! listens on `harmonylite.admin.<node id>.snapshot`, and answers a request on its reply subject
//! with a stream of JSON messages: `accepted`, then `progress` (per phase and tenth) and
//! `working` (every few seconds, so a long copy does not look like silence), then `done` or
//! `failed`. The command reads the same configuration as the node, so it addresses the same
//! node id, with the same NATS credentials.

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::Chain;
use crate::ids::NodeId;
use crate::snapshot::SnapshotHandle;
use crate::snapshot::service::{ProgressFn, by_tenths};

/// How often a node taking a requested snapshot says it is still at it.
const WORKING_EVERY: Duration = Duration::from_secs(5);
/// How long a command waits for the node to accept its request.
const ACCEPT_WITHIN: Duration = Duration::from_secs(10);
/// How long a command waits between two messages before giving up on the node.
const SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// The subject node `node` takes snapshot requests on.
pub fn snapshot_subject(node: NodeId) -> String {
    format!("harmonylite.admin.{node}.snapshot")
}

/// One message of the node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    Accepted,
    Progress {
        phase: String,
        done: u64,
        total: u64,
    },
    Working,
    Done {
        id: String,
        size: u64,
    },
    Failed {
        error: String,
    },
}

/// Errors of a command sent to the running node.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the running node over NATS: {0}")]
    Nats(String),
    #[error(
        "the running node did not answer on {subject} within {}s (is it connected to NATS?)",
        ACCEPT_WITHIN.as_secs()
    )]
    NoAnswer { subject: String },
    #[error("the running node went silent for {}s while taking the snapshot", SILENCE_LIMIT.as_secs())]
    Silent,
    #[error("the running node could not take the snapshot: {0}")]
    Failed(String),
}

/// Node side: answers snapshot requests until cancelled.
pub async fn serve(
    client: async_nats::Client,
    node: NodeId,
    snapshots: SnapshotHandle,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let subject = snapshot_subject(node);
    let mut requests = client.subscribe(subject.clone()).await?;
    info!(%subject, "taking snapshot requests");
    loop {
        let request = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            request = requests.next() => request,
        };
        let Some(request) = request else {
            anyhow::bail!("the subscription to {subject} ended");
        };
        let Some(reply) = request.reply else {
            warn!(%subject, "a snapshot request without a reply subject, ignored");
            continue;
        };
        let answer = answer_snapshot(client.clone(), reply.to_string(), snapshots.clone());
        tokio::spawn(cancel.child_token().run_until_cancelled_owned(answer));
    }
}

/// Takes one snapshot, telling `reply` how it goes.
async fn answer_snapshot(client: async_nats::Client, reply: String, snapshots: SnapshotHandle) {
    info!("snapshot requested by a command");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _ = tx.send(Answer::Accepted);
    let progress_tx = tx.clone();
    let progress: ProgressFn = by_tenths(std::sync::Arc::new(move |phase: &str, done, total| {
        let phase = phase.to_owned();
        let _ = progress_tx.send(Answer::Progress { phase, done, total });
    }));
    let take = async move {
        let last = match snapshots.take_now(Some(progress)).await {
            Ok(m) => Answer::Done {
                id: m.id.to_string(),
                size: m.size,
            },
            Err(e) => Answer::Failed {
                error: format!("{e:#}"),
            },
        };
        let _ = tx.send(last);
    };
    let forward = async {
        let mut working = tokio::time::interval(WORKING_EVERY);
        working.tick().await;
        loop {
            let answer = tokio::select! {
                answer = rx.recv() => answer,
                _ = working.tick() => Some(Answer::Working),
            };
            let Some(answer) = answer else { return };
            let last = matches!(answer, Answer::Done { .. } | Answer::Failed { .. });
            send(&client, &reply, &answer).await;
            if last {
                return;
            }
        }
    };
    tokio::join!(take, forward);
    let _ = client.flush().await;
}

async fn send(client: &async_nats::Client, reply: &str, answer: &Answer) {
    let Ok(json) = serde_json::to_vec(answer) else {
        return;
    };
    if let Err(error) = client.publish(reply.to_owned(), json.into()).await {
        warn!(error = %Chain(&error), "cannot answer a snapshot request");
    }
}

/// Command side: asks node `node` for a snapshot, reports progress, returns the snapshot's id
/// and size.
pub async fn request_snapshot(
    client: &async_nats::Client,
    node: NodeId,
    progress: ProgressFn,
) -> Result<(String, u64), AdminError> {
    let subject = snapshot_subject(node);
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| AdminError::Nats(e.to_string()))?;
    client
        .publish_with_reply(subject.clone(), inbox, "{}".into())
        .await
        .map_err(|e| AdminError::Nats(e.to_string()))?;
    let mut wait = ACCEPT_WITHIN;
    loop {
        let message = match tokio::time::timeout(wait, answers.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => return Err(AdminError::Nats("the reply subscription ended".into())),
            Err(_) if wait == ACCEPT_WITHIN => return Err(AdminError::NoAnswer { subject }),
            Err(_) => return Err(AdminError::Silent),
        };
        wait = SILENCE_LIMIT;
        match serde_json::from_slice::<Answer>(&message.payload) {
            Ok(Answer::Progress { phase, done, total }) => progress(&phase, done, total),
            Ok(Answer::Accepted | Answer::Working) => {}
            Ok(Answer::Done { id, size }) => return Ok((id, size)),
            Ok(Answer::Failed { error }) => return Err(AdminError::Failed(error)),
            Err(e) => return Err(AdminError::Nats(format!("an answer that is not ours: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_tagged_json() {
        let json = serde_json::to_string(&Answer::Progress {
            phase: "upload".into(),
            done: 5,
            total: 10,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"kind":"progress","phase":"upload","done":5,"total":10}"#
        );
        assert_eq!(
            serde_json::from_str::<Answer>(r#"{"kind":"accepted"}"#).unwrap(),
            Answer::Accepted
        );
        assert_eq!(snapshot_subject(NodeId(7)), "harmonylite.admin.7.snapshot");
    }
}
