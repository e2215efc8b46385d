//! The wire format of one JetStream message: a 4-byte header, then a CBOR `ChangeBatch`,
//! optionally zstd-compressed.
//!
//! ```text
//! byte 0..2  magic "HL"
//! byte 2     format version (1)
//! byte 3     flags: bit 0 = the body is one or more zstd frames
//! byte 4..   body: CBOR of ChangeBatch (serde: structs as maps with the one-letter keys of
//!            `crate::change`, enums externally tagged)
//! ```
//!
//! `ciborium` writes the CBOR; `cbor4ii` reads it from the decompressed slice (the same CBOR:
//! any valid encoding decodes). Reading was the largest share of a receiver's async work with
//! `ciborium` (`docs/benchmarks.md`, run E).
//!
//! Decoding never panics: every malformed input maps to a `WireError`, so a consumer can
//! count and skip a bad message instead of stalling its shard.
//!
//! Decoding is bounded in memory however well a message compresses. The CBOR (decompressed, or
//! plain: a chunked plain body is not bounded by the transport) is capped at `MAX_DECODED_BYTES`
//! (256 MiB); the Rust structures built from it are charged
//! against `DECODE_BUDGET_BYTES` (128 MiB, `size_of` per element: 32 bytes a value, 80 a row,
//! 96 a table, 24 a column name), and a row or table holds at most `MAX_COLUMNS` (32767,
//! SQLite's hard column limit) entries. A CBOR value is as small as 2 bytes and becomes a
//! 32-byte `Value` (plus up to 32 bytes of allocator overhead for a short text or blob), so
//! without the budget 256 MiB of CBOR could build 4 GiB and more. With it, one decode holds at
//! most the decompressed buffer, the text and blob bytes copied out of it (both under 256 MiB)
//! and about twice the budget in structures.
//!
//! The budget admits 4 Mi values. The publisher's largest messages by count fit:
//! `scan_max_changes` at its maximum (100 000 rows) of up to 38 columns (120 MiB), and the
//! default 512 rows of tables as wide as SQLite's default `SQLITE_MAX_COLUMN` (2000 columns,
//! 31 MiB). Wider ones (more columns per row, or more rows of wide tables) are over the budget:
//! `encode` refuses what `decode` would refuse (`OverBudget`, `TooManyEntries`,
//! `EncodedTooLarge`, a malformed shape), so the publisher must split such a batch by rows
//! (`encode_within` does; `WireError::is_too_large`). A single row never exceeds the budget (at
//! most 2 × `MAX_COLUMNS` values, 2 MiB); it can exceed `MAX_DECODED_BYTES` with a large text
//! or blob, and then cannot be sent at all.

use std::cell::RefCell;
use std::io::Read;

use crate::change::limits;
use crate::change::{ChangeBatch, DECODE_BUDGET_BYTES};

/// First two bytes of every message.
pub const MAGIC: [u8; 2] = *b"HL";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Header flag: the body is zstd-compressed.
pub const FLAG_ZSTD: u8 = 0b0000_0001;
/// Decompression stops past this many bytes, so a small hostile message cannot exhaust memory.
pub const MAX_DECODED_BYTES: usize = 256 << 20;
const HEADER_LEN: usize = 4;
const ZSTD_LEVEL: i32 = 3;

/// Errors of encoding and decoding messages.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message too short: {len} bytes, header needs {HEADER_LEN}")]
    TooShort { len: usize },
    #[error("bad magic {found:02x?}: not a harmonylite change batch")]
    BadMagic { found: [u8; 2] },
    #[error("unsupported wire format version {version} (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion { version: u8 },
    #[error("unsupported wire flags {flags:#010b}")]
    UnsupportedFlags { flags: u8 },
    #[error("zstd decompression failed")]
    Decompress(#[source] std::io::Error),
    #[error("decompressed message exceeds {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    #[error("zstd compression failed")]
    Compress(#[source] std::io::Error),
    #[error("cbor decoding failed")]
    Cbor(#[source] cbor4ii::serde::DecodeError<std::convert::Infallible>),
    #[error("cbor encoding failed")]
    CborEncode(#[source] ciborium::ser::Error<std::io::Error>),
    #[error("malformed change batch: table {table}: {reason}")]
    Malformed { table: String, reason: String },
    #[error("a single row of table {table} encodes to {bytes} bytes, over the message limit")]
    RowTooLarge { table: String, bytes: usize },
    #[error("change batch exceeds the decode budget of {limit} bytes of values, rows and names")]
    OverBudget { limit: usize },
    #[error("change batch has {what} over the limit of {limit}")]
    TooManyEntries { what: &'static str, limit: usize },
    #[error(
        "change batch encodes to {bytes} bytes of cbor, over the {limit} bytes receivers decode"
    )]
    EncodedTooLarge { bytes: usize, limit: usize },
}

impl WireError {
    /// The batch is refused for its size alone: split by rows, it may encode.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            WireError::OverBudget { .. } | WireError::EncodedTooLarge { .. }
        )
    }
}

