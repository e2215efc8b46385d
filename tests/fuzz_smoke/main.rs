//! Seeded fuzz smoke run, part of `cargo test`: a few ten thousand cases per parser that reads
//! untrusted bytes (wire decoder, chunk headers and reassembly, config loader, snapshot
//! manifest), from random bytes and from damaged valid encodings. The long coverage-guided runs
//! are the cargo-fuzz targets in `fuzz/`, which share `targets.rs`.
//!
//! Deterministic: case `i` of a target uses `Rng(seed ^ i * K)`, so a failure prints the seed and
//! case and `FUZZ_SMOKE_SEED=<seed> FUZZ_SMOKE_ONLY=<target>` replays it. `FUZZ_SMOKE_CASES`
//! scales the run (default 10000 per target).
//!
//! `FUZZ_SMOKE_CORPUS=<dir>` also writes a seed corpus for the cargo-fuzz targets there.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

// Shared with the cargo-fuzz targets, which use the parts this runner does not.
#[allow(dead_code)]
mod targets;

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Instant;

use harmonylite::replication::wire;
use targets::{Entropy, Rng};

const DEFAULT_SEED: u64 = 0x0048_4152_4d4f_4e59; // "HARMONY"
const DEFAULT_CASES: u64 = 10_000;

/// One target: a name and what one case does with its own generator.
type Case = fn(&mut Rng);

fn wire_bytes(e: &mut Rng) {
    // Mostly past the header, where the decoders start.
    let mut msg = match e.below(4) {
        0 => Vec::new(),
        1 => vec![b'H', b'L', e.u64() as u8, e.u64() as u8],
        _ => vec![b'H', b'L', wire::FORMAT_VERSION, (e.u64() & 1) as u8],
    };
    msg.extend(e.bytes(300));
    targets::check_wire(&msg);
}

fn wire_mutated(e: &mut Rng) {
    targets::check_wire(&targets::gen_wire_message(e));
}

fn chunk_traffic(e: &mut Rng) {
    targets::check_reassembly(e, 16);
}

fn config_text(e: &mut Rng) {
    // Random text over TOML's own alphabet reaches deeper than random bytes.
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz_0123456789 =[]{}\"'.,#-+:\n\t\\";
    let n = e.below(120);
    let text: String = (0..n).map(|_| *e.pick(ALPHABET) as char).collect();
    targets::check_config(&text);
}

fn config_mutated(e: &mut Rng) {
    targets::check_config(&targets::gen_config(e));
}

fn manifest_bytes(e: &mut Rng) {
    let bytes = e.bytes(200);
    targets::check_manifest(&bytes);
}

fn manifest_mutated(e: &mut Rng) {
    targets::check_manifest(&targets::gen_manifest(e));
}

const TARGETS: &[(&str, Case)] = &[
    ("wire_bytes", wire_bytes),
    ("wire_mutated", wire_mutated),
    ("chunk_traffic", chunk_traffic),
    ("config_text", config_text),
    ("config_mutated", config_mutated),
    ("manifest_bytes", manifest_bytes),
    ("manifest_mutated", manifest_mutated),
];

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={v}: {e}"))
        }
        Err(_) => default,
    }
}

/// A compressed message of one table (one key column, no other) whose rows array is `head`,
/// `n` copies of `row`, then `tail`; compressed as it is written, so the test never holds the
/// plain CBOR the decoder will.
fn crafted(head: &[u8], row: &[u8], n: usize, tail: &[u8]) -> Vec<u8> {
    let batch = harmonylite::change::ChangeBatch {
        origin: harmonylite::ids::NodeId(1),
        schema_hash: "h".into(),
        tables: vec![harmonylite::change::TableChanges {
            table: "t".into(),
            key_columns: vec![],
            columns: vec![],
            rows: vec![],
        }],
    };
    let mut cbor = wire::encode(&batch, false).unwrap().split_off(4);
    assert_eq!(
        cbor.pop(),
        Some(0x80),
        "the empty rows array ends the batch"
    );
    let mut z = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    z.write_all(&cbor).unwrap();
    z.write_all(head).unwrap();
    for _ in 0..n {
        z.write_all(row).unwrap();
    }
    z.write_all(tail).unwrap();
    let mut msg = vec![b'H', b'L', wire::FORMAT_VERSION, wire::FLAG_ZSTD];
    msg.extend(z.finish().unwrap());
    msg
}

/// A tombstone row whose key array is `key` followed by `n` copies of `value`, then `tail`.
fn tombstone(key: &[u8], n: usize, value: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut row = vec![
        0xa6, 0x61, b'v', 1, 0x61, b'n', 1, 0x61, b'o', 1, 0x61, b'd', 0xf5,
    ];
    row.extend([0x61, b'k']);
    row.extend_from_slice(key);
    for _ in 0..n {
        row.extend_from_slice(value);
    }
    row.extend_from_slice(tail);
    row.extend([0x61, b'c', 0x80]);
    row
}

