//! The fuzz targets, shared by the seeded smoke run (`tests/fuzz_smoke/main.rs`, part of
//! `cargo test`) and the coverage-guided cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, which
//! include this file by path).
//!
//! Each `check_*` function feeds one input to a parser and asserts the contract: it returns,
//! and every failure is an error value with a message (a panic is the bug being hunted). Each
//! `gen_*` function builds a structured input (a valid encoding, then mutated) from an
//! `Entropy` source: a seeded PRNG in the smoke run, the fuzzer's input bytes under cargo-fuzz.

use std::time::{Duration, Instant};

use harmonylite::change::{ChangeBatch, RowChange, TableChanges, Value};
use harmonylite::config::{Config, ConfigError};
use harmonylite::ids::NodeId;
use harmonylite::replication::chunk::{self, Added, Reassembly};
use harmonylite::replication::wire;
use harmonylite::snapshot::manifest::{MANIFEST_FORMAT, Manifest};

/// A source of choices.
pub trait Entropy {
    fn u64(&mut self) -> u64;

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.u64() % n as u64) as usize
        }
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.u64() as u8).collect()
    }
}

/// SplitMix64: tiny, fast and the same on every platform, so a seed reproduces a case.
pub struct Rng(pub u64);

impl Entropy for Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The fuzzer's bytes as choices; zeros once they run out, so every input is usable.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }
}

impl Entropy for Input<'_> {
    fn u64(&mut self) -> u64 {
        let mut word = [0u8; 8];
        let take = self.data.len().saturating_sub(self.pos).min(8);
        word[..take].copy_from_slice(&self.data[self.pos..self.pos + take]);
        self.pos += take;
        u64::from_le_bytes(word)
    }
}

// ---------------------------------------------------------------------------------------------
// Wire decoder

/// Decodes a message. A success must be a batch the encoder reproduces; a failure an error.
pub fn check_wire(bytes: &[u8]) {
    match wire::decode(bytes) {
        Ok(batch) => {
            for t in &batch.tables {
                let key_len = t.key_columns.len().max(1);
                for r in &t.rows {
                    assert_eq!(r.key.len(), key_len, "decode let a bad key through");
                    let want = if r.deleted { 0 } else { t.columns.len() };
                    assert_eq!(r.values.len(), want, "decode let bad values through");
                }
            }
            // What decodes must survive a round trip (the consumer re-encodes nothing, but a
            // batch the encoder cannot reproduce would show a decoder accepting garbage).
            for compress in [false, true] {
                let again = wire::encode(&batch, compress).expect("a decoded batch encodes");
                let back = wire::decode(&again).expect("a re-encoded batch decodes");
                assert!(same_batch(&batch, &back), "round trip changed the batch");
            }
        }
        Err(error) => assert!(!error.to_string().is_empty(), "error without a message"),
    }
}

/// Equality with `Real` compared by bits (NaN is a legal payload on the wire).
fn same_batch(a: &ChangeBatch, b: &ChangeBatch) -> bool {
    let same_values =
        |x: &[Value], y: &[Value]| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.same_as(q));
    a.origin == b.origin
        && a.schema_hash == b.schema_hash
        && a.tables.len() == b.tables.len()
        && a.tables.iter().zip(&b.tables).all(|(s, t)| {
            s.table == t.table
                && s.key_columns == t.key_columns
                && s.columns == t.columns
                && s.rows.len() == t.rows.len()
                && s.rows.iter().zip(&t.rows).all(|(r, q)| {
                    (r.version, r.node, r.origin, r.deleted)
                        == (q.version, q.node, q.origin, q.deleted)
                        && same_values(&r.key, &q.key)
                        && same_values(&r.values, &q.values)
                })
        })
}

fn gen_value(e: &mut impl Entropy) -> Value {
    match e.below(5) {
        0 => Value::Null,
        1 => Value::Integer(e.u64() as i64),
        2 => Value::Real(f64::from_bits(e.u64())),
        3 => Value::Text(e.bytes(24)),
        _ => Value::Blob(e.bytes(24)),
    }
}

