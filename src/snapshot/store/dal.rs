//! S3, WebDAV and local-directory stores through opendal.

use std::path::Path;
use std::time::Duration;

use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator};
use tokio::io::AsyncReadExt;

use super::{CHUNK, Progress, Sink, StoreError, op_err, open_upload};
use crate::config::SnapshotS3Config;

/// Multipart uploads need parts of at least 5 MiB on S3.
const WRITE_CHUNK: usize = 8 * 1024 * 1024;

pub struct DalStore {
    op: Operator,
    describe: String,
}

impl DalStore {
    /// S3 or an S3-compatible server; the bucket is created when missing.
    pub async fn s3(cfg: &SnapshotS3Config) -> Result<DalStore, StoreError> {
        let endpoint = s3_endpoint(cfg);
        let region = if cfg.region.is_empty() {
            "us-east-1"
        } else {
            cfg.region.as_str()
        };
        let describe = format!("s3 bucket {} at {endpoint}", cfg.bucket);
        let setup = |cause: &dyn std::fmt::Display| StoreError::Setup {
            store: describe.clone(),
            cause: cause.to_string(),
        };
        let mut builder = opendal::services::S3::default()
            .bucket(&cfg.bucket)
            .endpoint(&endpoint)
            .region(region)
            .root(&root_of(&cfg.path))
            .disable_config_load()
            .disable_ec2_metadata();
        if !cfg.access_key.is_empty() {
            builder = builder
                .access_key_id(&cfg.access_key)
                .secret_access_key(cfg.secret.expose());
        }
        if !cfg.session_token.expose().is_empty() {
            builder = builder.session_token(cfg.session_token.expose());
        }
        if !cfg.force_path_style {
            builder = builder.enable_virtual_host_style();
        }
        ensure_bucket(cfg, &endpoint, region)
            .await
            .map_err(|e| setup(&e))?;
        let op = Operator::new(builder).map_err(|e| setup(&e))?;
        Ok(DalStore::layered(op, describe))
    }

    /// `url` is `http(s)://host[:port]/path?dir=<dir>&login=<user>&secret=<password>`, the Go
    /// HarmonyLite form.
    pub fn webdav(url: &str) -> Result<DalStore, StoreError> {
        let setup = |store: &str, cause: &dyn std::fmt::Display| StoreError::Setup {
            store: store.to_owned(),
            cause: cause.to_string(),
        };
        let parsed = url::Url::parse(url).map_err(|e| setup("webdav", &e))?;
        let mut endpoint = parsed.clone();
        endpoint.set_query(None);
        let _ = endpoint.set_username("");
        let _ = endpoint.set_password(None);
        let query = |key: &str| {
            parsed
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        let dir = query("dir").unwrap_or_default();
        let describe = format!("webdav {} dir {}", endpoint.as_str(), root_of(&dir));
        let mut builder = opendal::services::Webdav::default()
            .endpoint(endpoint.as_str().trim_end_matches('/'))
            .root(&root_of(&dir));
        if let Some(login) = query("login") {
            builder = builder.username(&login);
        }
        if let Some(secret) = query("secret") {
            builder = builder.password(&secret);
        }
        let op = Operator::new(builder).map_err(|e| setup(&describe, &e))?;
        Ok(DalStore::layered(op, describe))
    }

    /// A directory on this machine (created when missing).
    pub fn fs(path: &str) -> Result<DalStore, StoreError> {
        let describe = format!("fs {path}");
        let setup = |cause: &dyn std::fmt::Display| StoreError::Setup {
            store: describe.clone(),
            cause: cause.to_string(),
        };
        std::fs::create_dir_all(path).map_err(|e| setup(&e))?;
        let op =
            Operator::new(opendal::services::Fs::default().root(path)).map_err(|e| setup(&e))?;
        Ok(DalStore::layered(op, describe))
    }

    fn layered(op: Operator, describe: String) -> DalStore {
        // Without opendal's `auto-register-services` nothing installs the HTTP transport that
        // the S3 and WebDAV services send through; this does, once per process.
        opendal::install_default();
        let op = op
            .layer(
                TimeoutLayer::new()
                    .with_timeout(Duration::from_secs(60))
                    .with_io_timeout(Duration::from_secs(30)),
            )
            .layer(RetryLayer::new().with_max_times(3).with_jitter());
        DalStore { op, describe }
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        let entries = match self.op.list("/").await {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(op_err(&self.describe, "list", "/")(&e)),
        };
        Ok(entries
            .into_iter()
            .filter(|e| e.metadata().is_file())
            .map(|e| e.name().to_owned())
            .collect())
    }

    pub async fn put_bytes(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.op
            .write(name, bytes)
            .await
            .map(|_| ())
            .map_err(|e| op_err(&self.describe, "write", name)(&e))
    }

    pub async fn get_bytes(&self, name: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        let size = self.size(name).await?;
        if size > limit {
            return Err(self.too_large(name, size, limit));
        }
        let buf = self
            .op
            .read(name)
            .await
            .map_err(|e| self.error("read", name, e))?;
        Ok(buf.to_vec())
    }

    pub async fn put_file(
        &self,
        name: &str,
        path: &Path,
        progress: Progress<'_>,
    ) -> Result<(), StoreError> {
        let fail = op_err(&self.describe, "upload", name);
        let mut upload = open_upload(path, progress).await.map_err(|e| fail(&e))?;
        let total = upload.total();
        // WebDAV takes a file in one PUT (opendal's one-shot writer refuses a second write):
        // there the whole file is gathered first, so it costs its size in memory.
        let chunk = if self.op.info().capability().write_can_multi {
            WRITE_CHUNK
        } else {
            usize::try_from(total).map_err(|e| fail(&e))?.max(1)
        };
        let mut writer = self
            .op
            .writer_with(name)
            .chunk(chunk)
            .await
            .map_err(|e| fail(&e))?;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = upload.read(&mut buf).await.map_err(|e| fail(&e))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            if let Err(e) = writer.write(buf).await {
                let _ = writer.abort().await;
                return Err(fail(&e));
            }
        }
        writer.close().await.map_err(|e| fail(&e))?;
        Ok(())
    }

