//! The JetStream object store (`[snapshot.nats]`): snapshots live in the cluster itself.

use std::path::Path;

use async_nats::jetstream::{self, object_store};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::{Progress, Sink, StoreError, copy_into, op_err, open_upload};
use crate::config::SnapshotNatsConfig;

/// Bucket used when `[snapshot.nats] bucket` is empty.
pub const DEFAULT_BUCKET: &str = "harmonylite-snapshots";

pub struct NatsStore {
    store: object_store::ObjectStore,
    describe: String,
}

impl NatsStore {
    /// Opens the bucket, creating it when missing.
    pub async fn open(
        js: &jetstream::Context,
        cfg: &SnapshotNatsConfig,
    ) -> Result<NatsStore, StoreError> {
        let bucket = if cfg.bucket.is_empty() {
            DEFAULT_BUCKET
        } else {
            cfg.bucket.as_str()
        };
        let describe = format!("nats object store {bucket}");
        let store = match js.get_object_store(bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.to_owned(),
                    description: Some("HarmonyLite snapshots".to_owned()),
                    num_replicas: cfg.replicas.max(1) as usize,
                    ..Default::default()
                })
                .await
                .map_err(|e| StoreError::Setup {
                    store: describe.clone(),
                    cause: e.to_string(),
                })?,
        };
        Ok(NatsStore { store, describe })
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        let fail = op_err(&self.describe, "list", "objects");
        let mut list = self.store.list().await.map_err(|e| fail(&e))?;
        let mut names = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| fail(&e))?;
            if !info.deleted {
                names.push(info.name);
            }
        }
        Ok(names)
    }

    pub async fn put_bytes(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.store
            .put(name, &mut bytes.as_slice())
            .await
            .map(|_| ())
            .map_err(|e| op_err(&self.describe, "write", name)(&e))
    }

    pub async fn get_bytes(&self, name: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        let mut object = self.open_object(name, limit).await?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| op_err(&self.describe, "read", name)(&e))?;
        Ok(bytes)
    }

    pub async fn put_file(
        &self,
        name: &str,
        path: &Path,
        progress: Progress<'_>,
    ) -> Result<(), StoreError> {
        let fail = op_err(&self.describe, "upload", name);
        let mut upload = open_upload(path, progress).await.map_err(|e| fail(&e))?;
        self.store
            .put(name, &mut upload)
            .await
            .map(|_| ())
            .map_err(|e| fail(&e))
    }

    pub async fn get_into(
        &self,
        name: &str,
        sink: &mut impl Sink,
        limit: u64,
        progress: Progress<'_>,
    ) -> Result<u64, StoreError> {
        let object = self.open_object(name, limit).await?;
        let total = object.info().size as u64;
        let too_large = |size| StoreError::too_large(&self.describe, name, size, limit);
        let fail = op_err(&self.describe, "download", name);
        copy_into(object, sink, total, limit, progress, &fail, &too_large).await
    }

    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self.store.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(op_err(&self.describe, "delete", name)(&e)),
        }
    }

    async fn open_object(
        &self,
        name: &str,
        limit: u64,
    ) -> Result<object_store::Object, StoreError> {
        let object = match self.store.get(name).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                return Err(StoreError::not_found(&self.describe, name));
            }
            Err(e) => return Err(op_err(&self.describe, "read", name)(&e)),
        };
        let size = object.info().size as u64;
        if size > limit {
            return Err(StoreError::too_large(&self.describe, name, size, limit));
        }
        Ok(object)
    }
}
