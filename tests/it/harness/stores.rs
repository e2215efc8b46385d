//! Snapshot store servers for tests, each on loopback with its own temp dir: moto (S3), Debian's
//! sshd (SFTP, password and key login), `rclone serve webdav` (WebDAV), a plain directory (fs)
//! and a standalone nats-server (object store). `start` returns once the server answers; `Drop`
//! kills the server's whole process group (the `python3` shim and `sshd`'s workers with it;
//! the processes are tests/common/process.rs's).
//!
//! `TestStore` wraps one of them as a ready `[snapshot]` section: `configure(&mut cfg)` for a
//! node's config (usable as `Cluster::start`'s `tune`), `open()` for the store itself.
//! scripts/test.sh installs the servers; a missing one fails the test with a message naming it.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use harmonylite::config::{
    Config, Secret, SnapshotConfig, SnapshotFsConfig, SnapshotNatsConfig, SnapshotS3Config,
    SnapshotStore, SnapshotUrlConfig,
};
use harmonylite::snapshot::store::Store;
use tempfile::TempDir;

use super::fixed_port;
use super::nats::NatsServer;
use crate::common::process::{Process, Spec};

/// How long a server may take to answer after it was started.
const READY: Duration = Duration::from_secs(30);

/// The account sshd logs the tests in as (created on first use; we run as root).
pub const SFTP_USER: &str = "hlsftptest";
/// Its password: letters, digits and `-` only, so it goes into a URL as it is.
pub const SFTP_PASSWORD: &str = "hl-sftp-Pw-51x7";
pub const S3_ACCESS_KEY: &str = "hltestaccess";
pub const S3_SECRET: &str = "hl-s3-Secret-93qz";
pub const S3_BUCKET: &str = "harmonylite-test";
pub const WEBDAV_USER: &str = "hlwebdav";
pub const WEBDAV_PASSWORD: &str = "hl-dav-Pw-20kq";
/// Bucket of the NATS object store.
pub const NATS_BUCKET: &str = "hl-test-snapshots";

/// A store server: the shared `Process` (own process group, log file, killed with its group on
/// `Drop`, log tail printed when a test panics), started with a hint at what installs it.
pub struct ServerProcess(Process);

impl ServerProcess {
    /// Starts `spec` with stdout and stderr going to `log`; `hint` says what installs it.
    pub fn spawn(name: &'static str, spec: Spec, log: &Path, hint: &str) -> ServerProcess {
        let process = Process::start(name, spec, log).unwrap_or_else(|e| panic!("{e}; {hint}"));
        ServerProcess(process)
    }

    pub fn log(&self) -> String {
        self.0.log()
    }

    /// Polls the log until `find` accepts a line. `Err(log)` when the process ended first or
    /// at the deadline.
    pub async fn wait_for_log<T>(&mut self, find: impl Fn(&str) -> Option<T>) -> Result<T, String> {
        self.0
            .wait_log(READY, |log| log.lines().find_map(&find))
            .await
    }
}