/// A valid batch of a few tables and rows.
pub fn gen_batch(e: &mut impl Entropy) -> ChangeBatch {
    let tables = (0..1 + e.below(3))
        .map(|t| {
            let keys = e.below(3);
            let columns: Vec<String> = (0..1 + e.below(4)).map(|c| format!("c{c}")).collect();
            let rows = (0..e.below(6))
                .map(|_| {
                    let deleted = e.one_in(3);
                    RowChange {
                        version: e.u64(),
                        node: NodeId(e.u64() % 8),
                        origin: NodeId(e.u64() % 8),
                        deleted,
                        key: (0..keys.max(1)).map(|_| gen_value(e)).collect(),
                        values: if deleted {
                            vec![]
                        } else {
                            columns.iter().map(|_| gen_value(e)).collect()
                        },
                    }
                })
                .collect();
            TableChanges {
                table: format!("t{t}"),
                key_columns: (0..keys).map(|k| format!("c{k}")).collect(),
                columns,
                rows,
            }
        })
        .collect();
    ChangeBatch {
        origin: NodeId(e.u64() % 8),
        schema_hash: "ab".repeat(e.below(33)),
        tables,
    }
}

/// Byte-level damage: flips, overwrites with interesting bytes, inserts, deletions,
/// truncation, extension, splices of a region.
pub fn mutate_bytes(e: &mut impl Entropy, bytes: &mut Vec<u8>) {
    const INTERESTING: [u8; 10] = [0x00, 0xff, 0x7f, 0x80, 0x1b, 0x3b, 0x5b, 0x9f, 0xbf, 0xfb];
    for _ in 0..1 + e.below(4) {
        let len = bytes.len();
        match e.below(7) {
            0 if len > 0 => bytes[e.below(len)] ^= 1 << e.below(8),
            1 if len > 0 => bytes[e.below(len)] = *e.pick(&INTERESTING),
            2 => bytes.insert(e.below(len + 1), e.u64() as u8),
            3 if len > 0 => {
                bytes.remove(e.below(len));
            }
            4 => bytes.truncate(e.below(len + 1)),
            5 => {
                let extra = e.bytes(64);
                bytes.extend(extra);
            }
            _ if len > 1 => {
                // Repeat a region: duplicated CBOR items, lengths that disagree with content.
                let start = e.below(len);
                let end = start + 1 + e.below(len - start);
                let region = bytes[start..end].to_vec();
                let at = e.below(bytes.len() + 1);
                bytes.splice(at..at, region);
            }
            _ => {}
        }
    }
}

/// A valid message, damaged in its CBOR body (then compressed or not) or as a whole.
pub fn gen_wire_message(e: &mut impl Entropy) -> Vec<u8> {
    let batch = gen_batch(e);
    let compress = e.one_in(2);
    if e.one_in(2) {
        // Damage the CBOR body and compress afterwards, so the CBOR decoder behind zstd is
        // reached with bad input (byte damage of a zstd frame mostly stops at zstd).
        let mut plain = wire::encode(&batch, false).expect("a generated batch encodes");
        let mut body = plain.split_off(4);
        mutate_bytes(e, &mut body);
        if compress {
            plain[3] = wire::FLAG_ZSTD;
            body = zstd::stream::encode_all(body.as_slice(), 1).expect("compressing in memory");
        }
        plain.extend(body);
        plain
    } else {
        let mut bytes = wire::encode(&batch, compress).expect("a generated batch encodes");
        mutate_bytes(e, &mut bytes);
        bytes
    }
}

/// A zstd frame of RLE blocks that inflates to `size` zero bytes from about `size / 32768`
/// bytes: a decompression bomb without compressing anything.
pub fn zstd_bomb(size: usize) -> Vec<u8> {
    const BLOCK: usize = 128 * 1024;
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd];
    // Frame header: no content size, no checksum, no dictionary; window 2^17 (one block).
    frame.extend([0x00, 0x38]);
    let blocks = size.div_ceil(BLOCK).max(1);
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        // Block header: last flag, block type 1 (RLE), regenerated size; then the byte.
        let header = last | (1 << 1) | ((BLOCK as u32) << 3);
        frame.extend(&header.to_le_bytes()[..3]);
        frame.push(0);
    }
    frame
}

