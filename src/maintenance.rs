//! Maintenance of a running node: requests that change its stream positions or its held
//! changes, carried out by the node's supervisor with the replication engine stopped around
//! them (`node`). The dashboard and the recovery task ask through a `MaintenanceHandle`.

use tokio::sync::{mpsc, oneshot};

use crate::db::restore::RestoreReport;
use crate::snapshot::restore::Fetched;

/// What the supervisor does with the engine stopped.
// Rare messages on a short channel: a restore's manifest inline costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Maintenance {
    /// Installs a fetched snapshot: merged into a database that holds data, unless the
    /// operator forces a replace (`-force-restore`).
    Restore {
        fetched: Fetched,
        force: bool,
        reply: oneshot::Sender<Result<RestoreReport, String>>,
    },
    /// Gives up every open gap, and starts replicating a new database without a snapshot;
    /// `how` is recorded with each.
    Accept {
        how: String,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// Starts the consumers held back for a new database: there was nothing to restore.
    StartConsumers,
    /// Applies or discards a quarantined change.
    Quarantine {
        id: i64,
        apply: bool,
        reply: oneshot::Sender<Result<bool, String>>,
    },
}

/// Asks the node for maintenance (the dashboard's actions, the recovery task).
#[derive(Clone)]
pub struct MaintenanceHandle {
    tx: mpsc::Sender<Maintenance>,
}

impl MaintenanceHandle {
    /// A handle and the receiver the supervisor serves.
    pub fn channel() -> (MaintenanceHandle, mpsc::Receiver<Maintenance>) {
        let (tx, rx) = mpsc::channel(8);
        (MaintenanceHandle { tx }, rx)
    }

    /// Accepts the open gaps on an operator's decision; returns how many.
    pub async fn accept_gaps(&self, how: &str) -> Result<usize, String> {
        let (reply, rx) = oneshot::channel();
        let how = how.to_owned();
        self.send(Maintenance::Accept { how, reply }).await?;
        rx.await.map_err(|_| "the node is stopping".to_owned())?
    }

    /// Applies (`apply`) or discards quarantined change `id`; false when there is none.
    pub async fn release_quarantined(&self, id: i64, apply: bool) -> Result<bool, String> {
        let (reply, rx) = oneshot::channel();
        self.send(Maintenance::Quarantine { id, apply, reply })
            .await?;
        rx.await.map_err(|_| "the node is stopping".to_owned())?
    }

    pub async fn send(&self, m: Maintenance) -> Result<(), String> {
        self.tx
            .send(m)
            .await
            .map_err(|_| "the node is stopping".to_owned())
    }
}
