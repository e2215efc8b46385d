use ciborium::Value as Cbor;

use super::*;

fn t(s: &str) -> Cbor {
    Cbor::Text(s.to_owned())
}

/// A message laid out as the Go peer's CBOR library writes `ReplicationEvent[ChangeLogEvent]`
/// (struct fields in declaration order, names as text keys, `sh` omitted when empty, a time
/// wrapped as tag 32 around `{1: seconds}`).
fn go_message(compress: bool) -> Vec<u8> {
    let row = Cbor::Map(vec![
        (t("id"), Cbor::Integer(1.into())),
        (t("name"), t("John Doe")),
        (
            t("created_at"),
            Cbor::Tag(
                32,
                Box::new(Cbor::Map(vec![(
                    Cbor::Integer(1.into()),
                    Cbor::Integer(1_740_830_400.into()),
                )])),
            ),
        ),
        (t("active"), Cbor::Bool(true)),
        (t("score"), Cbor::Float(42.5)),
        (t("photo"), Cbor::Bytes(vec![0, 1, 2])),
        (t("note"), Cbor::Null),
    ]);
    let msg = Cbor::Map(vec![
        (t("FromNodeId"), Cbor::Integer(u64::MAX.into())),
        (
            t("Payload"),
            Cbor::Map(vec![
                (t("Id"), Cbor::Integer(123.into())),
                (t("Type"), t("insert")),
                (t("TableName"), t("users")),
                (t("Row"), row),
                (t("sh"), t("abc")),
            ]),
        ),
    ]);
    let mut cbor = Vec::new();
    ciborium::into_writer(&msg, &mut cbor).unwrap();
    if compress {
        zstd::stream::encode_all(cbor.as_slice(), 3).unwrap()
    } else {
        cbor
    }
}

#[test]
fn decodes_go_messages_plain_and_compressed() {
    for compress in [false, true] {
        let c = decode(&go_message(compress)).unwrap();
        assert_eq!(c.from_node, NodeId(u64::MAX));
        assert_eq!(c.id, 123);
        assert_eq!(c.op, GoOp::Insert);
        assert_eq!(c.table, "users");
        assert_eq!(c.schema_hash.as_deref(), Some("abc"));
        let get = |n: &str| c.row.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("id"), Value::Integer(1));
        assert_eq!(get("name"), Value::text("John Doe"));
        // 2025-03-01 12:00:00 UTC, as Go's SQLite driver writes a time.
        assert_eq!(get("created_at"), Value::text("2025-03-01 12:00:00+00:00"));
        assert_eq!(get("active"), Value::Integer(1));
        assert_eq!(get("score"), Value::Real(42.5));
        assert_eq!(get("photo"), Value::Blob(vec![0, 1, 2]));
        assert_eq!(get("note"), Value::Null);
        assert_eq!(recognise(&go_message(compress)), Some(NodeId(u64::MAX)));
    }
}

#[test]
fn round_trips_what_we_write() {
    let change = GoChange {
        from_node: NodeId(9),
        id: -1,
        op: GoOp::Delete,
        table: "my table".into(),
        row: vec![
            ("k".into(), Value::text("a")),
            ("bad".into(), Value::Text(vec![0xff])),
            ("r".into(), Value::Real(-0.5)),
        ],
        schema_hash: None,
    };
    for compress in [false, true] {
        let bytes = encode(&change, compress).unwrap();
        let mut back = change.clone();
        // Text that is not UTF-8 cannot be CBOR text: it travels as bytes.
        back.row[1].1 = Value::Blob(vec![0xff]);
        assert_eq!(decode(&bytes).unwrap(), back);
    }
    // The Go peer's Type strings.
    let plain = encode(&change, false).unwrap();
    let v: Cbor = ciborium::from_reader(plain.as_slice()).unwrap();
    let payload = &v.as_map().unwrap()[1].1;
    assert_eq!(payload.as_map().unwrap()[1].1, t("delete"));
    assert!(payload.as_map().unwrap().iter().all(|(k, _)| k != &t("sh")));
}

#[test]
fn native_and_foreign_bytes_are_not_go_messages() {
    assert!(recognise(b"HL\x01\x00\xa0").is_none());
    assert!(recognise(b"").is_none());
    assert!(recognise(&[0x28, 0xb5, 0x2f, 0xfd, 0]).is_none());
    let mut other = Vec::new();
    ciborium::into_writer(&Cbor::Map(vec![(t("x"), t("y"))]), &mut other).unwrap();
    assert!(recognise(&other).is_none());
    let batch = crate::change::ChangeBatch {
        origin: NodeId(1),
        schema_hash: String::new(),
        tables: Vec::new(),
    };
    let native = crate::replication::wire::encode(&batch, true).unwrap();
    assert!(recognise(&native).is_none());
}

#[test]
fn row_hash_matches_the_go_layout() {
    // Computed independently (Python) from the layout: 0x9f, text(table), per sorted key
    // column 0x82 text(name) value, 0xff; FNV-1 64.
    let k = |n: &str, v: Value| (n.to_owned(), v);
    assert_eq!(
        row_hash("users", &[k("id", Value::Integer(1))]),
        0x3255_cd97_cace_4504
    );
    let h = row_hash("users", &[k("id", Value::Integer(1000))]);
    assert_eq!(h, 0xf220_4bc0_7944_1317);
    assert_eq!(shard_of_hash(h, 4), 4);
    assert_eq!(
        row_hash(
            "order",
            &[
                k("sku", Value::text("a-1")),
                k("region", Value::Integer(-7))
            ]
        ),
        0x743a_6d9f_3707_22c6
    );
    assert_eq!(
        row_hash(
            "m",
            &[k("x", Value::Real(1.5)), k("b", Value::Blob(vec![0, 1]))]
        ),
        0x57ff_0acf_b5a5_947c
    );
    assert_eq!(shard_of_hash(h, 1), 1);
}

/// A native consumer asks only a message without our magic whether it is a Go message
/// (`consumer::go`): a Go message (a CBOR map, or a zstd frame of one) never begins with our
/// magic, and nothing that does is one.
#[test]
fn a_go_message_never_begins_with_our_magic() {
    use crate::replication::wire;
    for compress in [false, true] {
        assert!(!wire::has_magic(&go_message(compress)));
        let ours = [&wire::MAGIC[..], &go_message(compress)].concat();
        assert_eq!(recognise(&ours), None);
    }
}
