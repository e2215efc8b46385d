//! Where snapshots are kept: one interface over the NATS object store, S3, WebDAV, the local
//! file system (these three through opendal) and SFTP (russh: opendal's SFTP service runs the
//! system `ssh` client, which can neither take the password from the URL the Go configs use nor
//! check a chosen known-hosts file).
//!
//! A store is a flat directory of named objects: `<id>.db.zst`, `<id>.manifest.json` and
//! `latest.json`. Large objects stream from files and into a `Sink` (a file, or the restore's
//! hash-and-decompress pipeline), chunk by chunk with a progress callback; small ones
//! (manifests) are read whole, with a size cap. Errors name the store (never its credentials)
//! and the cause.

mod dal;
mod nats;
mod sftp;

use std::path::Path;

use async_nats::jetstream;
use tokio::io::AsyncWriteExt;

use super::signing::Keys;
use crate::config::{Config, SnapshotStore};

/// Called with (bytes done, bytes in all) while an object moves.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// Bytes moved per read or write call when streaming a file.
const CHUNK: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("snapshot store {store}: cannot {op} {name}: {cause}")]
    Op {
        store: String,
        op: &'static str,
        name: String,
        cause: String,
    },
    #[error("snapshot store {store}: {name} not found")]
    NotFound { store: String, name: String },
    #[error("snapshot store {store}: cannot set up: {cause}")]
    Setup { store: String, cause: String },
    /// `[snapshot] signing_key_file` cannot be used.
    #[error(transparent)]
    Keys(#[from] crate::config::ConfigError),
    #[error("snapshot store {store}: {name} is {size} bytes, more than the {limit} expected")]
    TooLarge {
        store: String,
        name: String,
        size: u64,
        limit: u64,
    },
}

impl StoreError {
    pub(crate) fn not_found(store: &str, name: &str) -> StoreError {
        StoreError::NotFound {
            store: store.to_owned(),
            name: name.to_owned(),
        }
    }

    pub(crate) fn too_large(store: &str, name: &str, size: u64, limit: u64) -> StoreError {
        StoreError::TooLarge {
            store: store.to_owned(),
            name: name.to_owned(),
            size,
            limit,
        }
    }
}

/// An open snapshot store, with the keys its manifests are checked against (`signing`): every
/// reader of manifests goes through a store, so none can skip the check.
pub struct Store {
    backend: Backend,
    keys: Keys,
}

// A node holds one, briefly: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Dal(dal::DalStore),
    Sftp(sftp::SftpStore),
    // Boxed: the object store handle is over a kilobyte, the others a few words.
    Nats(Box<nats::NatsStore>),
}

impl Store {
    /// Opens the store `[snapshot]` names (creating its bucket or directory when missing), with
    /// its signing keys (reading `signing_key_file`). `js` is needed for the NATS object store
    /// only.
    pub async fn open(cfg: &Config, js: Option<&jetstream::Context>) -> Result<Store, StoreError> {
        crate::install_crypto_provider();
        let keys = Keys::load(&cfg.snapshot)?;
        let snap = &cfg.snapshot;
        let backend = match snap.store {
            SnapshotStore::Nats => {
                let Some(js) = js else {
                    return Err(StoreError::Setup {
                        store: "nats".to_owned(),
                        cause: "no NATS connection".to_owned(),
                    });
                };
                Backend::Nats(Box::new(nats::NatsStore::open(js, &snap.nats).await?))
            }
            SnapshotStore::S3 => Backend::Dal(dal::DalStore::s3(&snap.s3).await?),
            SnapshotStore::Webdav => Backend::Dal(dal::DalStore::webdav(snap.webdav.url.expose())?),
            SnapshotStore::Fs => Backend::Dal(dal::DalStore::fs(&snap.fs.path)?),
            SnapshotStore::Sftp => Backend::Sftp(sftp::SftpStore::new(&snap.sftp)?),
        };
        Ok(Store { backend, keys })
    }

    /// The keys this store's manifests are signed with and checked against.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Names the store for logs and the dashboard: kind and location, never credentials.
    pub fn describe(&self) -> &str {
        match &self.backend {
            Backend::Dal(s) => s.describe(),
            Backend::Sftp(s) => s.describe(),
            Backend::Nats(s) => s.describe(),
        }
    }