// ---------------------------------------------------------------------------------------------
// Chunk headers and reassembly

/// Parses a chunk header; anything accepted must be a position inside its set.
pub fn check_chunk_header(text: &str) {
    if let Some((index, total)) = chunk::parse_header(text) {
        assert!(index < total, "{text:?} parsed to {index}/{total}");
    }
}

/// Random chunk traffic against one reassembly buffer, as a hostile or broken publisher would
/// send it: arbitrary ids, positions and totals, duplicates, sets that never complete.
pub fn check_reassembly(e: &mut impl Entropy, ops: usize) {
    const IDS: [&str; 4] = ["a", "b", "c", "d"];
    let mut r = Reassembly::default();
    let start = Instant::now();
    for _ in 0..ops {
        let header = match e.below(4) {
            0 => format!("{}/{}", e.u64() as u32, e.u64() as u32),
            1 => format!("{}/{}", e.below(4), 1 + e.below(4)),
            2 => format!("{}/{}", e.below(4), u32::MAX - e.below(2) as u32),
            _ => String::from_utf8_lossy(&e.bytes(12)).into_owned(),
        };
        check_chunk_header(&header);
        // `add` is public: positions that no header parses to must be refused by it too.
        let (index, total) = match chunk::parse_header(&header) {
            Some(position) => position,
            None if e.one_in(2) => (e.u64() as u32, e.u64() as u32 >> e.below(32)),
            None => continue,
        };
        let data = e.bytes(16);
        let now = start + Duration::from_secs(e.below(2) as u64 * 700);
        match r.add(e.pick::<&str>(&IDS), index, total, data.into(), now) {
            Added::Complete { pieces, .. } => {
                assert!(index < total && total <= chunk::MAX_CHUNKS);
                assert_eq!(pieces.len(), total as usize);
                assert!(chunk::join(pieces).len() <= 16 * total as usize);
            }
            Added::Pending { .. } | Added::Duplicate | Added::Deferred => {}
            Added::Malformed(reason) | Added::SetRefused(reason) => assert!(!reason.is_empty()),
        }
        if e.one_in(8) {
            r.expire(now);
        }
        // Sets are keyed by id and total; what is held stays within the budget.
        assert!(r.held_chunks() <= chunk::MAX_HELD_CHUNKS);
        assert!(r.held_bytes() <= chunk::MAX_BYTES);
    }
}

// ---------------------------------------------------------------------------------------------
// Config loader

/// A config with every section and most keys set to valid values.
pub const VALID_CONFIG: &str = r#"db_path = "/var/lib/harmonylite/data.db"
node_id = 3
seq_map_path = "/var/lib/harmonylite/seq-map.cbor"
data_dir = "/var/lib/harmonylite/node-3"
publish = true
replicate = true
scan_max_changes = 512
cleanup_interval = 5000
sleep_timeout = 0
polling_interval = 50

[replication_log]
shards = 4
max_entries = 1024
replicas = 1
compress = true
update_existing = false

[replication]
max_payload_mb = 8

[sharding]
ignore_tables = ["sessions", "cache"]

[snapshot]
enabled = true
store = "s3"
interval = 3600000
leader_ttl = 30000
keep = 3

[snapshot.nats]
replicas = 1
bucket = "snapshots"

[snapshot.s3]
endpoint = "s3.example.com"
path = "harmonylite"
bucket = "backups"
use_ssl = true
access_key = "AKIA"
secret = "hunter2"
region = "eu-west-1"
force_path_style = true

[snapshot.webdav]
url = "https://dav.example.com/x?dir=/s&login=u&secret=p"

[snapshot.sftp]
url = "sftp://user:pass@host:22/path"

