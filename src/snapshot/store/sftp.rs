//! SFTP store (russh + russh-sftp): `sftp://user[:password]@host[:port]/dir`.
//!
//! Authentication: the key in `key_file` when set, else the password in the URL. The server's
//! host key must be listed in `known_hosts_file` (or `~/.ssh/known_hosts` when that is empty);
//! only `insecure_ignore_host_key = true` skips the check, and says so in the log. A connection
//! is opened per operation: snapshots are rare, and a held connection would need keep-alives
//! and reconnects for nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, AuthResult, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;
use tokio::io::AsyncWriteExt;

use super::{Progress, Sink, StoreError, copy_into, op_err, open_upload};
use crate::config::SnapshotUrlConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

pub struct SftpStore {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    key_file: Option<PathBuf>,
    /// `None`: the host key is not checked (operator's explicit choice).
    known_hosts: Option<PathBuf>,
    dir: String,
    describe: String,
}

/// Checks the server's key against a known-hosts file.
struct HostCheck {
    known_hosts: Option<PathBuf>,
    host: String,
    port: u16,
}

impl client::Handler for HostCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let Some(path) = &self.known_hosts else {
            return Ok(true);
        };
        let PublicKeyOrCertificate::PublicKey { key, .. } = offered else {
            tracing::error!(host = %self.host, "SFTP server offered a host certificate; only plain host keys are checked");
            return Ok(false);
        };
        let known = russh::keys::check_known_hosts_path(&self.host, self.port, key, path)
            .map_err(|e| {
                tracing::error!(host = %self.host, known_hosts = %path.display(), error = %e, "SFTP host key check failed");
                russh::Error::UnknownKey
            })?;
        if !known {
            tracing::error!(
                host = %self.host,
                port = self.port,
                known_hosts = %path.display(),
                "SFTP server's host key is not in the known-hosts file; add it (ssh-keyscan) or set insecure_ignore_host_key"
            );
        }
        Ok(known)
    }
}

