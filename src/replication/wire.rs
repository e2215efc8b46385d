//! The wire format of one JetStream message: a 4-byte header, then a CBOR `ChangeBatch`,
//! optionally zstd-compressed.
//!
//! ```text
//! byte 0..2  magic "HL"
//! byte 2     format version (1)
//! byte 3     flags: bit 0 = the body is one or more zstd frames
//! byte 4..   body: CBOR (ciborium) of ChangeBatch
//! ```
//!
//! Decoding never panics: every malformed input maps to a `WireError`, so a consumer can
//! count and skip a bad message instead of stalling its shard.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;

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

/// One SQLite value. `Text` holds raw bytes because SQLite text may be invalid UTF-8 and must
/// round-trip byte for byte. Variant names are one letter on the wire (CBOR carries them for
/// every value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    #[serde(rename = "n")]
    Null,
    #[serde(rename = "i")]
    Integer(i64),
    #[serde(rename = "r")]
    Real(f64),
    #[serde(rename = "t")]
    Text(#[serde(with = "serde_bytes")] Vec<u8>),
    #[serde(rename = "b")]
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Value {
    /// Byte-exact equality (`Real` compared by bit pattern, so `-0.0 != 0.0`).
    pub fn same_as(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Real(a), Value::Real(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a == b,
        }
    }

    /// Text from a Rust string (tests and callers that build batches by hand).
    pub fn text(s: &str) -> Value {
        Value::Text(s.as_bytes().to_vec())
    }
}

/// The state of one row (identified by its key) at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowChange {
    /// HLC version of this state (`crate::hlc::Hlc`).
    #[serde(rename = "v")]
    pub version: u64,
    /// The node that stamped `version`; the tie-breaker between equal versions.
    #[serde(rename = "n")]
    pub node: NodeId,
    /// The node that first inserted this key (detects independent inserts of one key).
    #[serde(rename = "o")]
    pub origin: NodeId,
    /// A tombstone: the row is deleted at this version.
    #[serde(rename = "d")]
    pub deleted: bool,
    /// Primary-key values in key order (the rowid for tables without a primary key).
    #[serde(rename = "k")]
    pub key: Vec<Value>,
    /// One value per `TableChanges::columns`; empty when `deleted`.
    #[serde(rename = "c")]
    pub values: Vec<Value>,
}

/// The changes of one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableChanges {
    #[serde(rename = "t")]
    pub table: String,
    /// Primary-key columns in key order; empty means the table is keyed by rowid.
    #[serde(rename = "k")]
    pub key_columns: Vec<String>,
    /// The columns `RowChange::values` follow.
    #[serde(rename = "c")]
    pub columns: Vec<String>,
    #[serde(rename = "r")]
    pub rows: Vec<RowChange>,
}

/// What one message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeBatch {
    /// The publishing node.
    #[serde(rename = "o")]
    pub origin: NodeId,
    /// The publisher's schema hash (`crate::schema::SchemaHash`).
    #[serde(rename = "s")]
    pub schema_hash: String,
    #[serde(rename = "t")]
    pub tables: Vec<TableChanges>,
}

impl ChangeBatch {
    /// Number of row changes over all tables.
    pub fn row_count(&self) -> usize {
        self.tables.iter().map(|t| t.rows.len()).sum()
    }