/// Messages whose CBOR builds far more memory than it takes (a 2-byte null becomes a 32-byte
/// `Value`, a 21-byte row 112 bytes and more): refused within the decode budget. Peak memory is
/// measured per case after resetting the high-water mark (`clear_refs` 5), so it includes the
/// decompressed buffer the decoder holds (up to `MAX_DECODED_BYTES`).
fn amplification() {
    const NULL: &[u8] = &[0x61, b'n'];
    let len32 = |n: usize| {
        let mut h = vec![0x9a];
        h.extend((n as u32).to_be_bytes());
        h
    };
    let one_null_key = tombstone(&[0x81], 1, NULL, &[]);
    // As many tiny rows as fit under `MAX_DECODED_BYTES`.
    let rows = (wire::MAX_DECODED_BYTES - 64) / one_null_key.len();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "8 million nulls in a key, announced",
            crafted(
                &[0x81],
                &tombstone(&len32(8_000_000), 8_000_000, NULL, &[]),
                1,
                &[],
            ),
        ),
        (
            "8 million nulls in a key, indefinite",
            crafted(
                &[0x81],
                &tombstone(&[0x9f], 8_000_000, NULL, &[0xff]),
                1,
                &[],
            ),
        ),
        (
            "tiny rows up to the size cap, announced",
            crafted(&len32(rows), &one_null_key, rows, &[]),
        ),
        (
            "tiny rows up to the size cap, indefinite",
            crafted(&[0x9f], &one_null_key, rows, &[0xff]),
        ),
    ];
    for (name, msg) in cases {
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let before = peak_rss_bytes();
        let started = Instant::now();
        let result = wire::decode(&msg);
        let elapsed = started.elapsed();
        let grown = peak_rss_bytes().saturating_sub(before);
        assert!(
            matches!(
                result,
                Err(wire::WireError::OverBudget { .. } | wire::WireError::TooManyEntries { .. })
            ),
            "{name}: {result:?}"
        );
        println!(
            "fuzz_smoke: {name}: {} byte message refused in {elapsed:.2?}, peak memory +{} MiB{}",
            msg.len(),
            grown >> 20,
            if reset {
                ""
            } else {
                " (high-water mark not reset)"
            }
        );
        // Decompressed buffer + the budget's structures with allocator overhead.
        assert!(
            grown < (wire::MAX_DECODED_BYTES + 3 * harmonylite::change::DECODE_BUDGET_BYTES) as u64,
            "{name}: peak memory grew by {grown} bytes"
        );
    }
}

/// Fixed cases that random generation reaches too rarely: decompression bombs of several
/// sizes must be refused without holding more than the decoder's limit.
fn bombs() {
    for size in [wire::MAX_DECODED_BYTES + 1, 1 << 30, 4 << 30] {
        let mut msg = vec![b'H', b'L', wire::FORMAT_VERSION, wire::FLAG_ZSTD];
        msg.extend(targets::zstd_bomb(size));
        let started = Instant::now();
        let result = wire::decode(&msg);
        assert!(
            matches!(result, Err(wire::WireError::DecompressedTooLarge { .. })),
            "a {size}-byte bomb of {} bytes gave {result:?}",
            msg.len()
        );
        println!(
            "fuzz_smoke: bomb of {size} bytes from a {} byte message refused in {:?}",
            msg.len(),
            started.elapsed()
        );
    }
    // The decoder stops reading at its limit: the peak memory stays near it, however large
    // the bomb (read_to_end may double its buffer once).
    let peak = peak_rss_bytes();
    assert!(
        peak < 3 * wire::MAX_DECODED_BYTES as u64,
        "peak RSS {peak} bytes after the bombs"
    );
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Writes seed inputs for the cargo-fuzz targets (`fuzz/README.md`).
fn write_corpus(dir: &Path, seed: u64) {
    let write = |target: &str, i: usize, bytes: &[u8]| {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("seed-{i:03}")), bytes).unwrap();
    };
    let mut e = Rng(seed);
    for i in 0..32 {
        let batch = targets::gen_batch(&mut e);
        write("wire_decode", i, &wire::encode(&batch, i % 2 == 0).unwrap());
    }
    write("config_toml", 0, targets::VALID_CONFIG.as_bytes());
    write("config_toml", 1, b"db_path = \"/tmp/x.db\"\n");
    write("manifest", 0, &targets::valid_manifest().to_json());
    for (i, header) in ["0/1", "3/4", "0/4294967295"].iter().enumerate() {
        let mut input = header.as_bytes().to_vec();
        input.extend([0, 1, 2, 3]);
        write("chunk", i, &input);
    }
    println!("fuzz_smoke: seed corpus written to {}", dir.display());
}

fn main() {
    let seed = env_u64("FUZZ_SMOKE_SEED", DEFAULT_SEED);
    let cases = env_u64("FUZZ_SMOKE_CASES", DEFAULT_CASES);
    let only = std::env::var("FUZZ_SMOKE_ONLY").ok();
    if let Ok(dir) = std::env::var("FUZZ_SMOKE_CORPUS") {
        write_corpus(Path::new(&dir), seed);
    }
    // `cargo test -- --list` and filters: this binary has one test, named after itself.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("fuzz_smoke: test");
        return;
    }
    if let Some(filter) = args.iter().find(|a| !a.starts_with('-'))
        && !"fuzz_smoke".contains(filter.as_str())
    {
        return;
    }
    // Panics are the finding: report them once, with the case that caused them.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for (name, case) in TARGETS {
        if only.as_deref().is_some_and(|o| o != *name) {
            continue;
        }
        let started = Instant::now();
        for i in 0..cases {
            let case_seed = seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d);
            let outcome = catch_unwind(AssertUnwindSafe(|| case(&mut Rng(case_seed))));
            if let Err(panic) = outcome {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                eprintln!(
                    "fuzz_smoke: {name} case {i} panicked: {message}\n  replay: \
                     FUZZ_SMOKE_SEED={seed:#x} FUZZ_SMOKE_ONLY={name} (case seed {case_seed:#x})"
                );
                failed = true;
                break;
            }
        }
        let elapsed = started.elapsed();
        println!(
            "fuzz_smoke: {name}: {cases} cases in {elapsed:.2?} ({:.0}/s)",
            cases as f64 / elapsed.as_secs_f64()
        );
    }
    if only.is_none() {
        let _ = std::panic::take_hook();
        amplification();
        bombs();
    }
    if failed {
        std::process::exit(1);
    }
    println!("fuzz_smoke: ok (seed {seed:#x})");
}
