//! Chunk reassembly on the consumer side: the JetStream messages of a chunked payload are held
//! until their set is complete (`replication::chunk` does the byte work), then applied and
//! acked together. Sets that stay incomplete too long are terminated and counted as malformed.

use std::collections::HashMap;

use async_nats::jetstream;
use tracing::warn;

use super::apply::terminate;
use crate::replication::chunk;

/// Chunks of oversized messages held until their set is complete; acked with it.
#[derive(Default)]
pub(super) struct ChunkSets {
    reassembly: chunk::Reassembly,
    held: HashMap<String, Vec<jetstream::Message>>,
}

/// What became of one message handed to `ChunkSets::take`.
pub(super) enum Chunked {
    NotAChunk(Box<jetstream::Message>),
    Held,
    Complete {
        payload: Vec<u8>,
        messages: Vec<jetstream::Message>,
    },
    Rejected {
        reason: &'static str,
        messages: Vec<jetstream::Message>,
    },
}

impl ChunkSets {
    /// Every chunk held for an incomplete set; the sets are forgotten.
    pub(super) fn drain(&mut self) -> Vec<jetstream::Message> {
        self.reassembly = chunk::Reassembly::default();
        self.held.drain().flat_map(|(_, m)| m).collect()
    }

    /// Routes a message: ordinary messages pass through; chunks are held until their set is
    /// complete. Sets that stay incomplete too long are terminated and counted as malformed.
    pub(super) async fn take(&mut self, msg: jetstream::Message) -> anyhow::Result<Chunked> {
        let now = std::time::Instant::now();
        for stale in self.reassembly.expire(now) {
            let messages = self.held.remove(&stale).unwrap_or_default();
            warn!(chunk_set = %stale, "dropping an incomplete chunked message");
            terminate(&messages).await?;
        }
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let (Some(id), Some(position)) =
            (header(chunk::CHUNK_ID_HEADER), header(chunk::CHUNK_HEADER))
        else {
            return Ok(Chunked::NotAChunk(Box::new(msg)));
        };
        let Some((index, total)) = chunk::parse_header(&position) else {
            return Ok(Chunked::Rejected {
                reason: "bad chunk header",
                messages: vec![msg],
            });
        };
        Ok(
            match self.reassembly.add(&id, index, total, &msg.payload, now) {
                chunk::Added::Pending => {
                    self.held.entry(id).or_default().push(msg);
                    Chunked::Held
                }
                chunk::Added::Complete(payload) => {
                    let mut messages = self.held.remove(&id).unwrap_or_default();
                    messages.push(msg);
                    Chunked::Complete { payload, messages }
                }
                chunk::Added::Rejected(reason) => Chunked::Rejected {
                    reason,
                    messages: vec![msg],
                },
            },
        )
    }
}
