//! The same behaviour, checked against every destination on a real server:
//! a directory, moto (S3 and the S3-compatible r2, minio, backblaze),
//! azurite (Azure Blob) and fake-gcs-server (GCS).

use std::collections::BTreeMap;

use futures::TryStreamExt;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use supascale_shared::Secret;
use supascale_shared::destinations::{
    Destination, DestinationConfig, DestinationError, Destinations,
};
use supascale_tests::emulators::{self, AZURITE_ACCOUNT, AZURITE_KEY, Emulator};

/// A destination under test and what keeps it alive.
struct Fixture {
    destination: Destination,
    _emulator: Option<Emulator>,
    _dir: tempfile::TempDir,
}

async fn fixture(name: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DestinationConfig {
        prefix: Some("backups/tests".into()),
        ..Default::default()
    };
    let emulator = match name {
        "local" => {
            config.root = Some(dir.path().join("store").to_string_lossy().into_owned());
            None
        }
        "s3" | "r2" | "minio" | "backblaze" => {
            let emulator = emulators::s3("supascale-test").await;
            config.bucket = Some("supascale-test".into());
            config.endpoint = Some(emulator.endpoint.clone());
            config.access_key_id = Some("test".into());
            config.secret_access_key = Some(Secret::new("test"));
            Some(emulator)
        }
        "azure" => {
            let emulator = emulators::azure("supascale-test").await;
            config.container = Some("supascale-test".into());
            config.endpoint = Some(emulator.endpoint.clone());
            config.account_name = Some(AZURITE_ACCOUNT.into());
            config.account_key = Some(Secret::new(AZURITE_KEY));
            Some(emulator)
        }
        "gcs" => {
            let emulator = emulators::gcs("supascale-test").await;
            config.bucket = Some("supascale-test".into());
            config.endpoint = Some(emulator.endpoint.clone());
            config.token = Some(Secret::new("emulator-token"));
            Some(emulator)
        }
        other => panic!("no fixture for {other}"),
    };
    let destination = Destination::new(name, &config, dir.path()).unwrap();
    Fixture {
        destination,
        _emulator: emulator,
        _dir: dir,
    }
}

fn payload(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(len as u64).fill(&mut bytes[..]);
    bytes
}

async fn read_all(destination: &Destination, key: &str) -> Vec<u8> {
    let reader = destination.reader(key).await.unwrap();
    let stream = reader.into_bytes_stream(..).await.unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    chunks.concat()
}

/// 20 MiB and a bit, in uneven chunks: several parts of a multipart upload.
async fn a_large_object_round_trips(name: &str) {
    let f = fixture(name).await;
    let data = payload(20 * 1024 * 1024 + 12_345);
    let key = "my-project/2026-01-19T020000Z-full-abc.tar.gz";
    let mut writer = f.destination.writer(key).await.unwrap();
    for chunk in data.chunks(3 * 1024 * 1024 + 17) {
        writer.write(chunk.to_vec()).await.unwrap();
    }
    writer.close().await.unwrap();
    let stored = f
        .destination
        .stat(key)
        .await
        .unwrap()
        .expect("the object exists");
    assert_eq!(stored.size, data.len() as u64);
    let back = read_all(&f.destination, key).await;
    assert_eq!(
        Sha256::digest(&back),
        Sha256::digest(&data),
        "content differs"
    );
    // Ranges, for resumable downloads.
    let reader = f.destination.reader(key).await.unwrap();
    let range = reader.read(1_000_000..1_004_096).await.unwrap().to_vec();
    assert_eq!(range, data[1_000_000..1_004_096]);
    let url = f.destination.url_for(key);
    assert!(
        url.ends_with("/backups/tests/my-project/2026-01-19T020000Z-full-abc.tar.gz"),
        "{url}"
    );
}

/// An upload that is abandoned leaves no object, whole or partial.
async fn an_aborted_upload_leaves_nothing(name: &str) {
    let f = fixture(name).await;
    let key = "my-project/aborted.tar.gz";
    let mut writer = f.destination.writer(key).await.unwrap();
    let data = payload(9 * 1024 * 1024);
    writer.write(data).await.unwrap();
    writer.abort().await.unwrap();
    assert_eq!(f.destination.stat(key).await.unwrap(), None);
    if name == "local" {
        // Not even a temporary file stays behind.
        let mut leftovers = Vec::new();
        for entry in walk(f._dir.path()) {
            if entry.is_file() {
                leftovers.push(entry);
            }
        }
        assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// Delete removes the object; deleting what is gone is not an error.
async fn delete_is_idempotent(name: &str) {
    let f = fixture(name).await;
    let key = "my-project/small.tar.gz";
    let mut writer = f.destination.writer(key).await.unwrap();
    writer.write(b"hello".to_vec()).await.unwrap();
    writer.close().await.unwrap();
    assert_eq!(f.destination.stat(key).await.unwrap().unwrap().size, 5);
    f.destination.delete(key).await.unwrap();
    assert_eq!(f.destination.stat(key).await.unwrap(), None);
    f.destination.delete(key).await.unwrap();
    assert_eq!(
        f.destination
            .stat("my-project/never-written")
            .await
            .unwrap(),
        None
    );
}

macro_rules! every_destination {
    ($($backend:ident),*) => {
        $(
            mod $backend {
                #[tokio::test]
                async fn a_large_object_round_trips() {
                    super::a_large_object_round_trips(stringify!($backend)).await;
                }
                #[tokio::test]
                async fn an_aborted_upload_leaves_nothing() {
                    super::an_aborted_upload_leaves_nothing(stringify!($backend)).await;
                }
                #[tokio::test]
                async fn delete_is_idempotent() {
                    super::delete_is_idempotent(stringify!($backend)).await;
                }
            }
        )*
    };
}

every_destination!(local, s3, r2, minio, backblaze, azure, gcs);

#[test]
fn a_destination_that_is_not_configured_says_which_are() {
    let dir = tempfile::tempdir().unwrap();
    let destinations = Destinations::from_config(&BTreeMap::new(), dir.path()).unwrap();
    assert_eq!(destinations.names(), vec!["local"]);
    let error = destinations.get("s3").unwrap_err();
    assert!(matches!(error, DestinationError::NotConfigured { .. }));
    assert_eq!(
        error.to_string(),
        "destination s3 is not configured (configured: local)"
    );
}

#[test]
fn incomplete_configurations_name_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    for (name, config, missing) in [
        ("s3", DestinationConfig::default(), "bucket"),
        (
            "minio",
            DestinationConfig {
                bucket: Some("b".into()),
                ..Default::default()
            },
            "endpoint",
        ),
        (
            "azure",
            DestinationConfig {
                container: Some("c".into()),
                ..Default::default()
            },
            "account_name",
        ),
        ("gcs", DestinationConfig::default(), "bucket"),
        ("ftp", DestinationConfig::default(), "not a destination"),
    ] {
        let error = Destination::new(name, &config, dir.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains(missing), "{name}: {error}");
    }
}
