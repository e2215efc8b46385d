//! Moving changes through JetStream: wire format, shard hash, publisher, consumers, seq map.