impl From<limits::Exceeded> for WireError {
    fn from(why: limits::Exceeded) -> WireError {
        match why {
            limits::Exceeded::Budget { limit } => WireError::OverBudget { limit },
            limits::Exceeded::Entries { what, limit } => WireError::TooManyEntries { what, limit },
        }
    }
}

/// Encodes one message (header + CBOR, zstd-compressed when `compress`). A batch `decode`
/// would refuse is an error, not a message every receiver skips.
pub fn encode(batch: &ChangeBatch, compress: bool) -> Result<Vec<u8>, WireError> {
    encode_with(batch, compress, DECODE_BUDGET_BYTES)
}

/// `encode` for a decoder with `budget` (tests reach the budget with small batches).
fn encode_with(batch: &ChangeBatch, compress: bool, budget: usize) -> Result<Vec<u8>, WireError> {
    frame(cbor_of(batch, budget)?, compress)
}

/// The CBOR of `batch`, refused where a decoder with `budget` would refuse it.
fn cbor_of(batch: &ChangeBatch, budget: usize) -> Result<Vec<u8>, WireError> {
    if limits::cost(batch)? > budget {
        return Err(WireError::OverBudget { limit: budget });
    }
    validate(batch)?;
    // Sized up front: a buffer grown by doubling holds up to twice a big row's bytes.
    let mut cbor = Vec::with_capacity(cbor_len_hint(batch));
    ciborium::into_writer(batch, &mut cbor).map_err(WireError::CborEncode)?;
    // Receivers cap every body, compressed or not: a plain one travels in chunks when it is
    // over the payload limit, so the transport does not bound it.
    if cbor.len() > MAX_DECODED_BYTES {
        return Err(WireError::EncodedTooLarge {
            bytes: cbor.len(),
            limit: MAX_DECODED_BYTES,
        });
    }
    Ok(cbor)
}

/// The message of `cbor`: the header, then the CBOR, zstd-compressed when `compress`.
fn frame(mut cbor: Vec<u8>, compress: bool) -> Result<Vec<u8>, WireError> {
    let flags = if compress { FLAG_ZSTD } else { 0 };
    let header = [MAGIC[0], MAGIC[1], FORMAT_VERSION, flags];
    if !compress {
        // The header goes in front of the CBOR in place (the buffer has the room or grows once).
        cbor.splice(0..0, header);
        return Ok(cbor);
    }
    // Compressed straight behind the header: no second copy of the body.
    let mut out = Vec::with_capacity(HEADER_LEN + zstd::zstd_safe::compress_bound(cbor.len()));
    out.extend_from_slice(&header);
    zstd_compress_into(&cbor, &mut out).map_err(WireError::Compress)?;
    Ok(out)
}

/// About the CBOR size of `batch`: its text and blob bytes plus a little per value, so the
/// encoder's buffer is allocated once.
fn cbor_len_hint(batch: &ChangeBatch) -> usize {
    let values: usize = batch
        .tables
        .iter()
        .flat_map(|t| &t.rows)
        .flat_map(|r| r.values.iter().chain(&r.key))
        .map(|v| v.heap_bytes() + 10)
        .sum();
    256 + values + values / 16
}

/// Decodes and validates one message.
pub fn decode(bytes: &[u8]) -> Result<ChangeBatch, WireError> {
    decode_with(bytes, DECODE_BUDGET_BYTES).map(|(batch, _)| batch)
}

/// `decode`, taking the message's bytes, with the message's decoded size: its CBOR once
/// decompressed plus the structures built from it (the metering's charge). Consumers bound a
/// transaction by this, not by the bytes received, which a well-compressed message makes tiny.
/// A compressed body is let go as soon as it is decompressed, so a big row is held at most
/// twice while it is decoded (the CBOR and the values read out of it), never three times with
/// the compressed copy besides.
pub fn decode_sized(bytes: bytes::Bytes) -> Result<(ChangeBatch, usize), WireError> {
    decode_with(bytes, DECODE_BUDGET_BYTES)
}

