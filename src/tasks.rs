//! The named task set: every long-running task of a node, with one cancellation token.
//!
//! While the node runs, any task that ends (Ok or Err) is fatal to the node: `next_exit` reports
//! which one. On shutdown, `drain` waits for all tasks up to a deadline and aborts the rest.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// How a task ended.
#[derive(Debug)]
pub struct TaskExit<E = anyhow::Error> {
    pub name: &'static str,
    pub result: Result<(), E>,
}

/// A set of named tasks sharing one root cancellation token. `E` is what a task that stops on
/// its own returns: `anyhow::Error` for most, a typed reason where the caller acts on it.
pub struct Tasks<E = anyhow::Error> {
    cancel: CancellationToken,
    set: JoinSet<TaskExit<E>>,
}

impl<E> Tasks<E>
where
    E: std::fmt::Display + From<anyhow::Error> + Send + 'static,
{
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            cancel,
            set: JoinSet::new(),
        }
    }

    /// A token that is cancelled when the node stops.
    pub fn token(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    /// Spawns a long-running task under a name.
    pub fn spawn<F>(&mut self, name: &'static str, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        // In the caller's span: a process running several nodes (the tests) can tell them apart.
        self.set
            .spawn(tracing::Instrument::in_current_span(async move {
                TaskExit {
                    name,
                    result: fut.await,
                }
            }));
    }

    /// Waits for the first task to end. Pending forever when there is no task.
    pub async fn next_exit(&mut self) -> TaskExit<E> {
        match self.set.join_next().await {
            Some(Ok(exit)) => exit,
            Some(Err(join)) => TaskExit {
                name: "unknown",
                result: Err(E::from(anyhow::anyhow!(join))),
            },
            None => std::future::pending().await,
        }
    }

    /// Cancels every task and waits for them to finish, up to `deadline`; past it, aborts the
    /// rest. Returns false when the deadline was hit.
    pub async fn drain(&mut self, deadline: Duration) -> bool {
        self.cancel.cancel();
        let drained = tokio::time::timeout(deadline, async {
            while let Some(joined) = self.set.join_next().await {
                match joined {
                    Ok(TaskExit { name, result: Err(error) }) => {
                        warn!(task = name, error = %format!("{error:#}"), "task ended with an error during shutdown");
                    }
                    Ok(_) => {}
                    Err(join) if join.is_cancelled() => {}
                    Err(join) => error!(error = %join, "task panicked during shutdown"),
                }
            }
        })
        .await
        .is_ok();
        if !drained {
            error!("shutdown deadline passed, aborting the remaining tasks");
            self.set.abort_all();
            while self.set.join_next().await.is_some() {}
        }
        drained
    }
}
