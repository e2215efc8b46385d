//! The Go HarmonyLite peer's message format (pure): recognising it, reading it, writing it, and
//! the shard the Go peer routes a row to. Used by `replication_log.go_compat` and, without it, to
//! pause a shard on a Go message instead of dropping it as malformed
//! (`docs/decisions/008-go-compatibility.md` has the source of every detail).
//!
//! One Go message carries one row change: a CBOR map `{FromNodeId, Payload}`, `Payload` being
//! `{Id, Type, TableName, Row, sh?}` (struct field names as text keys), zstd-compressed (one
//! frame, no header of ours) when the Go peer's `compress` is on. Time values in `Row` are
//! CBOR tag 32 around the map `{1: unix seconds}`. Go routes a row by FNV-1 64 over a CBOR
//! indefinite array of the table name and the `[column, value]` pairs of its primary key sorted
//! by column name, to shard `hash % shards + 1`.
//!
//! Decoding never panics and is bounded like ours (`wire::MAX_DECODED_BYTES`).

use std::io::Read;

use ciborium::Value as Cbor;

use super::wire::MAX_DECODED_BYTES;
use crate::change::{ChangeBatch, RowChange, TableChanges, UNKNOWN_ORIGIN, Value};
use crate::config::identity::fnv1_64;
use crate::hlc::Hlc;
use crate::ids::NodeId;

/// The tag the Go peer wraps time values in.
const TIME_TAG: u64 = 32;
/// First bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const ZSTD_LEVEL: i32 = 3;
/// Header our Go-format copies carry (value: the publishing node). The Go peer ignores headers;
/// a Rust node skips such a copy because the same change reaches it natively with its version.
pub const COPY_HEADER: &str = "Harmonylite-Go-Copy";

/// What a Go change does to its row. The Go peer treats `insert` and `update` alike (an
/// `INSERT OR REPLACE` of the row); we keep them apart only to tell who first inserted a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoOp {
    Insert,
    Update,
    Delete,
}

/// One Go message.
#[derive(Debug, Clone, PartialEq)]
pub struct GoChange {
    pub from_node: NodeId,
    /// The change-log row id on the publishing node (for its logs only).
    pub id: i64,
    pub op: GoOp,
    pub table: String,
    /// Column name and value, as the message lists them.
    pub row: Vec<(String, Value)>,
    /// The publisher's schema hash (`sh`), when it stamped one.
    pub schema_hash: Option<String>,
}

