//! Snapshot benchmark: take (`VACUUM INTO`, strip, zstd, SHA-256), upload to a local-directory
//! store, download and verify (hashed and decompressed as it arrives, integrity check), and
//! install (backup API, capture) a database of `BENCH_ROWS` rows (default 1,000,000) with
//! capture installed. A plain file copy of the same database is printed beside them as the
//! floor.
//!
//! Run: `cargo bench --bench snapshot` (release). Prints figures; asserts nothing but that the
//! restored database holds every row. Beside each step's time: the peak resident memory of this
//! process during the step, and the peak disk the step used in the work directory beyond what it
//! held before (`Watch`). `BENCH_ROWS=20000000` makes a database of about 2 GB.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use harmonylite::config::{Config, SnapshotStore};
use harmonylite::db::WriterHandle;
use harmonylite::ids::NodeId;
use harmonylite::metrics::Metrics;
use harmonylite::snapshot::restore::{Needs, fetch_newest, install};
use harmonylite::snapshot::store::Store;
use harmonylite::snapshot::{create, history};
use rusqlite::Connection;

#[path = "../tests/common/memory.rs"]
#[allow(dead_code)] // only `rss_kib` here
mod memory;

fn main() {
    let rows: i64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let config = |node: u64| {
        let mut cfg = Config {
            db_path: dir.path().join(format!("node{node}.db")),
            node_id: Some(node),
            seq_map_path: Some(dir.path().join(format!("seq-{node}.cbor"))),
            data_dir: Some(dir.path().join(format!("data-{node}"))),
            ..Config::default()
        };
        cfg.snapshot.store = SnapshotStore::Fs;
        cfg.snapshot.fs.path = dir.path().join("store").to_string_lossy().into_owned();
        cfg
    };
    let src = config(1);
    fill_source(&runtime, &src, rows);
    let db_bytes = std::fs::metadata(&src.db_path).expect("size").len();

    let started = Instant::now();
    std::fs::copy(&src.db_path, dir.path().join("plain-copy.db")).expect("copy");
    let copy_s = started.elapsed().as_secs_f64();

    let watch = Watch::start(dir.path().to_path_buf());
    let started = Instant::now();
    let taken = create::take(
        &src.db_path,
        &dir.path().join("work"),
        NodeId(1),
        &[],
        1_764_000_000_000,
    )
    .expect("take");
    let take_s = started.elapsed().as_secs_f64();
    let take_peak = watch.peaks_and_reset();
    let manifest = taken.manifest.clone();
    let steps = runtime.block_on(upload_and_restore(&src, &config(2), &taken, rows, &watch));
    let mib = |kib: u64| kib as f64 / 1024.0;
    let peaks = |(rss, disk): (u64, u64)| {
        format!(
            "peak RSS {:.0} MiB, peak extra disk {:.0} MiB",
            mib(rss),
            disk as f64 / 1048576.0
        )
    };

    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "snapshot benchmark: {rows} rows, database {:.1} MB (capture installed)",
        mb(db_bytes)
    );
    println!("  plain file copy (floor)       {copy_s:>7.2} s");
    println!(
        "  take (VACUUM INTO+zstd+hash)  {take_s:>7.2} s  {:.1} MB raw -> {:.1} MB stored ({:.1}x)",
        mb(manifest.raw_size),
        mb(manifest.size),
        manifest.raw_size as f64 / manifest.size as f64
    );
    println!("    {}", peaks(take_peak));
    println!(
        "  upload to fs store            {:>7.2} s  {}",
        steps.upload.0,
        peaks(steps.upload.1)
    );
    println!(
        "  download and verify           {:>7.2} s  (download, hash and decompress as it arrives, integrity_check)",
        steps.fetch.0
    );
    println!("    {}", peaks(steps.fetch.1));
    println!(
        "  install                       {:>7.2} s  (backup API through the WAL, capture)",
        steps.install.0
    );
    println!("    {}", peaks(steps.install.1));
    let restore_s = steps.fetch.0 + steps.install.0;
    println!(
        "  take / copy {:.1}x, restore / copy {:.1}x",
        take_s / copy_s.max(1e-6),
        restore_s / copy_s.max(1e-6)
    );
}