/// Decodes `bytes` (owned or borrowed) against `budget`; owned bytes are dropped once the body
/// is decompressed.
fn decode_with<B: AsRef<[u8]>>(bytes: B, budget: usize) -> Result<(ChangeBatch, usize), WireError> {
    let flags = header_flags(bytes.as_ref())?;
    let body = &bytes.as_ref()[HEADER_LEN..];
    if flags & FLAG_ZSTD == 0 {
        return decode_body(body, budget);
    }
    let plain = zstd_decompress(body).map_err(WireError::Decompress)?;
    drop(bytes);
    decode_body(&plain, budget)
}

/// Whether `bytes` begins with the magic of this format (what it says nothing else does).
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// The flags of a message whose header this build reads.
fn header_flags(bytes: &[u8]) -> Result<u8, WireError> {
    if bytes.len() < HEADER_LEN {
        return Err(WireError::TooShort { len: bytes.len() });
    }
    if bytes[0..2] != MAGIC {
        return Err(WireError::BadMagic {
            found: [bytes[0], bytes[1]],
        });
    }
    if bytes[2] != FORMAT_VERSION {
        return Err(WireError::UnsupportedVersion { version: bytes[2] });
    }
    let flags = bytes[3];
    if flags & !FLAG_ZSTD != 0 {
        return Err(WireError::UnsupportedFlags { flags });
    }
    Ok(flags)
}

/// The batch in `cbor` (decompressed, or a plain body: chunked, a plain body is not bounded
/// by the transport, so it gets the same cap), metered and validated, with its decoded size.
fn decode_body(cbor: &[u8], budget: usize) -> Result<(ChangeBatch, usize), WireError> {
    if cbor.len() > MAX_DECODED_BYTES {
        return Err(WireError::DecompressedTooLarge {
            limit: MAX_DECODED_BYTES,
        });
    }
    let metering = limits::Metering::start(budget);
    let batch: ChangeBatch =
        cbor4ii::serde::from_slice(cbor).map_err(|error| match metering.exceeded() {
            Some(why) => WireError::from(why),
            None => WireError::Cbor(error),
        })?;
    validate(&batch)?;
    Ok((batch, cbor.len() + metering.charged()))
}

thread_local! {
    /// One zstd context per thread and direction, reused for every message: a new one per
    /// message (with its window and input buffers) cost 4 % of the async workers in the
    /// throughput profile (`docs/benchmarks.md`, run E).
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// One zstd frame of `data` (any zstd decoder reads it; its header holds the content size),
/// appended to `out`, which has room for `compress_bound(data.len())` more bytes.
fn zstd_compress_into(data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    COMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        let compressor = match &mut *slot {
            Some(c) => c,
            empty => empty.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
        };
        // Written at the cursor, behind what `out` holds already.
        let mut at_end = std::io::Cursor::new(std::mem::take(out));
        at_end.set_position(at_end.get_ref().len() as u64);
        let written = compressor.compress_to_buffer(data, &mut at_end);
        *out = at_end.into_inner();
        written.map(|_| ())
    })
}

/// The zstd frames of `body`, decompressed up to one byte past `MAX_DECODED_BYTES` (which
/// tells "exactly at the limit" from "over it").
fn zstd_decompress(body: &[u8]) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        let context = slot.get_or_insert_with(zstd::zstd_safe::DCtx::create);
        // A previous message may have stopped mid-frame (an error, the size cap).
        context
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(|code| std::io::Error::other(zstd::zstd_safe::get_error_name(code)))?;
        // Sized from the frame header when it says (ours do): no doubling, no slack kept. The
        // header is the sender's word, so it is believed only up to a ratio a big row (one that
        // would otherwise double its buffer) has; a message that compresses better grows.
        let believable = (body.len() as u64).saturating_mul(8).max(1 << 20);
        let size = zstd::zstd_safe::get_frame_content_size(body)
            .ok()
            .flatten()
            .map_or(0, |n| {
                n.min(believable).min(MAX_DECODED_BYTES as u64 + 1) as usize
            });
        let mut plain = Vec::with_capacity(size);
        zstd::stream::read::Decoder::with_context(body, context)
            .take(MAX_DECODED_BYTES as u64 + 1)
            .read_to_end(&mut plain)?;
        Ok(plain)
    })
}