    /// Names of every object in the store.
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Dal(s) => s.list().await,
            Backend::Sftp(s) => s.list().await,
            Backend::Nats(s) => s.list().await,
        }
    }

    /// Writes a small object whole.
    pub async fn put_bytes(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Dal(s) => s.put_bytes(name, bytes).await,
            Backend::Sftp(s) => s.put_bytes(name, bytes).await,
            Backend::Nats(s) => s.put_bytes(name, bytes).await,
        }
    }

    /// Reads a small object whole; refuses one larger than `limit`.
    pub async fn get_bytes(&self, name: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        match &self.backend {
            Backend::Dal(s) => s.get_bytes(name, limit).await,
            Backend::Sftp(s) => s.get_bytes(name, limit).await,
            Backend::Nats(s) => s.get_bytes(name, limit).await,
        }
    }

    /// Uploads a file.
    pub async fn put_file(
        &self,
        name: &str,
        path: &Path,
        progress: Progress<'_>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Dal(s) => s.put_file(name, path, progress).await,
            Backend::Sftp(s) => s.put_file(name, path, progress).await,
            Backend::Nats(s) => s.put_file(name, path, progress).await,
        }
    }

    /// Downloads an object into a file (created or truncated); returns the bytes written. Stops
    /// with `TooLarge` once more than `limit` bytes arrived. The file is removed on failure.
    pub async fn get_file(
        &self,
        name: &str,
        path: &Path,
        limit: u64,
        progress: Progress<'_>,
    ) -> Result<u64, StoreError> {
        let fail = op_err(self.describe(), "download", name);
        let download = async {
            let file = tokio::fs::File::create(path).await.map_err(|e| fail(&e))?;
            let mut sink = FileSink(file);
            let done = self.get_into(name, &mut sink, limit, progress).await?;
            sink.0.flush().await.map_err(|e| fail(&e))?;
            sink.0.sync_all().await.map_err(|e| fail(&e))?;
            Ok(done)
        };
        let result = download.await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(path).await;
        }
        result
    }

    /// Streams an object into `sink`, in order; returns the bytes passed on. Stops with
    /// `TooLarge` once more than `limit` bytes arrived, and with the sink's error when it fails.
    pub async fn get_into(
        &self,
        name: &str,
        sink: &mut impl Sink,
        limit: u64,
        progress: Progress<'_>,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Dal(s) => s.get_into(name, sink, limit, progress).await,
            Backend::Sftp(s) => s.get_into(name, sink, limit, progress).await,
            Backend::Nats(s) => s.get_into(name, sink, limit, progress).await,
        }
    }

    /// Deletes an object; a missing one is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Dal(s) => s.delete(name).await,
            Backend::Sftp(s) => s.delete(name).await,
            Backend::Nats(s) => s.delete(name).await,
        }
    }
}

/// Where a download goes: its chunks, in order, each taken whole.
pub trait Sink: Send {
    fn put(&mut self, chunk: Vec<u8>) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// A download into a file.
struct FileSink(tokio::fs::File);

impl Sink for FileSink {
    async fn put(&mut self, chunk: Vec<u8>) -> std::io::Result<()> {
        self.0.write_all(&chunk).await
    }
}

/// Builds `StoreError::Op` for store `store`.
fn op_err(
    store: &str,
    op: &'static str,
    name: &str,
) -> impl Fn(&dyn std::fmt::Display) -> StoreError + Send + Sync + use<> {
    let store = store.to_owned();
    let name = name.to_owned();
    move |cause| StoreError::Op {
        store: store.clone(),
        op,
        name: name.clone(),
        cause: cause.to_string(),
    }
}

/// A file being uploaded: reading it reports progress against its size.
pub(super) struct Counting<'a, R> {
    inner: R,
    done: u64,
    total: u64,
    progress: Progress<'a>,
}

impl<R> Counting<'_, R> {
    pub(super) fn total(&self) -> u64 {
        self.total
    }
}

/// Opens `path` for an upload that reports progress as it is read.
pub(super) async fn open_upload<'a>(
    path: &Path,
    progress: Progress<'a>,
) -> std::io::Result<Counting<'a, tokio::fs::File>> {
    let file = tokio::fs::File::open(path).await?;
    let total = file.metadata().await?.len();
    Ok(Counting {
        inner: file,
        done: 0,
        total,
        progress,
    })
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counting<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.done += read;
            (self.progress)(self.done, self.total);
        }
        polled
    }
}

/// Copies an async reader into a sink, counting and capping bytes.
async fn copy_into(
    mut from: impl tokio::io::AsyncRead + Unpin,
    sink: &mut impl Sink,
    total: u64,
    limit: u64,
    progress: Progress<'_>,
    fail: &(dyn Fn(&dyn std::fmt::Display) -> StoreError + Sync),
    too_large: &(dyn Fn(u64) -> StoreError + Sync),
) -> Result<u64, StoreError> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = from.read(&mut buf).await.map_err(|e| fail(&e))?;
        if n == 0 {
            break;
        }
        done += n as u64;
        if done > limit {
            return Err(too_large(done));
        }
        sink.put(buf[..n].to_vec()).await.map_err(|e| fail(&e))?;
        progress(done, total);
    }
    Ok(done)
}
