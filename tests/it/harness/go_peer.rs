//! A stand-in for a Go HarmonyLite node, built from the Go code's documented format
//! (docs/decisions/008-go-compatibility.md), not from our implementation of it:
//!
//! - a message is the CBOR map `{FromNodeId, Payload: {Id, Type, TableName, Row}}`, text keys in
//!   struct order, a time as tag 32 around `{1: unix seconds}`, zstd-compressed when `compress`;
//! - it goes to subject `harmonylite-change-log-<hash % shards + 1>` (stream
//!   `harmonylite-changes-c-<n>`), the hash being FNV-1 64 over the CBOR indefinite array of the
//!   table name and the `[column, value]` pairs of the primary key sorted by column;
//! - the peer applies every message of every Go stream in arrival order (its own too), with
//!   `INSERT OR REPLACE` or `DELETE … WHERE <key>`, as the Go node does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use ciborium::Value as Cbor;
use futures::StreamExt;
use tokio::task::JoinHandle;

/// One column value of a Go row.
pub type Col = (&'static str, Cbor);

pub fn int(i: i64) -> Cbor {
    Cbor::Integer(i.into())
}

pub fn text(s: &str) -> Cbor {
    Cbor::Text(s.to_owned())
}

/// A Go `time.Time` on the wire: tag 32 around `{1: seconds}`.
pub fn time(unix_seconds: i64) -> Cbor {
    Cbor::Tag(32, Box::new(Cbor::Map(vec![(int(1), int(unix_seconds))])))
}

/// What Go's SQLite driver stores for a UTC time of 2025-03-01 12:00:`s`.
pub fn time_text(second: i64) -> String {
    format!("2025-03-01 12:00:{second:02}+00:00")
}

/// 2025-03-01 12:00:00 UTC.
pub const TIME_BASE: i64 = 1_740_830_400;

/// The Go stream and subject of Go shard `n` (from 1), compressed streams.
pub fn go_stream(n: u32) -> String {
    format!("harmonylite-changes-c-{n}")
}

pub fn go_subject(n: u32) -> String {
    format!("harmonylite-change-log-{n}")
}

/// A message as the Go peer marshals `ReplicationEvent[ChangeLogEvent]`.
pub fn go_message(
    from: u64,
    id: i64,
    ty: &str,
    table: &str,
    row: &[Col],
    compress: bool,
) -> Vec<u8> {
    let row = row.iter().map(|(k, v)| (text(k), v.clone())).collect();
    let msg = Cbor::Map(vec![
        (text("FromNodeId"), Cbor::Integer(from.into())),
        (
            text("Payload"),
            Cbor::Map(vec![
                (text("Id"), int(id)),
                (text("Type"), text(ty)),
                (text("TableName"), text(table)),
                (text("Row"), Cbor::Map(row)),
            ]),
        ),
    ]);
    let mut cbor = Vec::new();
    ciborium::into_writer(&msg, &mut cbor).unwrap();
    if compress {
        zstd::stream::encode_all(cbor.as_slice(), 0).unwrap()
    } else {
        cbor
    }
}

/// The Go shard (from 1) of a row with primary key `pk`.
pub fn go_shard(table: &str, pk: &[Col], shards: u32) -> u32 {
    let mut bytes = vec![0x9f];
    ciborium::into_writer(&text(table), &mut bytes).unwrap();
    let mut pk = pk.to_vec();
    pk.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in pk {
        ciborium::into_writer(&Cbor::Array(vec![text(k), v]), &mut bytes).unwrap();
    }
    bytes.push(0xff);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        h ^= u64::from(b);
    }
    (h % u64::from(shards)) as u32 + 1
}

/// A decoded Go message: from, type, table, row.
pub struct GoEvent {
    pub from: u64,
    pub ty: String,
    pub table: String,
    pub row: Vec<(String, Cbor)>,
}

/// Reads a Go message (zstd when it starts with a zstd frame).
pub fn read_go_message(payload: &[u8]) -> GoEvent {
    let plain = if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::decode_all(payload).unwrap()
    } else {
        payload.to_vec()
    };
    let v: Cbor = ciborium::from_reader(plain.as_slice()).unwrap();
    let get = |m: &Cbor, k: &str| -> Cbor {
        m.as_map()
            .unwrap()
            .iter()
            .find(|(key, _)| key.as_text() == Some(k))
            .unwrap_or_else(|| panic!("no {k}"))
            .1
            .clone()
    };
    let payload = get(&v, "Payload");
    GoEvent {
        from: u64::try_from(get(&v, "FromNodeId").as_integer().unwrap()).unwrap(),
        ty: get(&payload, "Type").as_text().unwrap().to_owned(),
        table: get(&payload, "TableName").as_text().unwrap().to_owned(),
        row: get(&payload, "Row")
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_text().unwrap().to_owned(), v.clone()))
            .collect(),
    }
}