[nats]
urls = ["nats://127.0.0.1:4222", "tls://nats.example.com:4222"]
subject_prefix = "harmonylite-change-log"
stream_prefix = "harmonylite-changes"
bind_address = "0.0.0.0:4222"
connect_retries = 5
reconnect_wait_seconds = 2
user_name = "u"
user_password = "p"
tls_ca_file = "/etc/ca.pem"

[prometheus]
enable = true
bind = "0.0.0.0:3010"
namespace = "harmonylite"
subsystem = "node"

[logging]
verbose = true
format = "json"

[health_check]
enable = true
bind = "0.0.0.0:8090"
path = "/health"
detailed = true

[admin]
enable = true
bind = "127.0.0.1:8091"
auth_token = "t"

[schema]
recheck_interval_ms = 300000
registry_refresh_ms = 30000
"#;

/// Values of every TOML type and of the awkward corners of each.
const TOML_VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "64",
    "65",
    "4294967296",
    "-9223372036854775808",
    "9223372036854775807",
    "18446744073709551616",
    "1e400",
    "nan",
    "-inf",
    "1.5",
    "true",
    "false",
    "\"\"",
    "\" \"",
    "\"x\"",
    "\"s3\"",
    "\"fs\"",
    "\"nats\"",
    "\"json\"",
    "\":0\"",
    "\"[::1]:80\"",
    "\"::1:80\"",
    "\"host:99999\"",
    "\"0.0.0.0:-1\"",
    "\"a.b\"",
    "\"\\u0000\"",
    "\"\\uD800\"",
    "'lit'",
    "\"\"\"multi\nline\"\"\"",
    "[]",
    "[1, \"a\"]",
    "[\"\"]",
    "{}",
    "{ a = 1 }",
    "1979-05-27",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "0x1F",
    "0o7",
    "0b1",
    "1_000",
    "\"nats://\"",
    "\"sftp://\"",
    "\"http://u:p@h\"",
];

const TOML_KEYS: &[&str] = &[
    "db_path",
    "node_id",
    "shards",
    "max_entries",
    "replicas",
    "store",
    "bind",
    "bind_address",
    "urls",
    "path",
    "url",
    "format",
    "leader_ttl",
    "keep",
    "max_payload_mb",
    "ignore_tables",
    "namespace",
    "subsystem",
    "enable",
    "auth_token",
    "tls_cert_file",
    "cert_file",
    "key_file",
    "unknown",
    "a.b",
    "\"quoted key\"",
    "registry_refresh_ms",
    "scan_max_changes",
];

const TOML_HEADERS: &[&str] = &[
    "[nats]",
    "[snapshot]",
    "[snapshot.s3]",
    "[[nats]]",
    "[snapshot.nope]",
    "[a.b.c]",
    "[",
    "[replication_log]",
    "[admin]",
    "[health_check]",
    "[prometheus]",
    "[schema]",
    "[ nats ]",
];

/// Loads config text. A success must validate again; a failure must be an error that names a
/// line when it comes from the text's syntax or a key.
pub fn check_config(text: &str) {
    match Config::from_toml_str(text) {
        Ok(cfg) => {
            cfg.validate().expect("a loaded config validates");
            let _ = (cfg.data_dir(), cfg.seq_map_path(), cfg.max_payload_bytes());
            let _ = (
                cfg.polling_interval(),
                cfg.cleanup_interval(),
                cfg.snapshot_interval(),
            );
        }
        Err(error) => {
            assert!(!error.to_string().is_empty(), "error without a message");
            if let ConfigError::Parse { .. } | ConfigError::UnknownKey { .. } = error {
                assert!(error.line().is_some(), "{error} names no line");
            }
        }
    }
}

