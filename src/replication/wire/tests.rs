use proptest::prelude::*;

use super::*;
use crate::change::{MAX_COLUMNS, RowChange, TableChanges, Value};
use crate::ids::NodeId;

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

/// A small message that decodes big reports its decoded size, not its received one: the
/// consumer bounds a transaction by that.
#[test]
fn decoded_size_counts_decompressed_cbor_and_structures() {
    let mut b = sample();
    b.tables[0].rows[0].values[1] = Value::Blob(vec![0; 8 << 20]);
    let msg = encode(&b, true).unwrap();
    assert!(msg.len() < 64 * 1024, "{}", msg.len());
    let (decoded, size) = decode_sized(msg.into()).unwrap();
    assert_eq!(decoded, b);
    let structures = limits::cost(&b).unwrap();
    assert!(size >= (8 << 20) + structures, "{size}");
    assert!(size < (8 << 20) + structures + 1024, "{size}");
    let plain = encode(&sample(), false).unwrap();
    let (_, size) = decode_sized(plain.clone().into()).unwrap();
    assert_eq!(size, plain.len() - 4 + limits::cost(&sample()).unwrap());
}

/// Chunked, a plain body is not bounded by the transport: it is capped like a compressed one.
#[test]
fn plain_bodies_are_capped_too() {
    let mut msg = b"HL\x01\x00".to_vec();
    msg.resize(4 + MAX_DECODED_BYTES + 1, 0);
    assert!(matches!(
        decode(&msg),
        Err(WireError::DecompressedTooLarge { .. })
    ));
}

#[test]
fn malformed_rows_are_rejected() {
    let mut b = sample();
    b.tables[0].rows[0].values.pop();
    assert!(matches!(
        encode(&b, false),
        Err(WireError::Malformed { .. })
    ));
    let mut bytes = b"HL\x01\x00".to_vec();
    ciborium::into_writer(&b, &mut bytes).unwrap();
    assert!(matches!(decode(&bytes), Err(WireError::Malformed { .. })));
}

const NULL: &[u8] = &[0x61, b'n'];

/// A CBOR array of `n` copies of `item`, with its length announced or indefinite.
fn array(announced: bool, n: usize, item: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + n * item.len());
    if announced {
        out.push(0x9a);
        out.extend((n as u32).to_be_bytes());
    } else {
        out.push(0x9f);
    }
    for _ in 0..n {
        out.extend_from_slice(item);
    }
    if !announced {
        out.push(0xff);
    }
    out
}

/// CBOR of a tombstone row of `sample()`'s table with the given key array.
fn tombstone(key: &[u8]) -> Vec<u8> {
    let mut row = vec![
        0xa6, 0x61, b'v', 1, 0x61, b'n', 1, 0x61, b'o', 1, 0x61, b'd', 0xf5,
    ];
    row.extend([0x61, b'k']);
    row.extend_from_slice(key);
    row.extend([0x61, b'c', 0x80]);
    row
}

/// A compressed message of `sample()`'s table with `rows` (a CBOR array) as its rows.
fn message_with_rows(rows: &[u8]) -> Vec<u8> {
    let mut b = sample();
    b.tables[0].rows.clear();
    let mut cbor = Vec::new();
    ciborium::into_writer(&b, &mut cbor).unwrap();
    assert_eq!(
        cbor.pop(),
        Some(0x80),
        "the empty rows array ends the batch"
    );
    cbor.extend_from_slice(rows);
    let mut msg = b"HL\x01\x01".to_vec();
    msg.extend(zstd::stream::encode_all(cbor.as_slice(), 3).unwrap());
    msg
}

#[test]
fn hand_made_rows_decode() {
    for announced in [true, false] {
        let row = tombstone(&array(announced, 1, NULL));
        let batch = decode(&message_with_rows(&array(announced, 3, &row))).unwrap();
        assert_eq!(batch.row_count(), 3);
        assert_eq!(batch.tables[0].rows[2].key, vec![Value::Null]);
    }
}