/// Every message of a stream, in order, with its headers' `Harmonylite-Go-Copy` value.
pub async fn stream_messages(
    js: &jetstream::Context,
    name: &str,
) -> Vec<(GoEvent, Option<String>)> {
    let mut stream = js.get_stream(name).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let copy = m
            .headers
            .get("Harmonylite-Go-Copy")
            .map(|v| v.as_str().to_owned());
        out.push((read_go_message(&m.payload), copy));
    }
    out
}

/// A simulated Go node: its own SQLite file, publishing and applying Go messages.
pub struct GoPeer {
    pub id: u64,
    pub db: PathBuf,
    js: jetstream::Context,
    shards: u32,
    applier: JoinHandle<()>,
}

impl GoPeer {
    /// Creates the Go streams when missing (as the Go node does) and starts applying them.
    pub async fn start(url: &str, id: u64, db: &Path, shards: u32) -> GoPeer {
        let client = async_nats::connect(url).await.unwrap();
        let js = jetstream::new(client);
        for n in 1..=shards {
            js.get_or_create_stream(stream::Config {
                name: go_stream(n),
                subjects: vec![go_subject(n)],
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::Old,
                max_messages: 1024,
                deny_delete: true,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let applier = tokio::spawn(apply_all(js.clone(), db.to_path_buf(), shards));
        GoPeer {
            id,
            db: db.to_path_buf(),
            js,
            shards,
            applier,
        }
    }

    /// A local write on the Go node (`INSERT OR REPLACE`), then its Go message.
    pub async fn upsert(&self, table: &str, pk: &[Col], row: &[Col]) {
        upsert_row(&self.db, table, row);
        self.publish("update", table, pk, row).await;
    }

    /// A local delete on the Go node, then its Go message (the deleted row).
    pub async fn delete(&self, table: &str, pk: &[Col]) {
        delete_row(&self.db, table, pk);
        self.publish("delete", table, pk, pk).await;
    }

    async fn publish(&self, ty: &str, table: &str, pk: &[Col], row: &[Col]) {
        let shard = go_shard(table, pk, self.shards);
        let payload = go_message(self.id, 1, ty, table, row, true);
        self.js
            .publish(go_subject(shard), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Stops the node (its database stays, as a stopped Go service leaves it).
    pub fn stop(self) {
        self.applier.abort();
    }
}

/// The Go node's listener: every message of every Go stream, in arrival order, applied.
async fn apply_all(js: jetstream::Context, db: PathBuf, shards: u32) {
    let mut streams = futures::stream::SelectAll::new();
    for n in 1..=shards {
        let s = js.get_stream(go_stream(n)).await.unwrap();
        let c = s
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .unwrap();
        streams.push(c.messages().await.unwrap());
    }
    while let Some(Ok(msg)) = streams.next().await {
        let ev = read_go_message(&msg.payload);
        let row: Vec<(&str, Cbor)> = ev
            .row
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        if ev.ty == "delete" {
            // The Go node deletes by the primary key it knows: here always `id`.
            let pk: Vec<Col> = row
                .iter()
                .filter(|(k, _)| *k == "id")
                .map(|(_, v)| ("id", v.clone()))
                .collect();
            delete_row(&db, &ev.table, &pk);
        } else {
            upsert_row(&db, &ev.table, &row);
        }
        msg.ack().await.unwrap();
    }
}

fn sql_value(v: &Cbor) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Cbor::Null => V::Null,
        Cbor::Integer(i) => V::Integer(i64::try_from(*i).unwrap()),
        Cbor::Float(f) => V::Real(*f),
        Cbor::Text(t) => V::Text(t.clone()),
        Cbor::Bytes(b) => V::Blob(b.clone()),
        Cbor::Tag(32, inner) => {
            let secs = inner.as_map().unwrap()[0].1.as_integer().unwrap();
            V::Text(time_text(i64::try_from(secs).unwrap() - TIME_BASE))
        }
        other => panic!("unexpected value {other:?}"),
    }
}

fn connect(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

fn upsert_row(db: &Path, table: &str, row: &[(&str, Cbor)]) {
    let cols: Vec<&str> = row.iter().map(|(k, _)| *k).collect();
    let marks = vec!["?"; cols.len()].join(", ");
    let sql = format!(
        "INSERT OR REPLACE INTO {table}({}) VALUES ({marks})",
        cols.join(", ")
    );
    let values: Vec<rusqlite::types::Value> = row.iter().map(|(_, v)| sql_value(v)).collect();
    connect(db)
        .execute(&sql, rusqlite::params_from_iter(values))
        .unwrap();
}

fn delete_row(db: &Path, table: &str, pk: &[(&str, Cbor)]) {
    let cond: Vec<String> = pk.iter().map(|(k, _)| format!("{k} = ?")).collect();
    let sql = format!("DELETE FROM {table} WHERE {}", cond.join(" AND "));
    let values: Vec<rusqlite::types::Value> = pk.iter().map(|(_, v)| sql_value(v)).collect();
    connect(db)
        .execute(&sql, rusqlite::params_from_iter(values))
        .unwrap();
}