/// The port in `line` after `prefix` (`... http://127.0.0.1:PORT/`).
fn port_after(line: &str, prefix: &str) -> Option<u16> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A directory others (the SFTP test account) can enter.
fn open_dir(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// moto's S3 server (`python3 -m moto.server`, PyPI `moto[server]`).
pub struct MotoServer {
    /// First, so the server is gone before its directory is removed.
    _process: ServerProcess,
    pub port: u16,
    pub dir: TempDir,
}

impl MotoServer {
    pub async fn start() -> MotoServer {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", "0"])
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(dir.path());
        let mut process = ServerProcess::spawn(
            "moto_server",
            spec,
            &dir.path().join("moto.log"),
            "scripts/test.sh installs PyPI's moto[server]",
        );
        let port = process
            .wait_for_log(|line| port_after(line, "Running on http://127.0.0.1:"))
            .await
            .unwrap_or_else(|log| panic!("moto_server did not start: {log}"));
        MotoServer {
            port,
            dir,
            _process: process,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `[snapshot.s3]` for `bucket`, under the prefix `harmonylite/snapshots`.
    pub fn s3_config(&self, bucket: &str) -> SnapshotS3Config {
        SnapshotS3Config {
            endpoint: self.endpoint(),
            path: "harmonylite/snapshots".to_owned(),
            bucket: bucket.to_owned(),
            use_ssl: false,
            access_key: S3_ACCESS_KEY.to_owned(),
            secret: Secret::new(S3_SECRET.to_owned()),
            session_token: Secret::default(),
            region: "us-east-1".to_owned(),
            force_path_style: true,
        }
    }

    /// Whether the bucket exists (moto answers unsigned requests).
    pub async fn bucket_exists(&self, bucket: &str) -> bool {
        let url = format!("http://{}/{bucket}", self.endpoint());
        let status = reqwest::Client::new()
            .head(url)
            .send()
            .await
            .unwrap()
            .status();
        assert!(
            status.is_success() || status == reqwest::StatusCode::NOT_FOUND,
            "HEAD bucket {bucket}: {status}"
        );
        status.is_success()
    }
}

/// Creates the SFTP test account once per test run (idempotent across runs) and sets its
/// password; returns its uid.
pub fn ensure_sftp_user() -> u32 {
    static UID: OnceLock<Result<u32, String>> = OnceLock::new();
    let made = UID.get_or_init(|| {
        let uid = || -> Option<u32> {
            let out = Command::new("id").args(["-u", SFTP_USER]).output().ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        if uid().is_none() {
            let out = Command::new("useradd")
                .args(["-m", "-s", "/bin/sh", SFTP_USER])
                .output()
                .map_err(|e| format!("useradd: {e}"))?;
            // Another test process may have created it meanwhile: check again before failing.
            if !out.status.success() && uid().is_none() {
                return Err(format!(
                    "useradd {SFTP_USER} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        // SHA-512 crypt: Debian's default yescrypt costs every SFTP operation (one login each)
        // tens of milliseconds.
        let mut chpasswd = Command::new("chpasswd")
            .args(["-c", "SHA512"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("chpasswd: {e}"))?;
        std::io::Write::write_all(
            chpasswd.stdin.as_mut().unwrap(),
            format!("{SFTP_USER}:{SFTP_PASSWORD}\n").as_bytes(),
        )
        .map_err(|e| format!("chpasswd: {e}"))?;
        let out = chpasswd
            .wait_with_output()
            .map_err(|e| format!("chpasswd: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "chpasswd for {SFTP_USER} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        uid().ok_or_else(|| format!("user {SFTP_USER} missing after useradd"))
    });
    match made {
        Ok(uid) => *uid,
        Err(e) => panic!(
            "the SFTP tests need the local account {SFTP_USER} (created as root with useradd and \
             chpasswd): {e}"
        ),
    }
}

/// Makes an ed25519 key pair at `path` and `path.pub`; returns the public key line.
pub fn ssh_keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "hl-test", "-f"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("ssh-keygen: {e}; scripts/test.sh installs openssh-client"));
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Debian's sshd with `internal-sftp`, logging in `SFTP_USER` by password or by `client_key`.
pub struct SftpServer {
    /// First, so the server is gone before its directory is removed.
    _process: ServerProcess,
    pub port: u16,
    pub dir: TempDir,
    /// Directory the account may write in; store directories go below it.
    pub data: PathBuf,
    /// `[127.0.0.1]:port <host key>`.
    pub known_hosts: PathBuf,
    /// Private key whose public half is authorized.
    pub client_key: PathBuf,
}

impl SftpServer {
    pub async fn start() -> SftpServer {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "{} is missing: scripts/test.sh installs openssh-server",
            sshd.display()
        );
        let uid = ensure_sftp_user();
        // Privilege separation directory, which the package's service unit would create.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        // sshd reads the authorized keys as the user.
        open_dir(dir.path());
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::chown(&data, Some(uid), None).unwrap();
        let host_key = dir.path().join("host_key");
        let host_pub = ssh_keygen(&host_key);
        let client_key = dir.path().join("client_key");
        let client_pub = ssh_keygen(&client_key);
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, format!("{client_pub}\n")).unwrap();
        std::fs::set_permissions(&authorized, std::fs::Permissions::from_mode(0o644)).unwrap();

        // sshd cannot take port 0: it gets a fixed port (see tests/common/ports.rs); should one
        // still be taken when sshd binds it, it gets another.
        let mut attempt = 0;
        let (port, process) = loop {
            attempt += 1;
            let port = fixed_port();
            let conf = dir.path().join("sshd_config");
            std::fs::write(
                &conf,
                format!(
                    "ListenAddress 127.0.0.1:{port}\n\
                     HostKey {host_key}\n\
                     PidFile none\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     PasswordAuthentication yes\n\
                     KbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\n\
                     AuthorizedKeysFile {authorized}\n\
                     AllowUsers {SFTP_USER}\n\
                     Subsystem sftp internal-sftp\n\
                     LogLevel VERBOSE\n",
                    host_key = host_key.display(),
                    authorized = authorized.display(),
                ),
            )
            .unwrap();
            let spec = Spec::new(sshd).args(["-D", "-e", "-f"]).arg(&conf);
            let mut process = ServerProcess::spawn(
                "sshd",
                spec,
                &dir.path().join(format!("sshd-{attempt}.log")),
                "scripts/test.sh installs openssh-server",
            );
            match process
                .wait_for_log(|line| line.contains("Server listening on").then_some(()))
                .await
            {
                Ok(()) => break (port, process),
                Err(log) if log.contains("Address already in use") && attempt < 5 => continue,
                Err(log) => panic!("sshd did not start: {log}"),
            }
        };
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}\n")).unwrap();
        SftpServer {
            port,
            dir,
            data,
            known_hosts,
            client_key,
            _process: process,
        }
    }

    /// `sftp://user[:password]@127.0.0.1:port/<data>/<sub>`.
    pub fn url(&self, sub: &str, password: Option<&str>) -> String {
        let login = match password {
            Some(p) => format!("{SFTP_USER}:{p}"),
            None => SFTP_USER.to_owned(),
        };
        format!(
            "sftp://{login}@127.0.0.1:{}{}",
            self.port,
            self.data.join(sub).display()
        )
    }

    /// Password login, host key checked against `known_hosts`.
    pub fn password_config(&self, sub: &str) -> SnapshotUrlConfig {
        SnapshotUrlConfig {
            url: Secret::new(self.url(sub, Some(SFTP_PASSWORD))),
            known_hosts_file: self.known_hosts.display().to_string(),
            insecure_ignore_host_key: false,
            key_file: String::new(),
        }
    }

    /// Key login (no password in the URL), host key checked against `known_hosts`.
    pub fn key_config(&self, sub: &str) -> SnapshotUrlConfig {
        SnapshotUrlConfig {
            url: Secret::new(self.url(sub, None)),
            known_hosts_file: self.known_hosts.display().to_string(),
            insecure_ignore_host_key: false,
            key_file: self.client_key.display().to_string(),
        }
    }

    /// A known-hosts file that lists this server's address with another key.
    pub fn wrong_known_hosts(&self) -> PathBuf {
        let other = ssh_keygen(&self.dir.path().join("other_host_key"));
        let path = self.dir.path().join("wrong_known_hosts");
        std::fs::write(&path, format!("[127.0.0.1]:{} {other}\n", self.port)).unwrap();
        path
    }
}

/// `rclone serve webdav` over a temp dir, with a user and password.
pub struct WebdavServer {
    /// First, so the server is gone before its directory is removed.
    _process: ServerProcess,
    pub port: u16,
    pub dir: TempDir,
    /// The directory served.
    pub data: PathBuf,
}

impl WebdavServer {
    pub async fn start() -> WebdavServer {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let spec = Spec::new("rclone")
            .args(["serve", "webdav"])
            .arg(&data)
            .args(["--addr", "127.0.0.1:0", "--user", WEBDAV_USER, "--pass"])
            .arg(WEBDAV_PASSWORD)
            .arg("--config")
            .arg(dir.path().join("rclone.conf"));
        let mut process = ServerProcess::spawn(
            "rclone",
            spec,
            &dir.path().join("rclone.log"),
            "scripts/test.sh installs Debian's rclone",
        );
        let port = process
            .wait_for_log(|line| {
                line.contains("WebDav Server started")
                    .then(|| port_after(line, "http://127.0.0.1:"))?
            })
            .await
            .unwrap_or_else(|log| panic!("rclone serve webdav did not start: {log}"));
        WebdavServer {
            port,
            dir,
            data,
            _process: process,
        }
    }

    /// The Go HarmonyLite form: `http://host:port/?dir=<dir>&login=<user>&secret=<password>`.
    pub fn url(&self, dir: &str, password: &str) -> String {
        format!(
            "http://127.0.0.1:{}/?dir={dir}&login={WEBDAV_USER}&secret={password}",
            self.port
        )
    }

    pub fn config(&self, dir: &str) -> SnapshotUrlConfig {
        SnapshotUrlConfig {
            url: Secret::new(self.url(dir, WEBDAV_PASSWORD)),
            ..SnapshotUrlConfig::default()
        }
    }
}

/// Every store the tests cover; SFTP twice, once per login method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    S3,
    SftpPassword,
    SftpKey,
    Webdav,
    Fs,
    Nats,
}

impl StoreKind {
    pub const ALL: [StoreKind; 6] = [
        StoreKind::S3,
        StoreKind::SftpPassword,
        StoreKind::SftpKey,
        StoreKind::Webdav,
        StoreKind::Fs,
        StoreKind::Nats,
    ];
}

enum Backend {
    S3(MotoServer),
    Sftp(SftpServer),
    Webdav(WebdavServer),
    Fs(TempDir),
    Nats(NatsServer),
}

/// Directory (or prefix) below each server's root where the snapshots go; it does not exist
/// before the first upload.
const STORE_DIR: &str = "snapshots";

/// One running store, as a `[snapshot]` section.
pub struct TestStore {
    pub kind: StoreKind,
    backend: Backend,
    section: SnapshotConfig,
}

impl TestStore {
    /// Starts the server `kind` needs. For `Nats` that is a standalone nats-server, so `open`
    /// works without nodes; nodes configured with `configure` use their own NATS instead.
    pub async fn start(kind: StoreKind) -> TestStore {
        let mut section = SnapshotConfig::default();
        let backend = match kind {
            StoreKind::S3 => {
                let moto = MotoServer::start().await;
                section.store = SnapshotStore::S3;
                section.s3 = moto.s3_config(S3_BUCKET);
                Backend::S3(moto)
            }
            StoreKind::SftpPassword | StoreKind::SftpKey => {
                let sftp = SftpServer::start().await;
                section.store = SnapshotStore::Sftp;
                section.sftp = if kind == StoreKind::SftpKey {
                    sftp.key_config(STORE_DIR)
                } else {
                    sftp.password_config(STORE_DIR)
                };
                Backend::Sftp(sftp)
            }
            StoreKind::Webdav => {
                let webdav = WebdavServer::start().await;
                section.store = SnapshotStore::Webdav;
                section.webdav = webdav.config(STORE_DIR);
                Backend::Webdav(webdav)
            }
            StoreKind::Fs => {
                let dir = tempfile::tempdir().unwrap();
                section.store = SnapshotStore::Fs;
                section.fs = SnapshotFsConfig {
                    path: dir.path().join(STORE_DIR).display().to_string(),
                };
                Backend::Fs(dir)
            }
            StoreKind::Nats => {
                let nats = NatsServer::start("").await;
                section.store = SnapshotStore::Nats;
                section.nats = SnapshotNatsConfig {
                    replicas: 1,
                    bucket: NATS_BUCKET.to_owned(),
                };
                Backend::Nats(nats)
            }
        };
        TestStore {
            kind,
            backend,
            section,
        }
    }

    /// Points `cfg` at this store: sets `snapshot.store` and that store's section, leaves
    /// `enabled`, `interval`, `leader_ttl` and `keep` as they are.
    pub fn configure(&self, cfg: &mut Config) {
        let s = &self.section;
        cfg.snapshot.store = s.store;
        match s.store {
            SnapshotStore::S3 => cfg.snapshot.s3 = s.s3.clone(),
            SnapshotStore::Sftp => cfg.snapshot.sftp = s.sftp.clone(),
            SnapshotStore::Webdav => cfg.snapshot.webdav = s.webdav.clone(),
            SnapshotStore::Fs => cfg.snapshot.fs = s.fs.clone(),
            SnapshotStore::Nats => cfg.snapshot.nats = s.nats.clone(),
        }
    }

    /// A default config whose `[snapshot]` is this store (enabled).
    pub fn config(&self) -> Config {
        let mut cfg = Config::default();
        cfg.snapshot.enabled = true;
        self.configure(&mut cfg);
        cfg
    }

    /// The credential that must never show in errors, logs or `describe()`.
    pub fn secret(&self) -> Option<&'static str> {
        match self.kind {
            StoreKind::S3 => Some(S3_SECRET),
            StoreKind::SftpPassword => Some(SFTP_PASSWORD),
            StoreKind::Webdav => Some(WEBDAV_PASSWORD),
            StoreKind::SftpKey | StoreKind::Fs | StoreKind::Nats => None,
        }
    }

    /// Client URL of the standalone nats-server (`Nats` only).
    pub fn nats_url(&self) -> Option<String> {
        match &self.backend {
            Backend::Nats(nats) => Some(nats.url()),
            _ => None,
        }
    }

    /// Opens the store as a node would (for `Nats`, through the standalone server).
    pub async fn open(&self) -> Store {
        let cfg = self.config();
        let js = match &self.backend {
            Backend::Nats(nats) => {
                let client = async_nats::connect(nats.url()).await.unwrap();
                Some(async_nats::jetstream::new(client))
            }
            _ => None,
        };
        Store::open(&cfg, js.as_ref())
            .await
            .unwrap_or_else(|e| panic!("open {:?} store: {e}", self.kind))
    }

    /// Puts a directory named `name` inside the store, beside the objects (a prefix with one
    /// object below it for S3; nothing for NATS, which has no directories).
    pub async fn add_directory(&self, store: &Store, name: &str) {
        let local = match &self.backend {
            Backend::S3(_) => {
                store
                    .put_bytes(&format!("{name}/inner.json"), b"{}".to_vec())
                    .await
                    .unwrap();
                return;
            }
            Backend::Nats(_) => return,
            Backend::Sftp(s) => s.data.join(STORE_DIR),
            Backend::Webdav(w) => w.data.join(STORE_DIR),
            Backend::Fs(d) => d.path().join(STORE_DIR),
        };
        std::fs::create_dir_all(local.join(name)).unwrap();
        std::fs::write(local.join(name).join("inner.json"), b"{}").unwrap();
    }

    pub fn moto(&self) -> Option<&MotoServer> {
        match &self.backend {
            Backend::S3(moto) => Some(moto),
            _ => None,
        }
    }

    pub fn sftp(&self) -> Option<&SftpServer> {
        match &self.backend {
            Backend::Sftp(sftp) => Some(sftp),
            _ => None,
        }
    }

    pub fn webdav(&self) -> Option<&WebdavServer> {
        match &self.backend {
            Backend::Webdav(webdav) => Some(webdav),
            _ => None,
        }
    }
}

/// `len` random bytes (from the kernel).
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .take(len as u64)
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}