/// The valid config with line-level mutations: values replaced by values of other types or
/// out of range, lines deleted, duplicated or moved, unknown keys and sections added.
pub fn gen_config(e: &mut impl Entropy) -> String {
    let mut lines: Vec<String> = VALID_CONFIG.lines().map(str::to_owned).collect();
    for _ in 0..1 + e.below(4) {
        let n = lines.len();
        let i = e.below(n);
        match e.below(8) {
            0 | 1 => {
                if let Some((key, _)) = lines[i].split_once(" = ") {
                    lines[i] = format!("{key} = {}", e.pick(TOML_VALUES));
                }
            }
            2 => {
                lines.remove(i);
            }
            3 => {
                let copy = lines[i].clone();
                let at = e.below(n + 1);
                lines.insert(at, copy);
            }
            4 => lines.insert(
                i,
                format!("{} = {}", e.pick(TOML_KEYS), e.pick(TOML_VALUES)),
            ),
            5 => lines.insert(i, (*e.pick(TOML_HEADERS)).to_owned()),
            6 => {
                let mut bytes = lines[i].clone().into_bytes();
                mutate_bytes(e, &mut bytes);
                lines[i] = String::from_utf8_lossy(&bytes).into_owned();
            }
            _ => {
                let line = lines.remove(i);
                lines.insert(e.below(n), line);
            }
        }
    }
    lines.join("\n")
}

// ---------------------------------------------------------------------------------------------
// Snapshot manifest

/// Parses a manifest. A success must pass its own checks and survive a round trip.
pub fn check_manifest(bytes: &[u8]) {
    match Manifest::parse(bytes) {
        Ok(m) => {
            m.check().expect("a parsed manifest passes its checks");
            assert_eq!(Manifest::parse(&m.to_json()).as_ref(), Ok(&m));
            let _ = (m.data_name(), m.manifest_name());
        }
        Err(error) => assert!(!error.to_string().is_empty(), "error without a message"),
    }
}

/// A valid manifest.
pub fn valid_manifest() -> Manifest {
    let created_ms = 1_764_000_000_000;
    Manifest {
        format: MANIFEST_FORMAT,
        id: Manifest::make_id(created_ms, 3),
        node_id: 3,
        created_ms,
        size: 1234,
        raw_size: 8192,
        sha256: "ab".repeat(32),
        schema_hash: "cd".repeat(32),
        sequences: [
            ("harmonylite-changes-0".to_owned(), 42),
            ("harmonylite-changes-1".to_owned(), 7),
        ]
        .into(),
        harmonylite_version: "0.1.0".to_owned(),
        signature: None,
    }
}

/// A valid manifest with JSON-level mutations (fields replaced by values of any JSON type,
/// removed, added), then sometimes byte damage.
pub fn gen_manifest(e: &mut impl Entropy) -> Vec<u8> {
    const FIELDS: [&str; 11] = [
        "format",
        "id",
        "node_id",
        "created_ms",
        "size",
        "raw_size",
        "sha256",
        "schema_hash",
        "sequences",
        "harmonylite_version",
        "extra",
    ];
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("a JSON literal");
    let values = [
        "null",
        "0",
        "1",
        "-1",
        "1.5",
        "1e308",
        "18446744073709551615",
        "18446744073709551616",
        "true",
        "\"\"",
        "\"x\"",
        "\"1764000000000-3\"",
        "[]",
        "{}",
        "{\"a\": 1}",
        "{\"harmonylite-changes-0\": -1}",
        "{\"\": 1}",
        "{\"a.b\": 1}",
        "\"\\u0000\"",
    ];
    let mut doc = serde_json::to_value(valid_manifest()).expect("a manifest is JSON");
    let object = doc.as_object_mut().expect("a manifest is a JSON object");
    for _ in 0..1 + e.below(3) {
        let field = *e.pick(&FIELDS);
        match e.below(3) {
            0 => {
                object.remove(field);
            }
            _ => {
                object.insert(field.to_owned(), json(e.pick::<&str>(&values)));
            }
        }
    }
    let mut bytes = serde_json::to_vec(&doc).expect("a JSON value serialises");
    if e.one_in(3) {
        mutate_bytes(e, &mut bytes);
    }
    bytes
}