/// The source database: an `items` table with capture installed, then `rows` rows.
fn fill_source(runtime: &tokio::runtime::Runtime, src: &Config, rows: i64) {
    {
        let conn = Connection::open(&src.db_path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, n INTEGER, body TEXT);",
        )
        .expect("schema");
    }
    runtime.block_on(async {
        let writer = WriterHandle::spawn(&src.db_path, NodeId(1), vec![]).expect("writer");
        writer.install_capture().await.expect("capture");
        writer.close().await.expect("close");
    });
    let mut conn = Connection::open(&src.db_path).expect("open");
    let tx = conn.transaction().expect("tx");
    {
        let mut insert = tx
            .prepare("INSERT INTO items VALUES (?1, ?2, ?3, ?4)")
            .expect("prepare");
        for id in 0..rows {
            insert
                .execute(rusqlite::params![
                    id,
                    format!("item {id}"),
                    id * 7,
                    format!("some text for row {id} that repeats a little")
                ])
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
}

/// Each step's time (s) and peaks (`Watch::peaks_and_reset`).
struct Steps {
    upload: (f64, (u64, u64)),
    fetch: (f64, (u64, u64)),
    install: (f64, (u64, u64)),
}

/// Uploads `taken` to the fs store, then downloads, verifies and installs it into `dst`.
async fn upload_and_restore(
    src: &Config,
    dst: &Config,
    taken: &create::Taken,
    rows: i64,
    watch: &Watch,
) -> Steps {
    let store = Store::open(src, None).await.expect("store");
    let started = Instant::now();
    history::publish(&store, taken, &|_, _| {})
        .await
        .expect("publish");
    let upload = (started.elapsed().as_secs_f64(), watch.peaks_and_reset());
    let writer = WriterHandle::spawn(&dst.db_path, NodeId(2), vec![]).expect("writer");
    let metrics = Metrics::new(&Default::default(), NodeId(2)).expect("metrics");
    let started = Instant::now();
    let fetched = fetch_newest(&store, dst, &metrics, &Needs::default())
        .await
        .expect("download")
        .expect("the snapshot is found");
    let fetch = (started.elapsed().as_secs_f64(), watch.peaks_and_reset());
    let started = Instant::now();
    install(fetched, dst, &writer, &metrics, false)
        .await
        .expect("install");
    let install = (started.elapsed().as_secs_f64(), watch.peaks_and_reset());
    let conn = Connection::open(&dst.db_path).expect("open restored");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, rows, "every row restored");
    Steps {
        upload,
        fetch,
        install,
    }
}

/// Samples this process's RSS (every 20 ms) and the work directory's size (every 200 ms) in a
/// thread; `peaks_and_reset` returns the peaks since the last call (RSS in KiB, disk in bytes
/// beyond the size at that call) and starts over.
struct Watch {
    rss_peak: Arc<AtomicU64>,
    disk_peak: Arc<AtomicU64>,
    disk_base: Arc<AtomicU64>,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Watch {
    fn start(dir: PathBuf) -> Watch {
        let watch = Watch {
            rss_peak: Arc::default(),
            disk_peak: Arc::default(),
            disk_base: Arc::new(AtomicU64::new(dir_bytes(&dir))),
            dir,
            stop: Arc::default(),
        };
        let (rss, disk, stop, dir) = (
            watch.rss_peak.clone(),
            watch.disk_peak.clone(),
            watch.stop.clone(),
            watch.dir.clone(),
        );
        std::thread::spawn(move || {
            for tick in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                rss.fetch_max(memory::rss_kib(std::process::id()), Ordering::Relaxed);
                if tick % 10 == 0 {
                    disk.fetch_max(dir_bytes(&dir), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        watch
    }

    fn peaks_and_reset(&self) -> (u64, u64) {
        let now = dir_bytes(&self.dir);
        let disk = self.disk_peak.swap(now, Ordering::Relaxed).max(now);
        let base = self.disk_base.swap(now, Ordering::Relaxed);
        let rss = self
            .rss_peak
            .swap(memory::rss_kib(std::process::id()), Ordering::Relaxed);
        (rss, disk.saturating_sub(base))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}