/// Why bytes are not a Go message.
#[derive(Debug, thiserror::Error)]
pub enum GoFormatError {
    #[error("zstd decompression failed")]
    Decompress(#[source] std::io::Error),
    #[error("decompressed message exceeds {MAX_DECODED_BYTES} bytes")]
    TooLarge,
    #[error("zstd compression failed")]
    Compress(#[source] std::io::Error),
    #[error("not cbor")]
    Cbor(#[source] ciborium::de::Error<std::io::Error>),
    #[error("cbor encoding failed")]
    CborEncode(#[source] ciborium::ser::Error<std::io::Error>),
    #[error("not a Go HarmonyLite change: {0}")]
    Shape(String),
}

/// The CBOR body of a message, decompressed when it is a zstd frame (the Go peer's `compress`).
fn body(payload: &[u8]) -> Result<Vec<u8>, GoFormatError> {
    if !payload.starts_with(&ZSTD_MAGIC) {
        return Ok(payload.to_vec());
    }
    let decoder = zstd::stream::Decoder::new(payload).map_err(GoFormatError::Decompress)?;
    let mut plain = Vec::new();
    decoder
        .take(MAX_DECODED_BYTES as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(GoFormatError::Decompress)?;
    if plain.len() > MAX_DECODED_BYTES {
        return Err(GoFormatError::TooLarge);
    }
    Ok(plain)
}

/// Decodes a Go message, compressed or not.
pub fn decode(payload: &[u8]) -> Result<GoChange, GoFormatError> {
    decode_sized(payload).map(|(change, _)| change)
}

/// `decode`, with the length of the message's CBOR once decompressed.
pub fn decode_sized(payload: &[u8]) -> Result<(GoChange, usize), GoFormatError> {
    let plain = body(payload)?;
    let top: Cbor = ciborium::from_reader(plain.as_slice()).map_err(GoFormatError::Cbor)?;
    let shape = |s: &str| GoFormatError::Shape(s.to_owned());
    let top = as_map(&top).ok_or_else(|| shape("the message is not a map"))?;
    let from = field(top, "FromNodeId")
        .and_then(as_u64)
        .ok_or_else(|| shape("no FromNodeId"))?;
    let payload = field(top, "Payload")
        .and_then(as_map)
        .ok_or_else(|| shape("no Payload map"))?;
    let text = |name: &str| {
        field(payload, name)
            .and_then(Cbor::as_text)
            .map(str::to_owned)
    };
    let table = text("TableName").ok_or_else(|| shape("no TableName"))?;
    let op = match text("Type").as_deref() {
        Some("insert") => GoOp::Insert,
        Some("update") => GoOp::Update,
        Some("delete") => GoOp::Delete,
        Some(other) => return Err(GoFormatError::Shape(format!("unknown Type {other:?}"))),
        None => return Err(shape("no Type")),
    };
    let id = field(payload, "Id")
        .and_then(Cbor::as_integer)
        .and_then(|i| i64::try_from(i).ok())
        .unwrap_or(0);
    let row = match field(payload, "Row") {
        Some(Cbor::Map(entries)) => entries
            .iter()
            .map(|(k, v)| {
                let name = k.as_text().ok_or_else(|| shape("a Row key is not text"))?;
                Ok((name.to_owned(), go_value(v)?))
            })
            .collect::<Result<Vec<_>, GoFormatError>>()?,
        Some(Cbor::Null) | None => Vec::new(),
        Some(_) => return Err(shape("Row is not a map")),
    };
    let change = GoChange {
        from_node: NodeId(from),
        id,
        op,
        table,
        row,
        schema_hash: text("sh").filter(|h| !h.is_empty()),
    };
    Ok((change, plain.len()))
}

/// The publishing node when `payload` is a Go message (what a native consumer reports when it
/// meets one); `None` for anything else.
pub fn recognise(payload: &[u8]) -> Option<NodeId> {
    decode(payload).ok().map(|c| c.from_node)
}

/// Encodes a change as the Go peer does (zstd when `compress`, as its config says).
pub fn encode(change: &GoChange, compress: bool) -> Result<Vec<u8>, GoFormatError> {
    let t = |s: &str| Cbor::Text(s.to_owned());
    let row = change
        .row
        .iter()
        .map(|(name, v)| (t(name), cbor_value(v)))
        .collect();
    let mut payload = vec![
        (t("Id"), Cbor::Integer(change.id.into())),
        (
            t("Type"),
            t(match change.op {
                GoOp::Insert => "insert",
                GoOp::Update => "update",
                GoOp::Delete => "delete",
            }),
        ),
        (t("TableName"), t(&change.table)),
        (t("Row"), Cbor::Map(row)),
    ];
    if let Some(hash) = &change.schema_hash {
        payload.push((t("sh"), t(hash)));
    }
    let top = Cbor::Map(vec![
        (t("FromNodeId"), Cbor::Integer(change.from_node.0.into())),
        (t("Payload"), Cbor::Map(payload)),
    ]);
    let mut cbor = Vec::with_capacity(128);
    ciborium::into_writer(&top, &mut cbor).map_err(GoFormatError::CborEncode)?;
    if !compress {
        return Ok(cbor);
    }
    zstd::stream::encode_all(cbor.as_slice(), ZSTD_LEVEL).map_err(GoFormatError::Compress)
}

/// A Go change as a batch of one row change at `version`, in the key-less form the applier
/// resolves against its table's key (`apply`: an empty `key` takes the key columns from the
/// values; a tombstone's values are the deleted row, as the Go peer sends it).
pub fn to_batch(change: GoChange, version: Hlc) -> ChangeBatch {
    let (columns, values): (Vec<String>, Vec<Value>) = change.row.into_iter().unzip();
    let origin = match change.op {
        GoOp::Insert => change.from_node,
        GoOp::Update | GoOp::Delete => UNKNOWN_ORIGIN,
    };
    ChangeBatch {
        origin: change.from_node,
        // The Go peer never checks the hash it stamps (its decoder drops `sh`), and ours is
        // computed differently: Go changes pass the schema gate unstamped.
        schema_hash: String::new(),
        tables: vec![TableChanges {
            table: change.table,
            key_columns: Vec::new(),
            columns,
            rows: vec![RowChange {
                version: version.0,
                node: change.from_node,
                origin,
                deleted: change.op == GoOp::Delete,
                key: Vec::new(),
                values,
            }],
        }],
    }
}

/// A local row change as the Go peer would have published it, with its routing hash; `None` for
/// a table keyed by rowid (the Go peer would insert such a row again instead of updating it,
/// and delete every row of the table for its tombstone).
pub fn from_row(origin: NodeId, table: &TableChanges, row: &RowChange) -> Option<(u64, GoChange)> {
    if table.key_columns.is_empty() {
        return None;
    }
    let key: Vec<(String, Value)> = table
        .key_columns
        .iter()
        .cloned()
        .zip(row.key.iter().cloned())
        .collect();
    let hash = row_hash(&table.table, &key);
    // A tombstone carries the key only: all the Go peer reads of a deleted row.
    let (op, row_values) = if row.deleted {
        (GoOp::Delete, key)
    } else {
        let values = table
            .columns
            .iter()
            .cloned()
            .zip(row.values.iter().cloned());
        (GoOp::Update, values.collect())
    };
    let change = GoChange {
        from_node: origin,
        id: i64::try_from(row.version).unwrap_or(i64::MAX),
        op,
        table: table.table.clone(),
        row: row_values,
        schema_hash: None,
    };
    Some((hash, change))
}

fn as_map(v: &Cbor) -> Option<&[(Cbor, Cbor)]> {
    match v {
        Cbor::Map(m) => Some(m),
        _ => None,
    }
}

fn as_u64(v: &Cbor) -> Option<u64> {
    v.as_integer().and_then(|i| u64::try_from(i).ok())
}

/// A struct field of a Go map (Go's decoder matches names case-insensitively too).
fn field<'a>(map: &'a [(Cbor, Cbor)], name: &str) -> Option<&'a Cbor> {
    map.iter()
        .find(|(k, _)| k.as_text().is_some_and(|k| k.eq_ignore_ascii_case(name)))
        .map(|(_, v)| v)
}

/// A Go row value as SQLite would store it.
fn go_value(v: &Cbor) -> Result<Value, GoFormatError> {
    Ok(match v {
        Cbor::Null => Value::Null,
        Cbor::Integer(i) => match i64::try_from(*i) {
            Ok(i) => Value::Integer(i),
            // A uint64 above i64::MAX: SQLite has no such integer; keep it as text.
            Err(_) => Value::text(&u128::try_from(*i).unwrap_or_default().to_string()),
        },
        Cbor::Float(f) => Value::Real(*f),
        Cbor::Text(s) => Value::text(s),
        Cbor::Bytes(b) => Value::Blob(b.clone()),
        Cbor::Bool(b) => Value::Integer(i64::from(*b)),
        Cbor::Tag(TIME_TAG, inner) => time_value(inner)?,
        other => {
            return Err(GoFormatError::Shape(format!(
                "unsupported row value {other:?}"
            )));
        }
    })
}

/// Tag 32's `{1: unix seconds}` as the text Go's SQLite driver writes for a UTC time
/// (`2006-01-02 15:04:05-07:00` with the fraction dropped, as the seconds have none); an empty
/// map is a nil time.
fn time_value(inner: &Cbor) -> Result<Value, GoFormatError> {
    let bad = || GoFormatError::Shape("tag 32 without {1: seconds}".to_owned());
    let map = as_map(inner).ok_or_else(bad)?;
    let Some((_, secs)) = map.iter().find(|(k, _)| as_u64(k) == Some(1)) else {
        return Ok(Value::Null);
    };
    let secs = secs
        .as_integer()
        .and_then(|i| i64::try_from(i).ok())
        .ok_or_else(bad)?;
    Ok(match u64::try_from(secs) {
        Ok(s) => {
            let iso = crate::schema::store::rfc3339(s.saturating_mul(1000));
            Value::text(&format!("{} {}+00:00", &iso[..10], &iso[11..19]))
        }
        // Before 1970: no calendar text here; the seconds themselves.
        Err(_) => Value::Integer(secs),
    })
}

fn cbor_value(v: &Value) -> Cbor {
    match v {
        Value::Null => Cbor::Null,
        Value::Integer(i) => Cbor::Integer((*i).into()),
        Value::Real(f) => Cbor::Float(*f),
        Value::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Cbor::Text(s.to_owned()),
            // CBOR text must be UTF-8; the Go peer then stores a blob.
            Err(_) => Cbor::Bytes(t.clone()),
        },
        Value::Blob(b) => Cbor::Bytes(b.clone()),
    }
}

/// The Go peer's routing hash of a row: FNV-1 64 over the CBOR the Go CBOR library writes for
/// `[_ table, [pk, value]…]` (indefinite array; key columns sorted by name; integers in their
/// shortest form, floats always as 8 bytes).
pub fn row_hash(table: &str, key: &[(String, Value)]) -> u64 {
    let mut pairs: Vec<&(String, Value)> = key.iter().collect();
    pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = vec![0x9f];
    cbor_head(&mut out, 3, table.len() as u64);
    out.extend_from_slice(table.as_bytes());
    for (name, value) in pairs {
        out.push(0x82);
        cbor_head(&mut out, 3, name.len() as u64);
        out.extend_from_slice(name.as_bytes());
        hash_value(&mut out, value);
    }
    out.push(0xff);
    fnv1_64(&out)
}

/// The Go shard (numbered from 1) of a row hash.
pub fn shard_of_hash(hash: u64, shards: u32) -> u32 {
    // The remainder is below `shards`, a u32.
    (hash % u64::from(shards.max(1))) as u32 + 1
}

fn hash_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(0xf6),
        Value::Integer(i) if *i >= 0 => cbor_head(out, 0, i.unsigned_abs()),
        Value::Integer(i) => cbor_head(out, 1, (-1 - *i) as u64),
        Value::Real(f) => {
            out.push(0xfb);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        Value::Text(t) => {
            let major = if std::str::from_utf8(t).is_ok() { 3 } else { 2 };
            cbor_head(out, major, t.len() as u64);
            out.extend_from_slice(t);
        }
        Value::Blob(b) => {
            cbor_head(out, 2, b.len() as u64);
            out.extend_from_slice(b);
        }
    }
}

/// A CBOR head in its shortest form.
fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests;