impl SftpStore {
    pub fn new(cfg: &SnapshotUrlConfig) -> Result<SftpStore, StoreError> {
        let setup = |cause: &str| StoreError::Setup {
            store: "sftp".to_owned(),
            cause: cause.to_owned(),
        };
        let url = url::Url::parse(cfg.url.expose()).map_err(|e| setup(&e.to_string()))?;
        let host = url
            .host_str()
            .ok_or_else(|| setup("snapshot.sftp.url has no host"))?
            .to_owned();
        let port = url.port().unwrap_or(22);
        let user = percent(url.username());
        if user.is_empty() {
            return Err(setup("snapshot.sftp.url has no user name"));
        }
        let password = url.password().map(percent);
        let key_file = (!cfg.key_file.is_empty()).then(|| PathBuf::from(&cfg.key_file));
        if password.is_none() && key_file.is_none() {
            return Err(setup(
                "neither a password in snapshot.sftp.url nor snapshot.sftp.key_file is set",
            ));
        }
        let known_hosts = if cfg.insecure_ignore_host_key {
            tracing::warn!(%host, "SFTP host key checking is off (snapshot.sftp.insecure_ignore_host_key)");
            None
        } else if !cfg.known_hosts_file.is_empty() {
            Some(PathBuf::from(&cfg.known_hosts_file))
        } else {
            let home = std::env::var_os("HOME").ok_or_else(|| {
                setup("no HOME for ~/.ssh/known_hosts; set snapshot.sftp.known_hosts_file")
            })?;
            Some(PathBuf::from(home).join(".ssh/known_hosts"))
        };
        let dir = percent(url.path()).trim_end_matches('/').to_owned();
        let describe = format!("sftp {user}@{host}:{port}{dir}");
        Ok(SftpStore {
            host,
            port,
            user,
            password,
            key_file,
            known_hosts,
            dir,
            describe,
        })
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.dir)
    }

    /// Connects, authenticates and opens the SFTP subsystem.
    async fn session(&self) -> Result<(Handle<HostCheck>, SftpSession), StoreError> {
        let fail = |cause: &dyn std::fmt::Display| StoreError::Setup {
            store: self.describe.clone(),
            cause: cause.to_string(),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        let check = HostCheck {
            known_hosts: self.known_hosts.clone(),
            host: self.host.clone(),
            port: self.port,
        };
        let connect = client::connect(config, (self.host.as_str(), self.port), check);
        let mut handle = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| fail(&"connection timed out"))?
            .map_err(|e| match e {
                russh::Error::UnknownKey => fail(&"host key not accepted (see the log)"),
                e => fail(&e),
            })?;
        let mut authenticated = false;
        if let Some(key_file) = &self.key_file {
            let key = russh::keys::load_secret_key(key_file, None)
                .map_err(|e| fail(&format!("cannot load key {}: {e}", key_file.display())))?;
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| fail(&e))?
                .flatten();
            let auth = handle
                .authenticate_publickey(&self.user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await
                .map_err(|e| fail(&e))?;
            authenticated = matches!(auth, AuthResult::Success);
        }
        if !authenticated && let Some(password) = &self.password {
            let auth = handle
                .authenticate_password(&self.user, password)
                .await
                .map_err(|e| fail(&e))?;
            authenticated = matches!(auth, AuthResult::Success);
        }
        if !authenticated {
            return Err(fail(&format!("authentication as {} failed", self.user)));
        }
        let channel = handle.channel_open_session().await.map_err(|e| fail(&e))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| fail(&e))?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| fail(&e))?;
        Ok((handle, sftp))
    }

    /// Creates the directory and its parents when missing.
    async fn ensure_dir(&self, sftp: &SftpSession) -> Result<(), StoreError> {
        let mut path = String::new();
        for part in self.dir.split('/').filter(|p| !p.is_empty()) {
            path = if path.is_empty() && !self.dir.starts_with('/') {
                part.to_owned()
            } else {
                format!("{path}/{part}")
            };
            if !sftp.try_exists(path.as_str()).await.unwrap_or(false) {
                sftp.create_dir(path.as_str())
                    .await
                    .map_err(|e| op_err(&self.describe, "create directory", &path)(&e))?;
            }
        }
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        let (handle, sftp) = self.session().await?;
        let dir = if self.dir.is_empty() { "." } else { &self.dir };
        let names = match sftp.read_dir(dir).await {
            Ok(entries) => entries
                .filter(|e| e.file_type().is_file())
                .map(|e| e.file_name())
                .collect(),
            Err(russh_sftp::client::error::Error::Status(s))
                if s.status_code == russh_sftp::protocol::StatusCode::NoSuchFile =>
            {
                Vec::new()
            }
            Err(e) => return Err(op_err(&self.describe, "list", dir)(&e)),
        };
        close(handle, sftp).await;
        Ok(names)
    }

    pub async fn put_bytes(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let (handle, sftp) = self.session().await?;
        self.ensure_dir(&sftp).await?;
        let fail = op_err(&self.describe, "write", name);
        // Written under a temporary name and renamed, so a reader never sees half a manifest.
        let tmp = self.path(&format!(".{name}.tmp"));
        // `SftpSession::write` opens without CREATE and TRUNCATE: it cannot make a new file.
        let mut remote = sftp.create(tmp.as_str()).await.map_err(|e| fail(&e))?;
        remote.write_all(&bytes).await.map_err(|e| fail(&e))?;
        remote.shutdown().await.map_err(|e| fail(&e))?;
        self.replace(&sftp, &tmp, name).await?;
        close(handle, sftp).await;
        Ok(())
    }

    pub async fn get_bytes(&self, name: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        let (handle, sftp) = self.session().await?;
        let size = self.size(&sftp, name).await?;
        if size > limit {
            return Err(self.too_large(name, size, limit));
        }
        let bytes = sftp
            .read(self.path(name))
            .await
            .map_err(|e| op_err(&self.describe, "read", name)(&e))?;
        close(handle, sftp).await;
        Ok(bytes)
    }

    pub async fn put_file(
        &self,
        name: &str,
        path: &Path,
        progress: Progress<'_>,
    ) -> Result<(), StoreError> {
        let (handle, sftp) = self.session().await?;
        self.ensure_dir(&sftp).await?;
        let fail = op_err(&self.describe, "upload", name);
        let mut upload = open_upload(path, progress).await.map_err(|e| fail(&e))?;
        let tmp = self.path(&format!(".{name}.tmp"));
        let mut remote = sftp.create(tmp.as_str()).await.map_err(|e| fail(&e))?;
        tokio::io::copy(&mut upload, &mut remote)
            .await
            .map_err(|e| fail(&e))?;
        remote.shutdown().await.map_err(|e| fail(&e))?;
        self.replace(&sftp, &tmp, name).await?;
        close(handle, sftp).await;
        Ok(())
    }

    pub async fn get_into(
        &self,
        name: &str,
        sink: &mut impl Sink,
        limit: u64,
        progress: Progress<'_>,
    ) -> Result<u64, StoreError> {
        let (handle, sftp) = self.session().await?;
        let size = self.size(&sftp, name).await?;
        if size > limit {
            return Err(self.too_large(name, size, limit));
        }
        let fail = op_err(&self.describe, "download", name);
        let remote = sftp.open(self.path(name)).await.map_err(|e| fail(&e))?;
        let too_large = |size| self.too_large(name, size, limit);
        let done = copy_into(remote, sink, size, limit, progress, &fail, &too_large).await?;
        close(handle, sftp).await;
        Ok(done)
    }

    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let (handle, sftp) = self.session().await?;
        let path = self.path(name);
        if sftp.try_exists(path.as_str()).await.unwrap_or(true) {
            sftp.remove_file(path)
                .await
                .map_err(|e| op_err(&self.describe, "delete", name)(&e))?;
        }
        close(handle, sftp).await;
        Ok(())
    }

    /// Moves `tmp` over `name` (SFTP v3 rename fails on an existing target).
    async fn replace(&self, sftp: &SftpSession, tmp: &str, name: &str) -> Result<(), StoreError> {
        let fail = op_err(&self.describe, "rename into", name);
        let target = self.path(name);
        if sftp.try_exists(target.as_str()).await.unwrap_or(false) {
            sftp.remove_file(target.as_str())
                .await
                .map_err(|e| fail(&e))?;
        }
        sftp.rename(tmp, target).await.map_err(|e| fail(&e))
    }

    async fn size(&self, sftp: &SftpSession, name: &str) -> Result<u64, StoreError> {
        match sftp.metadata(self.path(name)).await {
            Ok(meta) => Ok(meta.len()),
            Err(russh_sftp::client::error::Error::Status(s))
                if s.status_code == russh_sftp::protocol::StatusCode::NoSuchFile =>
            {
                Err(StoreError::not_found(&self.describe, name))
            }
            Err(e) => Err(op_err(&self.describe, "stat", name)(&e)),
        }
    }

    fn too_large(&self, name: &str, size: u64, limit: u64) -> StoreError {
        StoreError::too_large(&self.describe, name, size, limit)
    }
}

/// Ends the session politely; a failure here changes nothing for the caller.
async fn close(handle: Handle<HostCheck>, sftp: SftpSession) {
    let _ = sftp.close().await;
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
}

/// Percent-decodes a URL part (user names and passwords may hold `@` or `:`).
fn percent(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
