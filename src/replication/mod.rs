//! Moving changes through JetStream: wire format, shard hash, chunking, publisher, consumers,
//! sequence map mirror.
pub mod chunk;
pub mod consumer;
pub mod go_format;
pub mod own_seqs;
pub mod publisher;
pub mod seq_map;
pub mod shard;
pub mod wire;