    pub async fn get_into(
        &self,
        name: &str,
        sink: &mut impl Sink,
        limit: u64,
        progress: Progress<'_>,
    ) -> Result<u64, StoreError> {
        let size = self.size(name).await?;
        if size > limit {
            return Err(self.too_large(name, size, limit));
        }
        let fail = op_err(&self.describe, "download", name);
        let reader = self.op.reader(name).await.map_err(|e| fail(&e))?;
        let mut done = 0u64;
        while done < size {
            let end = (done + CHUNK as u64).min(size);
            let buf = reader.read(done..end).await.map_err(|e| fail(&e))?;
            if buf.is_empty() {
                break;
            }
            sink.put(buf.to_vec()).await.map_err(|e| fail(&e))?;
            done += buf.len() as u64;
            progress(done, size);
        }
        Ok(done)
    }

    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self.op.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(op_err(&self.describe, "delete", name)(&e)),
        }
    }

    async fn size(&self, name: &str) -> Result<u64, StoreError> {
        self.op
            .stat(name)
            .await
            .map(|m| m.content_length())
            .map_err(|e| self.error("stat", name, e))
    }

    fn error(&self, op: &'static str, name: &str, e: opendal::Error) -> StoreError {
        if e.kind() == ErrorKind::NotFound {
            StoreError::not_found(&self.describe, name)
        } else {
            op_err(&self.describe, op, name)(&e)
        }
    }

    fn too_large(&self, name: &str, size: u64, limit: u64) -> StoreError {
        StoreError::too_large(&self.describe, name, size, limit)
    }
}

/// opendal roots are absolute and end with `/`.
fn root_of(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        format!("/{trimmed}/")
    }
}

/// `endpoint` with its scheme: as given when it has one, else from `use_ssl`.
fn s3_endpoint(cfg: &SnapshotS3Config) -> String {
    if cfg.endpoint.contains("://") {
        cfg.endpoint.trim_end_matches('/').to_owned()
    } else {
        let scheme = if cfg.use_ssl { "https" } else { "http" };
        format!("{scheme}://{}", cfg.endpoint.trim_end_matches('/'))
    }
}

/// Creates the bucket unless it exists (HEAD answers 2xx). opendal has no bucket operations,
/// so this signs the two requests itself.
async fn ensure_bucket(cfg: &SnapshotS3Config, endpoint: &str, region: &str) -> anyhow::Result<()> {
    let style = if cfg.force_path_style {
        rusty_s3::UrlStyle::Path
    } else {
        rusty_s3::UrlStyle::VirtualHost
    };
    let base: url::Url = endpoint.parse()?;
    let bucket = rusty_s3::Bucket::new(base, style, cfg.bucket.clone(), region.to_owned())?;
    let credentials = (!cfg.access_key.is_empty()).then(|| match cfg.session_token.expose() {
        token if !token.is_empty() => rusty_s3::Credentials::new_with_token(
            cfg.access_key.clone(),
            cfg.secret.expose().clone(),
            token.clone(),
        ),
        _ => rusty_s3::Credentials::new(cfg.access_key.clone(), cfg.secret.expose().clone()),
    });
    let ttl = Duration::from_secs(300);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let head = rusty_s3::S3Action::sign(&bucket.head_bucket(credentials.as_ref()), ttl);
    // The signed URL carries the session token: errors must not print it.
    let status = http
        .head(head)
        .send()
        .await
        .map_err(reqwest::Error::without_url)?
        .status();
    if status.is_success() {
        return Ok(());
    }
    let create = rusty_s3::actions::CreateBucket::new(
        &bucket,
        credentials.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "bucket {} is not reachable ({status}) and no access_key is set to create it",
                cfg.bucket
            )
        })?,
    );
    let url = rusty_s3::S3Action::sign(&create, ttl);
    // The body names the region (empty for us-east-1); S3 wants a Content-Length even then.
    let body = create.body();
    let response = http
        .put(url)
        .header(reqwest::header::CONTENT_LENGTH, body.len())
        .body(body)
        .send()
        .await
        .map_err(reqwest::Error::without_url)?;
    let status = response.status();
    // 409: it exists (another node created it first, or it is ours already).
    if status.is_success() || status == reqwest::StatusCode::CONFLICT {
        tracing::info!(bucket = %cfg.bucket, "created the snapshot bucket");
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    anyhow::bail!(
        "creating bucket {} failed with {status}: {}",
        cfg.bucket,
        body.chars().take(300).collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_and_endpoints() {
        assert_eq!(root_of(""), "/");
        assert_eq!(root_of("harmonylite/snapshots"), "/harmonylite/snapshots/");
        assert_eq!(root_of("/a/"), "/a/");
        let mut cfg = SnapshotS3Config {
            endpoint: "s3.amazonaws.com".into(),
            use_ssl: true,
            ..Default::default()
        };
        assert_eq!(s3_endpoint(&cfg), "https://s3.amazonaws.com");
        cfg.use_ssl = false;
        assert_eq!(s3_endpoint(&cfg), "http://s3.amazonaws.com");
        cfg.endpoint = "http://127.0.0.1:9000/".into();
        assert_eq!(s3_endpoint(&cfg), "http://127.0.0.1:9000");
    }
}
