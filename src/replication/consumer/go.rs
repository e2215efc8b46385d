//! Decoding one message by the stream it came from: ours carry change batches; with
//! `replication_log.go_compat` the Go peer's streams carry one Go change per message.
//!
//! A Go change gets the version of its arrival in the cluster: the time JetStream stored it
//! (`ms << 16`, the low bits from the stream sequence), so every Rust node gives one Go change
//! the same version and last-writer-wins agrees across them; the Go peer offers no version of
//! its own. Two kinds of Go-format messages are not applied: copies our nodes publish for the
//! Go peers (header `Harmonylite-Go-Copy`; the change reaches us natively with its real version).
//! Changes under this node's own id (written by the Go node this one replaced, on this very
//! database) are applied like any: the database holds their values, but with the lowest
//! (baseline) versions, which any older change of ours would beat. Applied, they look local and
//! go out natively (the version every Rust node gave them anyway); the publisher sends no Go
//! copy of them (`NodeStatus::go_own_replayed`): the Go peers had them first and may have moved
//! on since.

use async_nats::jetstream;

use super::ShardConsumer;
use crate::change::{ChangeBatch, limits};
use crate::error::Chain;
use crate::hlc::Hlc;
use crate::ids::{Lane, NodeId};
use crate::replication::{go_format, wire};

/// What one message's payload comes to.
pub(super) enum Decoded {
    /// A batch and its decoded size (`wire::decode_sized`).
    Batch(ChangeBatch, usize),
    /// Nothing to apply here; the message is done.
    Done,
    Malformed(String),
    /// A Go HarmonyLite message on one of our streams.
    Foreign(NodeId),
}

impl ShardConsumer {
    /// Decodes `payload` (of `msg`, its first or only message) as this lane's streams carry it.
    /// The payload is taken: `wire::decode_sized` lets a compressed one go once decompressed.
    pub(super) fn decode(&self, payload: bytes::Bytes, msg: &jetstream::Message) -> Decoded {
        match self.lane {
            Lane::Native(_) => {
                // A Go message (a CBOR map, or a zstd frame of one) never begins with our magic,
                // so only a message without it is asked whether it is one.
                if !wire::has_magic(&payload)
                    && let Some(from) = go_format::recognise(&payload)
                {
                    return Decoded::Foreign(from);
                }
                match wire::decode_sized(payload) {
                    Ok((batch, size)) => Decoded::Batch(batch, size),
                    Err(error) => Decoded::Malformed(Chain(&error).to_string()),
                }
            }
            Lane::Go(_) => self.decode_go(&payload, msg),
        }
    }

    fn decode_go(&self, payload: &[u8], msg: &jetstream::Message) -> Decoded {
        let copy = msg
            .headers
            .as_ref()
            .is_some_and(|h| h.get(go_format::COPY_HEADER).is_some());
        if copy {
            return Decoded::Done;
        }
        let (change, cbor_len) = match go_format::decode_sized(payload) {
            Ok(decoded) => decoded,
            Err(error) => return Decoded::Malformed(Chain(&error).to_string()),
        };
        let Ok(info) = msg.info() else {
            return Decoded::Malformed("no JetStream metadata".to_owned());
        };
        let ms = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        // The low 16 bits of the sequence: within one millisecond, later on the stream is newer.
        let version = Hlc::from_parts(ms, (info.stream_sequence & 0xffff) as u16);
        if change.from_node == self.status.node_id {
            self.status
                .go_own_replayed
                .fetch_max(version.0, std::sync::atomic::Ordering::Relaxed);
        }
        self.metrics.go_format_applied.inc();
        let batch = go_format::to_batch(change, version);
        // One row: its structures cost little to count, and count like ours.
        let size = cbor_len + limits::cost(&batch).unwrap_or(0);
        Decoded::Batch(batch, size)
    }
}
