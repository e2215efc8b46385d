//! Unpacking a snapshot while it downloads: every chunk is hashed (the SHA-256 of the compressed
//! bytes, which the manifest records) and decompressed straight into the database file, on a
//! blocking thread fed through a short channel. The compressed file is never written to disk,
//! so a restore needs room for the database alone, and memory holds a few chunks and zstd's
//! window whatever the snapshot's size.
//!
//! Damaged data does not stop the hashing: the download runs to its end, so that a flipped byte
//! is reported as the hash mismatch it is, not as the decompression error it leads to.
//! Decompressed bytes beyond the cap are never written (a decompression bomb costs nothing). A
//! failure to write the database file (a full disk) stops the download.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::store::Sink;

/// Chunks in flight between the download and the unpacking thread (1 MiB each at most).
const IN_FLIGHT: usize = 4;

/// What arrived, as the unpacking thread saw it.
#[derive(Debug)]
pub struct Unpacked {
    /// SHA-256 (hex) of the compressed bytes.
    pub sha256: String,
    /// Decompressed bytes written (at most the cap).
    pub written: u64,
    /// Why decompression stopped, when the data was at fault.
    pub damaged: Option<String>,
}

/// The download's end of the pipeline.
pub struct Feed(mpsc::Sender<Vec<u8>>);

impl Sink for Feed {
    async fn put(&mut self, chunk: Vec<u8>) -> std::io::Result<()> {
        self.0
            .send(chunk)
            .await
            .map_err(|_| std::io::Error::other("the unpacking thread stopped"))
    }
}

/// Starts unpacking into `raw` (created or truncated), writing at most `cap` bytes. The thread
/// ends once the feed is dropped, with the file synced; its error is the file's (an I/O error).
pub fn start(
    raw: &Path,
    cap: u64,
) -> std::io::Result<(Feed, JoinHandle<std::io::Result<Unpacked>>)> {
    let file = File::create(raw)?;
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let thread = tokio::task::spawn_blocking(move || run(rx, file, cap));
    Ok((Feed(tx), thread))
}

fn run(mut rx: mpsc::Receiver<Vec<u8>>, file: File, cap: u64) -> std::io::Result<Unpacked> {
    let mut hash = Sha256::new();
    let mut decoder = zstd::stream::write::Decoder::new(Capped {
        inner: BufWriter::new(file),
        written: 0,
        cap,
        failed: false,
    })?;
    let mut damaged = None;
    while let Some(chunk) = rx.blocking_recv() {
        hash.update(&chunk);
        if damaged.is_none()
            && let Err(e) = decoder.write_all(&chunk)
        {
            damaged = Some(data_fault(&decoder, e)?);
        }
    }
    if damaged.is_none()
        && let Err(e) = decoder.flush()
    {
        damaged = Some(data_fault(&decoder, e)?);
    }
    let capped = decoder.into_inner();
    let file = capped.inner.into_inner().map_err(|e| e.into_error())?;
    // A damaged download is deleted: no use making it durable.
    if damaged.is_none() {
        file.sync_all()?;
    }
    Ok(Unpacked {
        sha256: hex::encode(hash.finalize()),
        written: capped.written,
        damaged,
    })
}

/// Sorts a failed write: the file's own failure stays an I/O error (returned), anything else
/// is the data's fault (its text).
fn data_fault<W: Write>(
    decoder: &zstd::stream::write::Decoder<'_, Capped<W>>,
    error: std::io::Error,
) -> std::io::Result<String> {
    if decoder.get_ref().failed {
        return Err(error);
    }
    Ok(error.to_string())
}

/// Writes at most `cap` bytes to `inner`; past that, every write fails. `failed` tells a
/// failure of `inner` from a refusal.
struct Capped<W> {
    inner: W,
    written: u64,
    cap: u64,
    failed: bool,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.cap - self.written;
        if room == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("it decompresses to more than {} bytes", self.cap),
            ));
        }
        let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self
            .inner
            .write(&buf[..take])
            .inspect_err(|_| self.failed = true)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn unpack(data: &[u8], cap: u64) -> (Unpacked, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        let (mut feed, thread) = start(&raw, cap).unwrap();
        for chunk in data.chunks(1000) {
            feed.put(chunk.to_vec()).await.unwrap();
        }
        drop(feed);
        let unpacked = thread.await.unwrap().unwrap();
        (unpacked, std::fs::read(&raw).unwrap())
    }

    fn sample() -> (Vec<u8>, Vec<u8>) {
        let plain: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let packed = zstd::encode_all(plain.as_slice(), 3).unwrap();
        (plain, packed)
    }

    #[tokio::test]
    async fn a_sound_stream_is_hashed_and_decompressed_whole() {
        let (plain, packed) = sample();
        let (unpacked, written) = unpack(&packed, plain.len() as u64 + 1).await;
        assert_eq!(unpacked.sha256, hex::encode(Sha256::digest(&packed)));
        assert_eq!(unpacked.written, plain.len() as u64);
        assert!(unpacked.damaged.is_none(), "{unpacked:?}");
        assert!(
            written == plain,
            "the database file holds the decompressed bytes"
        );
    }

    #[tokio::test]
    async fn damage_stops_the_decompression_and_not_the_hash() {
        let (plain, mut packed) = sample();
        packed[8..40].fill(0xff);
        let (unpacked, _) = unpack(&packed, plain.len() as u64 + 1).await;
        assert_eq!(unpacked.sha256, hex::encode(Sha256::digest(&packed)));
        assert!(unpacked.damaged.is_some(), "{unpacked:?}");
    }

    #[tokio::test]
    async fn nothing_beyond_the_cap_is_written() {
        let (plain, packed) = sample();
        let cap = plain.len() as u64 / 2;
        let (unpacked, written) = unpack(&packed, cap).await;
        assert_eq!(unpacked.written, cap);
        assert_eq!(written.len() as u64, cap);
        let why = unpacked.damaged.expect("refused");
        assert!(why.contains(&format!("more than {cap} bytes")), "{why}");
        assert_eq!(unpacked.sha256, hex::encode(Sha256::digest(&packed)));
    }
}
