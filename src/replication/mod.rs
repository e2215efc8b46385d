//! Moving changes through JetStream: wire format, shard hash, chunking, publisher, consumers,
//! sequence map.
pub mod chunk;
pub mod consumer;
pub mod own_seqs;
pub mod publisher;
pub mod seq_map;
pub mod shard;
pub mod wire;

pub use consumer::GapDetected;

/// Why the replication engine (the publisher and the consumers) stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum EngineStop {
    /// A shard's stream was trimmed past this node's position: the node must restore a
    /// snapshot, then restart the engine.
    #[error(transparent)]
    Gap(#[from] GapDetected),
    /// Anything else ends the node.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}