    /// Splits the rows in two halves of (nearly) equal count, keeping table order.
    fn split_half(self) -> (ChangeBatch, ChangeBatch) {
        let mut left_budget = self.row_count() / 2;
        let mut left = ChangeBatch {
            origin: self.origin,
            schema_hash: self.schema_hash.clone(),
            tables: Vec::new(),
        };
        let mut right = ChangeBatch {
            tables: Vec::new(),
            ..left.clone()
        };
        for mut table in self.tables {
            if left_budget == 0 {
                right.tables.push(table);
            } else if table.rows.len() <= left_budget {
                left_budget -= table.rows.len();
                left.tables.push(table);
            } else {
                let rest = table.rows.split_off(left_budget);
                left_budget = 0;
                right.tables.push(TableChanges {
                    rows: rest,
                    ..table.clone()
                });
                left.tables.push(table);
            }
        }
        (left, right)
    }
}

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
    Cbor(#[source] ciborium::de::Error<std::io::Error>),
    #[error("cbor encoding failed")]
    CborEncode(#[source] ciborium::ser::Error<std::io::Error>),
    #[error("malformed change batch: table {table}: {reason}")]
    Malformed { table: String, reason: String },
    #[error("a single row of table {table} encodes to {bytes} bytes, over the message limit")]
    RowTooLarge { table: String, bytes: usize },
}

/// Encodes one message (header + CBOR, zstd-compressed when `compress`).
pub fn encode(batch: &ChangeBatch, compress: bool) -> Result<Vec<u8>, WireError> {
    let mut cbor = Vec::with_capacity(256);
    ciborium::into_writer(batch, &mut cbor).map_err(WireError::CborEncode)?;
    let flags = if compress { FLAG_ZSTD } else { 0 };
    let mut out = Vec::with_capacity(HEADER_LEN + cbor.len());
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(flags);
    if compress {
        let body =
            zstd::stream::encode_all(cbor.as_slice(), ZSTD_LEVEL).map_err(WireError::Compress)?;
        out.extend_from_slice(&body);
    } else {
        out.extend_from_slice(&cbor);
    }
    Ok(out)
}

/// Decodes and validates one message.
pub fn decode(bytes: &[u8]) -> Result<ChangeBatch, WireError> {
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
    let body = &bytes[HEADER_LEN..];
    let batch: ChangeBatch = if flags & FLAG_ZSTD != 0 {
        let decoder = zstd::stream::Decoder::new(body).map_err(WireError::Decompress)?;
        let mut plain = Vec::new();
        // One byte past the limit tells "exactly at the limit" from "over it".
        decoder
            .take(MAX_DECODED_BYTES as u64 + 1)
            .read_to_end(&mut plain)
            .map_err(WireError::Decompress)?;
        if plain.len() > MAX_DECODED_BYTES {
            return Err(WireError::DecompressedTooLarge {
                limit: MAX_DECODED_BYTES,
            });
        }
        ciborium::from_reader(plain.as_slice()).map_err(WireError::Cbor)?
    } else {
        ciborium::from_reader(body).map_err(WireError::Cbor)?
    };
    validate(&batch)?;
    Ok(batch)
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

/// Encodes `batch` into as many messages as needed so each is at most `max_bytes`, splitting
/// rows (never a row). An empty batch gives no message.
pub fn encode_within(
    batch: ChangeBatch,
    compress: bool,
    max_bytes: usize,
) -> Result<Vec<Vec<u8>>, WireError> {
    let mut out = Vec::new();
    if batch.row_count() > 0 {
        encode_into(batch, compress, max_bytes, &mut out)?;
    }
    Ok(out)
}

fn encode_into(
    batch: ChangeBatch,
    compress: bool,
    max_bytes: usize,
    out: &mut Vec<Vec<u8>>,
) -> Result<(), WireError> {
    let bytes = encode(&batch, compress)?;
    if bytes.len() <= max_bytes {
        out.push(bytes);
        return Ok(());
    }
    if batch.row_count() <= 1 {
        let table = batch
            .tables
            .iter()
            .find(|t| !t.rows.is_empty())
            .map(|t| t.table.clone())
            .unwrap_or_default();
        return Err(WireError::RowTooLarge {
            table,
            bytes: bytes.len(),
        });
    }
    let (left, right) = batch.split_half();
    encode_into(left, compress, max_bytes, out)?;
    encode_into(right, compress, max_bytes, out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> ChangeBatch {
        ChangeBatch {
            origin: NodeId(7),
            schema_hash: "abc".into(),
            tables: vec![TableChanges {
                table: "my table".into(),
                key_columns: vec!["id".into()],
                columns: vec!["id".into(), "v".into()],
                rows: vec![
                    RowChange {
                        version: 1 << 40,
                        node: NodeId(7),
                        origin: NodeId(7),
                        deleted: false,
                        key: vec![Value::Integer(1)],
                        values: vec![Value::Integer(1), Value::Text(vec![0xff, 0, b'a'])],
                    },
                    RowChange {
                        version: (1 << 40) + 1,
                        node: NodeId(7),
                        origin: NodeId(3),
                        deleted: true,
                        key: vec![Value::Integer(2)],
                        values: vec![],
                    },
                ],
            }],
        }
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>()
                .prop_filter("sqlite has no NaN", |f| !f.is_nan())
                .prop_map(Value::Real),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
        ]
    }

    fn batch() -> impl Strategy<Value = ChangeBatch> {
        let row = (
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            value(),
            proptest::collection::vec(value(), 2),
        )
            .prop_map(|(version, node, deleted, k, vals)| RowChange {
                version,
                node: NodeId(node),
                origin: NodeId(node ^ 1),
                deleted,
                key: vec![k],
                values: if deleted { vec![] } else { vals },
            });
        let table =
            ("[a-z \"]{1,8}", proptest::collection::vec(row, 0..8)).prop_map(|(table, rows)| {
                TableChanges {
                    table,
                    key_columns: vec!["k".into()],
                    columns: vec!["k".into(), "v".into()],
                    rows,
                }
            });
        (any::<u64>(), proptest::collection::vec(table, 0..4)).prop_map(|(origin, tables)| {
            ChangeBatch {
                origin: NodeId(origin),
                schema_hash: "h".into(),
                tables,
            }
        })
    }

    fn same(a: &ChangeBatch, b: &ChangeBatch) -> bool {
        let rows = |x: &ChangeBatch| -> Vec<Value> {
            x.tables
                .iter()
                .flat_map(|t| {
                    t.rows
                        .iter()
                        .flat_map(|r| r.key.iter().chain(&r.values).cloned())
                })
                .collect()
        };
        let (ra, rb) = (rows(a), rows(b));
        ra.len() == rb.len() && ra.iter().zip(&rb).all(|(x, y)| x.same_as(y))
    }

    #[test]
    fn header_layout() {
        let plain = encode(&sample(), false).unwrap();
        assert_eq!(&plain[..4], &[b'H', b'L', 1, 0]);
        let packed = encode(&sample(), true).unwrap();
        assert_eq!(&packed[..4], &[b'H', b'L', 1, 1]);
        assert_eq!(decode(&plain).unwrap(), sample());
        assert_eq!(decode(&packed).unwrap(), sample());
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(matches!(decode(b"HL"), Err(WireError::TooShort { len: 2 })));
        assert!(matches!(
            decode(b"XX\x01\x00"),
            Err(WireError::BadMagic { .. })
        ));
        assert!(matches!(
            decode(b"HL\x02\x00"),
            Err(WireError::UnsupportedVersion { version: 2 })
        ));
        assert!(matches!(
            decode(b"HL\x01\x02"),
            Err(WireError::UnsupportedFlags { flags: 2 })
        ));
        assert!(matches!(decode(b"HL\x01\x00"), Err(WireError::Cbor(_))));
        assert!(matches!(
            decode(b"HL\x01\x01garbage"),
            Err(WireError::Decompress(_))
        ));
        // Foreign CBOR: a valid document of another shape.
        let mut foreign = b"HL\x01\x00".to_vec();
        ciborium::into_writer(&vec![1u8, 2, 3], &mut foreign).unwrap();
        assert!(matches!(decode(&foreign), Err(WireError::Cbor(_))));
    }

    #[test]
    fn truncations_never_panic() {
        for compress in [false, true] {
            let bytes = encode(&sample(), compress).unwrap();
            for n in 0..bytes.len() {
                assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes decoded");
            }
        }
    }

    #[test]
    fn decompression_bomb_is_capped() {
        let zeros = vec![0u8; MAX_DECODED_BYTES + 16];
        let mut msg = b"HL\x01\x01".to_vec();
        msg.extend(zstd::stream::encode_all(zeros.as_slice(), 19).unwrap());
        assert!(msg.len() < 64 * 1024);
        assert!(matches!(
            decode(&msg),
            Err(WireError::DecompressedTooLarge { .. })
        ));
    }

    #[test]
    fn malformed_rows_are_rejected() {
        let mut b = sample();
        b.tables[0].rows[0].values.pop();
        let bytes = encode(&b, false).unwrap();
        assert!(matches!(decode(&bytes), Err(WireError::Malformed { .. })));
    }

    #[test]
    fn splits_to_fit_and_reports_oversized_rows() {
        let mut b = sample();
        let template = b.tables[0].rows[0].clone();
        b.tables[0].rows = (0..200)
            .map(|i| RowChange {
                key: vec![Value::Integer(i)],
                values: vec![Value::Integer(i), Value::Blob(vec![i as u8; 100])],
                ..template.clone()
            })
            .collect();
        let parts = encode_within(b.clone(), false, 2048).unwrap();
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| p.len() <= 2048));
        let rows: Vec<RowChange> = parts
            .iter()
            .flat_map(|p| decode(p).unwrap().tables.remove(0).rows)
            .collect();
        assert_eq!(rows, b.tables[0].rows);
        assert_eq!(encode_within(b.clone(), true, 1 << 20).unwrap().len(), 1);
        assert!(matches!(
            encode_within(b, false, 64),
            Err(WireError::RowTooLarge { ref table, .. }) if table == "my table"
        ));
        let empty = ChangeBatch {
            tables: vec![],
            ..sample()
        };
        assert!(encode_within(empty, true, 64).unwrap().is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn round_trips(b in batch(), compress in any::<bool>()) {
            let decoded = decode(&encode(&b, compress).unwrap()).unwrap();
            prop_assert!(same(&b, &decoded));
            prop_assert_eq!(decoded.row_count(), b.row_count());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), flags in 0u8..2) {
            let mut msg = vec![b'H', b'L', 1, flags];
            msg.extend(bytes);
            let _ = decode(&msg);
        }

        #[test]
        fn split_keeps_every_row(b in batch(), max in 200usize..2000) {
            match encode_within(b.clone(), false, max) {
                Ok(parts) => {
                    let mut rows = Vec::new();
                    for p in &parts {
                        prop_assert!(p.len() <= max);
                        for t in decode(p).unwrap().tables { rows.extend(t.rows); }
                    }
                    let want: Vec<RowChange> = b.tables.into_iter().flat_map(|t| t.rows).collect();
                    prop_assert_eq!(rows.len(), want.len());
                }
                Err(WireError::RowTooLarge { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
    }
}
