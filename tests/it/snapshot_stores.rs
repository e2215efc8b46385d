//! Snapshot stores against real servers on loopback (harness::stores): every store keeps the
//! same contract (round trips, listing, missing and oversized objects, idempotent delete), S3
//! creates its bucket, SFTP checks logins and host keys, and no error carries a credential.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use harmonylite::config::{Config, Secret, SnapshotStore};
use harmonylite::snapshot::history;
use harmonylite::snapshot::store::{Store, StoreError};

use crate::harness::ClosedPort;
use crate::harness::stores::{
    S3_BUCKET, SFTP_PASSWORD, SFTP_USER, SftpServer, StoreKind, TestStore, WEBDAV_PASSWORD,
    random_bytes,
};

/// Not a multiple of any chunk size, so the last chunk is a partial one.
const FILE_SIZE: usize = 3 * 1024 * 1024 + 12_345;

/// Remembers the last progress report.
#[derive(Default)]
struct LastProgress {
    done: AtomicU64,
    total: AtomicU64,
}

impl LastProgress {
    fn report(&self, done: u64, total: u64) {
        self.done.store(done, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    fn last(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

/// Panics unless `e` is `NotFound`; returns it for the secret check.
fn expect_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) -> StoreError {
    match r {
        Err(e @ StoreError::NotFound { .. }) => e,
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

fn expect_too_large<T: std::fmt::Debug>(
    r: Result<T, StoreError>,
    size: u64,
    limit: u64,
) -> StoreError {
    match r {
        Err(e @ StoreError::TooLarge { .. }) => {
            let StoreError::TooLarge {
                size: s, limit: l, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*s, *l), (size, limit), "{e}");
            e
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

fn assert_no_secret(secret: Option<&str>, texts: &[String]) {
    let Some(secret) = secret else { return };
    for text in texts {
        assert!(!text.contains(secret), "leaks the secret: {text}");
    }
}

async fn sorted_list(store: &Store) -> Vec<String> {
    let mut names = store.list().await.unwrap();
    names.sort();
    names
}

/// The contract every store keeps.
async fn exercise(ts: &TestStore) {
    let started = Instant::now();
    let store = ts.open().await;
    let mut texts = vec![store.describe().to_owned()];
    assert_eq!(sorted_list(&store).await, Vec::<String>::new(), "new store");

    // The snapshot leader's question after a failure (`snapshot::retry`): a small write, and
    // its delete, leave nothing behind.
    assert!(
        history::writable(&store).await,
        "the store takes a small write"
    );
    assert_eq!(
        sorted_list(&store).await,
        Vec::<String>::new(),
        "the probe is gone"
    );

    // Small objects, and overwriting one (the latest-pointer moves this way).
    small_objects_and_overwrite(&store).await;

    // A file up and down, with progress to the end both ways.
    let tmp = tempfile::tempdir().unwrap();
    file_round_trip(&store, tmp.path()).await;

    // Listing names objects only, not directories.
    store
        .put_bytes("s1.manifest.json", b"{}".to_vec())
        .await
        .unwrap();
    ts.add_directory(&store, "nested").await;
    assert_eq!(
        sorted_list(&store).await,
        ["latest.json", "s1.db.zst", "s1.manifest.json"]
    );

    // Missing and oversized objects.
    texts.extend(missing_and_oversized(&store, tmp.path()).await);

    // Delete, twice, and a name that never was.
    let size = FILE_SIZE as u64;
    store.delete("s1.db.zst").await.unwrap();
    assert_eq!(
        sorted_list(&store).await,
        ["latest.json", "s1.manifest.json"]
    );
    texts.push(expect_not_found(store.get_bytes("s1.db.zst", size).await, "deleted").to_string());
    store.delete("s1.db.zst").await.unwrap();
    store.delete("never-there.json").await.unwrap();

    assert_no_secret(ts.secret(), &texts);
    eprintln!(
        "{:?} store: contract kept in {:?}",
        ts.kind,
        started.elapsed()
    );
}

/// Writes `latest.json`, reads it back, overwrites it and reads it with a limit equal to its
/// size.
async fn small_objects_and_overwrite(store: &Store) {
    store
        .put_bytes("latest.json", b"{\"id\":\"one\"}".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.get_bytes("latest.json", 1024).await.unwrap(),
        b"{\"id\":\"one\"}"
    );
    store
        .put_bytes("latest.json", b"{\"id\":\"two\"}".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.get_bytes("latest.json", 12).await.unwrap(),
        b"{\"id\":\"two\"}",
        "overwritten, and a limit equal to the size is fine"
    );
}

/// Uploads `s1.db.zst` from a file in `tmp` and downloads it over a stale file: same bytes,
/// progress reported to the end both ways.
async fn file_round_trip(store: &Store, tmp: &Path) {
    let data = random_bytes(FILE_SIZE);
    let up = tmp.join("up.db.zst");
    std::fs::write(&up, &data).unwrap();
    let size = FILE_SIZE as u64;
    let progress = LastProgress::default();
    store
        .put_file("s1.db.zst", &up, &|d, t| progress.report(d, t))
        .await
        .unwrap();
    assert_eq!(progress.last(), (size, size), "upload progress");
    let down = tmp.join("down.db.zst");
    // An existing file is replaced, not appended to.
    std::fs::write(&down, b"stale content").unwrap();
    let progress = LastProgress::default();
    let got = store
        .get_file("s1.db.zst", &down, size, &|d, t| progress.report(d, t))
        .await
        .unwrap();
    assert_eq!(got, size);
    assert_eq!(progress.last(), (size, size), "download progress");
    assert!(
        std::fs::read(&down).unwrap() == data,
        "downloaded bytes differ"
    );
}

/// Reads of a missing name and of `s1.db.zst` with a limit one byte short, as bytes and into a
/// file in `tmp`: `NotFound` and `TooLarge`. Returns the errors' texts for the secret check.
async fn missing_and_oversized(store: &Store, tmp: &Path) -> Vec<String> {
    let size = FILE_SIZE as u64;
    let mut texts = Vec::new();
    let missing = tmp.join("missing");
    texts.push(
        expect_not_found(store.get_bytes("nothing.json", 1024).await, "get_bytes").to_string(),
    );
    texts.push(
        expect_not_found(
            store
                .get_file("nothing.db.zst", &missing, size, &|_, _| {})
                .await,
            "get_file",
        )
        .to_string(),
    );
    texts.push(
        expect_too_large(store.get_bytes("s1.db.zst", size - 1).await, size, size - 1).to_string(),
    );
    let small = tmp.join("small");
    texts.push(
        expect_too_large(
            store
                .get_file("s1.db.zst", &small, size - 1, &|_, _| {})
                .await,
            size,
            size - 1,
        )
        .to_string(),
    );
    texts
}

/// Starts `kind`'s server and runs the contract on it.
async fn start_and_exercise(kind: StoreKind) {
    let started = Instant::now();
    let ts = TestStore::start(kind).await;
    eprintln!("{kind:?} store: server ready in {:?}", started.elapsed());
    exercise(&ts).await;
}

#[tokio::test]
async fn s3_store_creates_its_bucket_and_keeps_the_contract() {
    let ts = TestStore::start(StoreKind::S3).await;
    let moto = ts.moto().unwrap();
    assert!(!moto.bucket_exists(S3_BUCKET).await, "bucket before open");
    let _store = ts.open().await;
    assert!(moto.bucket_exists(S3_BUCKET).await, "bucket after open");
    // A second open finds the bucket there.
    let _again = ts.open().await;
    exercise(&ts).await;
}

#[tokio::test]
async fn sftp_store_with_password_keeps_the_contract() {
    start_and_exercise(StoreKind::SftpPassword).await;
}

#[tokio::test]
async fn sftp_store_with_key_keeps_the_contract() {
    start_and_exercise(StoreKind::SftpKey).await;
}

#[tokio::test]
async fn webdav_store_keeps_the_contract() {
    start_and_exercise(StoreKind::Webdav).await;
}

#[tokio::test]
async fn fs_store_keeps_the_contract() {
    start_and_exercise(StoreKind::Fs).await;
}

#[tokio::test]
async fn nats_store_keeps_the_contract() {
    start_and_exercise(StoreKind::Nats).await;
}

fn sftp_config(url: String, known_hosts: &Path, insecure: bool) -> Config {
    let mut cfg = Config::default();
    cfg.snapshot.store = SnapshotStore::Sftp;
    cfg.snapshot.sftp.url = Secret::new(url);
    cfg.snapshot.sftp.known_hosts_file = known_hosts.display().to_string();
    cfg.snapshot.sftp.insecure_ignore_host_key = insecure;
    cfg
}

/// The first operation's error (SFTP connects per operation).
async fn first_error(cfg: &Config) -> String {
    match Store::open(cfg, None).await {
        Err(e) => e.to_string(),
        Ok(store) => store.list().await.unwrap_err().to_string(),
    }
}

#[tokio::test]
async fn sftp_refuses_a_wrong_password_and_an_unknown_host_key() {
    let sftp = SftpServer::start().await;
    let wrong_password = "not-the-Password-77";

    let cfg = sftp_config(
        sftp.url("snapshots", Some(wrong_password)),
        &sftp.known_hosts,
        false,
    );
    let e = first_error(&cfg).await;
    assert!(
        e.contains(&format!("authentication as {SFTP_USER} failed")),
        "wrong password: {e}"
    );
    assert_no_secret(Some(wrong_password), std::slice::from_ref(&e));

    let cfg = sftp_config(
        sftp.url("snapshots", Some(SFTP_PASSWORD)),
        &sftp.wrong_known_hosts(),
        false,
    );
    let e = first_error(&cfg).await;
    assert!(e.contains("host key not accepted"), "other host key: {e}");
    assert_no_secret(Some(SFTP_PASSWORD), std::slice::from_ref(&e));

    // A host missing from the file is refused the same way.
    let empty = sftp.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let cfg = sftp_config(sftp.url("snapshots", Some(SFTP_PASSWORD)), &empty, false);
    let e = first_error(&cfg).await;
    assert!(e.contains("host key not accepted"), "unknown host: {e}");

    // Only the explicit opt-out connects without a known-hosts file.
    let nowhere = sftp.dir.path().join("no_such_known_hosts");
    let cfg = sftp_config(sftp.url("snapshots", Some(SFTP_PASSWORD)), &nowhere, true);
    let store = Store::open(&cfg, None).await.unwrap();
    store
        .put_bytes("latest.json", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(store.list().await.unwrap(), ["latest.json"]);
}

#[tokio::test]
async fn webdav_refuses_a_wrong_password_without_printing_it() {
    let ts = TestStore::start(StoreKind::Webdav).await;
    let webdav = ts.webdav().unwrap();
    let wrong_password = "not-the-Dav-password-31";
    let mut cfg = ts.config();
    cfg.snapshot.webdav.url = Secret::new(webdav.url("snapshots", wrong_password));
    let e = first_error(&cfg).await;
    assert!(e.contains("webdav"), "names the store: {e}");
    assert_no_secret(Some(wrong_password), std::slice::from_ref(&e));
    assert_no_secret(Some(WEBDAV_PASSWORD), std::slice::from_ref(&e));
}

#[tokio::test]
async fn s3_unreachable_endpoint_error_names_no_credential() {
    let mut cfg = Config::default();
    cfg.snapshot.store = SnapshotStore::S3;
    // Connections are refused there for the whole test.
    let closed = ClosedPort::bind();
    cfg.snapshot.s3.endpoint = format!("127.0.0.1:{}", closed.port);
    cfg.snapshot.s3.bucket = "b".to_owned();
    cfg.snapshot.s3.force_path_style = true;
    cfg.snapshot.s3.access_key = "hl-access".to_owned();
    cfg.snapshot.s3.secret = Secret::new("hl-unreachable-Secret".to_owned());
    cfg.snapshot.s3.session_token = Secret::new("hl-unreachable-Token".to_owned());
    let e = match Store::open(&cfg, None).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened a store with nothing listening"),
    };
    assert!(e.contains("s3 bucket b"), "names the store: {e}");
    assert_no_secret(Some("hl-unreachable-Secret"), std::slice::from_ref(&e));
    assert_no_secret(Some("hl-unreachable-Token"), std::slice::from_ref(&e));
}

/// Past opendal's 8 MiB write chunk: S3 uploads in parts, WebDAV must still get one whole file.
#[tokio::test]
async fn files_larger_than_one_write_chunk_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let data = random_bytes(9 * 1024 * 1024 + 7);
    let up = tmp.path().join("big");
    std::fs::write(&up, &data).unwrap();
    for kind in [StoreKind::S3, StoreKind::Webdav] {
        let started = Instant::now();
        let ts = TestStore::start(kind).await;
        let store = ts.open().await;
        store.put_file("big.db.zst", &up, &|_, _| {}).await.unwrap();
        let down = tmp.path().join(format!("{kind:?}"));
        let got = store
            .get_file("big.db.zst", &down, u64::MAX, &|_, _| {})
            .await
            .unwrap();
        assert_eq!(got, data.len() as u64, "{kind:?}");
        assert!(
            std::fs::read(&down).unwrap() == data,
            "{kind:?}: bytes differ"
        );
        assert_eq!(store.list().await.unwrap(), ["big.db.zst"], "{kind:?}");
        eprintln!("{kind:?}: 9 MiB up and down in {:?}", started.elapsed());
    }
}