// The fuzzer's message: 8 million nulls in one row's key, 273 MB of peak memory before the
// shape check. Announced, it is refused before the first value is read; indefinite, after
// `MAX_COLUMNS` values (1 MiB). `tests/fuzz_smoke` measures the peak memory.
#[test]
fn millions_of_nulls_in_a_key_are_refused_at_once() {
    for announced in [true, false] {
        let row = tombstone(&array(announced, 8_000_000, NULL));
        let msg = message_with_rows(&array(true, 1, &row));
        assert!(msg.len() < 4096, "{} bytes", msg.len());
        let started = std::time::Instant::now();
        let result = decode(&msg);
        assert!(
            matches!(
                result,
                Err(WireError::TooManyEntries {
                    limit: MAX_COLUMNS,
                    ..
                })
            ),
            "{result:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}

// Tiny rows cost 112 bytes each in memory from 21 bytes of CBOR. Announced, rows past the
// budget are refused before the first one is read; indefinite, after the budget's worth.
// A 1 MiB budget keeps this fast; `tests/fuzz_smoke` runs the full-size case and measures
// its peak memory.
#[test]
fn many_tiny_rows_are_refused() {
    let budget = 1 << 20;
    let row = tombstone(&array(true, 1, NULL));
    let mut empty = sample();
    empty.tables[0].rows.clear();
    let per_row = std::mem::size_of::<RowChange>() + std::mem::size_of::<Value>();
    let fits = (budget - limits::cost(&empty).unwrap()) / per_row;
    for announced in [true, false] {
        let msg = message_with_rows(&array(announced, fits, &row));
        assert_eq!(decode_with(&msg, budget).unwrap().0.row_count(), fits);
        let msg = message_with_rows(&array(announced, fits + 1, &row));
        let result = decode_with(&msg, budget);
        assert!(
            matches!(result, Err(WireError::OverBudget { limit }) if limit == budget),
            "{result:?}"
        );
    }
}

/// The largest message the publisher produces by count: `scan_max_changes` at its maximum
/// (100 000 rows) of 36 columns, one of them a 300-byte blob: 58 MB of CBOR, under
/// `max_payload_mb` at its maximum (64 MiB), and 120.6 MiB of the decode budget.
#[test]
fn largest_legitimate_message_round_trips() {
    let names: Vec<String> = (0..36).map(|c| format!("c{c}")).collect();
    let rows = (0..100_000i64)
        .map(|i| RowChange {
            version: i as u64,
            node: NodeId(1),
            origin: NodeId(1),
            deleted: false,
            key: vec![Value::Integer(i)],
            values: (0..36)
                .map(|c| match c {
                    0 => Value::Blob(vec![i as u8; 300]),
                    _ => Value::Integer(i * 1000 + c),
                })
                .collect(),
        })
        .collect();
    let big = ChangeBatch {
        origin: NodeId(1),
        schema_hash: "h".into(),
        tables: vec![TableChanges {
            table: "wide".into(),
            key_columns: vec![],
            columns: names,
            rows,
        }],
    };
    let cost = limits::cost(&big).unwrap();
    assert!(cost > DECODE_BUDGET_BYTES / 100 * 90, "{cost}");
    let bytes = encode(&big, false).unwrap();
    assert!(bytes.len() <= (64 << 20) - 4096, "{} bytes", bytes.len());
    assert_eq!(decode(&bytes).unwrap(), big);
}

#[test]
fn batches_over_the_budget_are_split_by_rows() {
    let mut b = sample();
    b.tables[0].rows.truncate(1);
    let template = b.tables[0].rows[0].clone();
    b.tables[0].rows = (0..100)
        .map(|i| RowChange {
            key: vec![Value::Integer(i)],
            ..template.clone()
        })
        .collect();
    let budget = limits::cost(&b).unwrap() - 1;
    assert!(matches!(
        encode_with(&b, true, budget),
        Err(WireError::OverBudget { limit }) if limit == budget
    ));
    let mut parts = Vec::new();
    let fit = Fit {
        compress: true,
        max_bytes: 1 << 20,
        budget,
    };
    encode_into(b.clone(), fit, &mut parts).unwrap();
    assert_eq!(parts.len(), 2);
    let rows: Vec<RowChange> = parts
        .iter()
        .flat_map(|p| match p {
            Encoded::Whole(p) => decode_with(p, budget).unwrap().0.tables.remove(0).rows,
            other => panic!("expected whole messages, got {other:?}"),
        })
        .collect();
    assert_eq!(rows, b.tables[0].rows);

    // A single row over the budget cannot be sent at all: it is reported, the rest still go.
    let one_row = limits::cost(&ChangeBatch {
        tables: vec![TableChanges {
            rows: b.tables[0].rows[..1].to_vec(),
            ..b.tables[0].header()
        }],
        ..b.empty_like()
    })
    .unwrap();
    let mut parts = Vec::new();
    let fit = Fit {
        compress: true,
        max_bytes: 1 << 20,
        budget: one_row - 1,
    };
    encode_into(b.clone(), fit, &mut parts).unwrap();
    assert_eq!(parts.len(), 100);
    assert!(parts.iter().all(|p| matches!(
        p,
        Encoded::Unpublishable { table, error: WireError::OverBudget { .. } } if table == "my table"
    )));
}

// The fuzzer's other finding: a very compressible row over the decoded-size cap was
// published, then skipped by every receiver.
#[test]
fn encode_refuses_what_decode_would() {
    let mut b = sample();
    b.tables[0].rows[0].values[1] = Value::Blob(vec![0; MAX_DECODED_BYTES]);
    assert!(matches!(
        encode(&b, true),
        Err(WireError::EncodedTooLarge {
            limit: MAX_DECODED_BYTES,
            ..
        })
    ));
    let mut b = sample();
    b.tables[0].rows[0].values = vec![Value::Null; MAX_COLUMNS + 1];
    b.tables[0].columns = vec!["c".into(); MAX_COLUMNS + 1];
    assert!(matches!(
        encode(&b, true),
        Err(WireError::TooManyEntries {
            limit: MAX_COLUMNS,
            ..
        })
    ));
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

/// The encoder writes each REAL in the shortest CBOR float that keeps it (half, single or
/// double); every width decodes to the same bits.
#[test]
fn reals_of_every_cbor_width_round_trip_exactly() {
    let reals = [
        0.0,
        -0.0,
        1.5,
        65504.0,                            // largest half
        5.960_464_477_539_063e-8,           // smallest half subnormal
        f64::from(0.1f32),                  // single only
        f64::from(f32::MIN_POSITIVE) / 2.0, // single subnormal
        0.1,                                // double only
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let mut batch = sample();
    batch.tables[0].rows[0].values = vec![Value::Integer(1), Value::Null];
    for r in reals {
        batch.tables[0].rows[0].values[1] = Value::Real(r);
        for compress in [false, true] {
            let back = decode(&encode(&batch, compress).unwrap()).unwrap();
            match back.tables[0].rows[0].values[1] {
                Value::Real(got) => assert_eq!(got.to_bits(), r.to_bits(), "{r:e}"),
                ref other => panic!("{r:e} came back as {other:?}"),
            }
        }
    }
    // The widths are really used: 1.5 travels as a half (0xf9 0x3e00).
    batch.tables[0].rows[0].values[1] = Value::Real(1.5);
    let plain = encode(&batch, false).unwrap();
    assert!(plain.windows(3).any(|w| w == [0xf9, 0x3e, 0x00]));
}

/// A publisher-sized message (512 rows of four columns) decoded both ways: what the reader
/// costs per row (no assertions: timing is noisy).
/// `cargo test --release --lib decode_cost -- --ignored --nocapture`
#[test]
#[ignore = "measurement, prints numbers"]
fn decode_cost() {
    let row = |i: i64| RowChange {
        version: (1 << 40) + i as u64,
        node: NodeId(1),
        origin: NodeId(1),
        deleted: false,
        key: vec![Value::Integer(i)],
        values: vec![
            Value::Integer(i),
            Value::text("a book title"),
            Value::Integer(i % 13),
            Value::Integer(0),
        ],
    };
    let batch = ChangeBatch {
        tables: vec![TableChanges {
            table: "t".into(),
            key_columns: vec!["id".into()],
            columns: ["id", "name", "qty", "ts"].map(String::from).to_vec(),
            rows: (0..512).map(row).collect(),
        }],
        ..sample()
    };
    let mut cbor = Vec::new();
    ciborium::into_writer(&batch, &mut cbor).unwrap();
    const ROUNDS: u32 = 200;
    let time = |f: &dyn Fn() -> ChangeBatch| {
        let start = std::time::Instant::now();
        for _ in 0..ROUNDS {
            assert_eq!(f().row_count(), 512);
        }
        start.elapsed().as_secs_f64() * 1e9 / f64::from(ROUNDS * 512)
    };
    let ciborium_ns = time(&|| ciborium::from_reader(cbor.as_slice()).unwrap());
    let cbor4ii_ns = time(&|| cbor4ii::serde::from_slice(cbor.as_slice()).unwrap());
    let plain = encode(&batch, false).unwrap();
    let wire_ns = time(&|| decode(&plain).unwrap());
    println!(
        "decode, ns/row: ciborium {ciborium_ns:.0}, cbor4ii {cbor4ii_ns:.0}, \
         wire::decode (cbor4ii, metered, validated) {wire_ns:.0}"
    );
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
