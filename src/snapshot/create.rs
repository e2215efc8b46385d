//! Taking a snapshot file: `VACUUM INTO` a temp file in the data directory (one read
//! transaction, so application writers keep going and the copy is consistent), strip our
//! triggers and this node's conflict journal, keep the clock tables (a restored node compares
//! versions with them) and the applied sequences (they become the manifest's), then compress
//! with zstd while hashing the compressed bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use super::SnapshotError;
use super::manifest::{MANIFEST_FORMAT, Manifest};
use crate::catalog::schema_hash;
use crate::ids::NodeId;
use crate::sql::internal::{ACCEPTED_GAPS, CONFLICTS, GUARD, PREFIX, read_positions};
use crate::sql::quote_ident;

/// zstd level: 3 is zstd's default, a good ratio at hundreds of MB/s.
const ZSTD_LEVEL: i32 = 3;

/// A snapshot ready to upload.
#[derive(Debug)]
pub struct Taken {
    /// The compressed file (`<work_dir>/<id>.db.zst`); the caller removes it.
    pub file: PathBuf,
    pub manifest: Manifest,
}

/// Takes a snapshot of `db_path` into `work_dir`. Blocking: run on `spawn_blocking`.
pub fn take(
    db_path: &Path,
    work_dir: &Path,
    node: NodeId,
    ignore: &[String],
    now_ms: u64,
) -> Result<Taken, SnapshotError> {
    let id = Manifest::make_id(now_ms, node.0);
    std::fs::create_dir_all(work_dir).map_err(|e| SnapshotError::io("creating", work_dir, e))?;
    let raw = work_dir.join(format!("{id}.db.tmp"));
    let file = work_dir.join(format!("{id}.db.zst"));
    let result = copy_and_prepare(db_path, &raw, ignore).and_then(|(sequences, schema)| {
        let raw_size = std::fs::metadata(&raw)
            .map_err(|e| SnapshotError::io("reading", &raw, e))?
            .len();
        let (size, sha256) = compress(&raw, &file)?;
        Ok(Manifest {
            format: MANIFEST_FORMAT,
            id: id.clone(),
            node_id: node.0,
            created_ms: now_ms,
            size,
            raw_size,
            sha256,
            schema_hash: schema,
            sequences,
            harmonylite_version: crate::VERSION.to_owned(),
            signature: None,
        })
    });
    remove_quietly(&raw);
    match result {
        Ok(manifest) => Ok(Taken { file, manifest }),
        Err(e) => {
            remove_quietly(&file);
            Err(e)
        }
    }
}

/// `VACUUM INTO` then strip: returns the applied sequences and the schema hash.
fn copy_and_prepare(
    db_path: &Path,
    raw: &Path,
    ignore: &[String],
) -> Result<(BTreeMap<String, u64>, String), SnapshotError> {
    remove_quietly(raw);
    let sql = |what: &'static str| move |e| SnapshotError::Sqlite { what, source: e };
    {
        let src = Connection::open_with_flags(
            db_path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql("opening the database"))?;
        src.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sql("setting busy_timeout"))?;
        src.execute("VACUUM INTO ?1", [raw.to_string_lossy()])
            .map_err(sql("copying the database (VACUUM INTO)"))?;
    }
    let conn = Connection::open(raw).map_err(sql("opening the copy"))?;
    // Changes the application made since the last fold are in the taker's capture logs; folded
    // here, in the copy, the snapshot's clocks hold them and its logs are empty (a log belongs
    // to one node: its records carry no meaning elsewhere).
    crate::cdc::fold::fold_tracked(&conn).map_err(|e| SnapshotError::Sqlite {
        what: "folding the capture logs",
        source: clone_sqlite(e.sqlite()),
    })?;
    let triggers: Vec<String> = {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND substr(name, 1, ?1) = ?2")
            .map_err(sql("listing triggers"))?;
        let names = stmt
            .query_map(rusqlite::params![PREFIX.len() as i64, PREFIX], |r| r.get(0))
            .map_err(sql("listing triggers"))?;
        names
            .collect::<Result<_, _>>()
            .map_err(sql("listing triggers"))?
    };
    let mut strip = String::from("BEGIN;");
    for t in &triggers {
        strip.push_str(&format!("DROP TRIGGER {};", quote_ident(t)));
    }
    // What belongs to the taking node alone: its conflict journal and the gaps its operator
    // accepted (a restoring node keeps its own, `db::restore`). Its quarantine stays: the
    // changes it holds lie below the floors, so a restoring node must hold them too.
    for table in [CONFLICTS, GUARD, ACCEPTED_GAPS] {
        strip.push_str(&format!("DELETE FROM {};", quote_ident(table)));
    }
    strip.push_str("COMMIT;");
    conn.execute_batch(&strip)
        .map_err(sql("stripping triggers and the conflict journal"))?;
    // The floors: a snapshot covers exactly what is applied contiguously, never a hole.
    let sequences: BTreeMap<String, u64> = read_positions(&conn)
        .map_err(sql("reading stream floors"))?
        .into_iter()
        .map(|p| (p.stream, p.position.floor()))
        .collect();
    let schema = schema_hash(&conn, ignore).map_err(|e| SnapshotError::Sqlite {
        what: "hashing the schema",
        source: clone_sqlite(e.sqlite()),
    })?;
    // A rollback-journal file is one self-contained file: what gets compressed is all there is.
    conn.pragma_update(None, "journal_mode", "DELETE")
        .map_err(sql("setting the copy's journal mode"))?;
    conn.close().map_err(|(_, e)| SnapshotError::Sqlite {
        what: "closing the copy",
        source: e,
    })?;
    Ok((sequences, schema.0))
}

/// Compresses `raw` into `out`; returns the compressed size and its SHA-256 (hex).
fn compress(raw: &Path, out: &Path) -> Result<(u64, String), SnapshotError> {
    let input = File::open(raw).map_err(|e| SnapshotError::io("reading", raw, e))?;
    let output = File::create(out).map_err(|e| SnapshotError::io("creating", out, e))?;
    let hashing = HashingWriter {
        inner: BufWriter::new(output),
        hash: Sha256::new(),
        written: 0,
    };
    let mut encoder = zstd::Encoder::new(hashing, ZSTD_LEVEL)
        .map_err(|e| SnapshotError::io("compressing", out, e))?;
    std::io::copy(&mut BufReader::new(input), &mut encoder)
        .map_err(|e| SnapshotError::io("compressing", out, e))?;
    let mut hashing = encoder
        .finish()
        .map_err(|e| SnapshotError::io("compressing", out, e))?;
    hashing
        .inner
        .flush()
        .map_err(|e| SnapshotError::io("writing", out, e))?;
    hashing
        .inner
        .get_ref()
        .sync_all()
        .map_err(|e| SnapshotError::io("syncing", out, e))?;
    Ok((hashing.written, hex::encode(hashing.hash.finalize())))
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn remove_quietly(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// rusqlite errors are not `Clone`; keep the code and message.
fn clone_sqlite(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(f, m) => rusqlite::Error::SqliteFailure(*f, m.clone()),
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}