/// Shape checks a consumer would otherwise trip over row by row.
fn validate(batch: &ChangeBatch) -> Result<(), WireError> {
    for t in &batch.tables {
        let malformed = |reason: String| WireError::Malformed {
            table: t.table.clone(),
            reason,
        };
        let key_len = t.key_columns.len().max(1);
        for r in &t.rows {
            if r.key.len() != key_len {
                return Err(malformed(format!(
                    "row has {} key values, table has {key_len} key columns",
                    r.key.len()
                )));
            }
            if r.deleted && !r.values.is_empty() {
                return Err(malformed("tombstone carries values".into()));
            }
            if !r.deleted && r.values.len() != t.columns.len() {
                return Err(malformed(format!(
                    "row has {} values for {} columns",
                    r.values.len(),
                    t.columns.len()
                )));
            }
        }
    }
    Ok(())
}

/// One message of `encode_fitting`'s split.
#[derive(Debug)]
pub enum Encoded {
    /// A message within the payload limit.
    Whole(Vec<u8>),
    /// A single row over the payload limit: it travels in chunks (`replication::chunk`).
    Oversized { table: String, payload: Vec<u8> },
    /// A single row no receiver could decode (over the decode budget or `MAX_DECODED_BYTES`):
    /// nothing can be sent for it.
    Unpublishable { table: String, error: WireError },
}

/// Encodes `batch` into messages of at most `max_bytes`: whole when it fits, halved by rows
/// when it does not (or when a receiver could not decode it), down to single rows, which are
/// `Oversized` or `Unpublishable` when even they do not fit. An empty batch gives no message.
pub fn encode_fitting(
    batch: ChangeBatch,
    compress: bool,
    max_bytes: usize,
) -> Result<Vec<Encoded>, WireError> {
    let mut out = Vec::new();
    if batch.row_count() > 0 {
        let fit = Fit {
            compress,
            max_bytes,
            budget: DECODE_BUDGET_BYTES,
        };
        encode_into(batch, fit, &mut out)?;
    }
    Ok(out)
}

/// `encode_fitting` for callers that cannot chunk: a single row over `max_bytes` is an error.
pub fn encode_within(
    batch: ChangeBatch,
    compress: bool,
    max_bytes: usize,
) -> Result<Vec<Vec<u8>>, WireError> {
    encode_fitting(batch, compress, max_bytes)?
        .into_iter()
        .map(|message| match message {
            Encoded::Whole(bytes) => Ok(bytes),
            Encoded::Oversized { table, payload } => Err(WireError::RowTooLarge {
                table,
                bytes: payload.len(),
            }),
            Encoded::Unpublishable { error, .. } => Err(error),
        })
        .collect()
}

/// How `encode_fitting` encodes: compressed or not, into messages of at most `max_bytes`, for
/// receivers with a decode `budget`.
#[derive(Debug, Clone, Copy)]
struct Fit {
    compress: bool,
    max_bytes: usize,
    budget: usize,
}

fn encode_into(batch: ChangeBatch, fit: Fit, out: &mut Vec<Encoded>) -> Result<(), WireError> {
    let rows = batch.row_count();
    if rows <= 1 {
        out.push(encode_row(batch, fit)?);
        return Ok(());
    }
    match encode_with(&batch, fit.compress, fit.budget) {
        Ok(bytes) if bytes.len() <= fit.max_bytes => {
            out.push(Encoded::Whole(bytes));
            return Ok(());
        }
        // Over the payload limit or over what a receiver decodes: fewer rows may fit.
        Ok(_) => {}
        Err(error) if error.is_too_large() => {}
        Err(error) => return Err(error),
    }
    let (left, right) = batch.split_at(rows.div_ceil(2));
    encode_into(left, fit, out)?;
    encode_into(right, fit, out)
}

/// A batch of one row, never split: it is let go once its CBOR is written, so a big row is
/// held at most twice (its values and the CBOR, then the CBOR and the compressed message),
/// never three times.
fn encode_row(batch: ChangeBatch, fit: Fit) -> Result<Encoded, WireError> {
    let table = batch
        .tables
        .iter()
        .find(|t| !t.rows.is_empty())
        .map(|t| t.table.clone())
        .unwrap_or_default();
    let cbor = match cbor_of(&batch, fit.budget) {
        Ok(cbor) => cbor,
        // Over what a receiver decodes, and a single row cannot be split further.
        Err(error) if error.is_too_large() => return Ok(Encoded::Unpublishable { table, error }),
        Err(error) => return Err(error),
    };
    drop(batch);
    let payload = frame(cbor, fit.compress)?;
    Ok(if payload.len() <= fit.max_bytes {
        Encoded::Whole(payload)
    } else {
        Encoded::Oversized { table, payload }
    })
}

#[cfg(test)]
mod tests;
