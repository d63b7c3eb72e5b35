//! Multipart uploads that a dead worker left on an S3 destination are
//! aborted by the reconciler, and only those: not an upload younger than
//! `stale_upload_seconds`, not one outside the destination's prefix. Real
//! moto, real binaries.

use std::time::{Duration, Instant};

use supascale_shared::Secret;
use supascale_shared::destinations::{Destination, DestinationConfig};
use supascale_tests::emulators::{self, Emulator};
use supascale_tests::{Backend, Launch, TestApp};

const BUCKET: &str = "supascale-test";
const PREFIX: &str = "backups/tests";
const SECRET: &str = "moto-secret-that-must-not-be-logged";

fn destination(emulator: &Emulator, dir: &std::path::Path) -> Destination {
    let config = DestinationConfig {
        prefix: Some(PREFIX.into()),
        bucket: Some(BUCKET.into()),
        endpoint: Some(emulator.endpoint.clone()),
        access_key_id: Some("test".into()),
        secret_access_key: Some(Secret::new(SECRET)),
        chunk_bytes: Some(5 * 1024 * 1024),
        ..Default::default()
    };
    Destination::new("s3", &config, dir).unwrap()
}

/// CreateMultipartUpload straight to moto (which takes unsigned requests):
/// an upload that some other client, or another prefix, started.
async fn start_upload(emulator: &Emulator, key: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/{BUCKET}/{key}?uploads", emulator.endpoint))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let body = response.text().await.unwrap();
    body.split("<UploadId>")
        .nth(1)
        .and_then(|s| s.split("</UploadId>").next())
        .expect("an upload id")
        .to_string()
}

/// UploadPart straight to moto: the upload is alive now.
async fn upload_part(emulator: &Emulator, key: &str, upload_id: &str) {
    let response = reqwest::Client::new()
        .put(format!(
            "{}/{BUCKET}/{key}?partNumber=1&uploadId={upload_id}",
            emulator.endpoint
        ))
        .body(vec![1u8; 1024])
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// `(key, upload id)` of every multipart upload in the bucket, whatever
/// its prefix (unsigned, straight to moto).
async fn all_uploads(emulator: &Emulator) -> Vec<(String, String)> {
    let body = reqwest::Client::new()
        .get(format!("{}/{BUCKET}?uploads", emulator.endpoint))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.split("<Upload>")
        .skip(1)
        .map(|upload| {
            let field = |name: &str| {
                upload
                    .split(&format!("<{name}>"))
                    .nth(1)
                    .and_then(|s| s.split(&format!("</{name}>")).next())
                    .unwrap_or_default()
                    .to_string()
            };
            (field("Key"), field("UploadId"))
        })
        .collect()
}

/// What a worker killed mid-backup leaves: a writer that sent parts and was
/// never closed nor aborted. Returns once the upload (and its parts) are
/// there.
async fn abandon_a_writer(destination: &Destination, key: &str) {
    let mut writer = destination.writer(key).await.unwrap();
    writer.write(vec![7u8; 12 * 1024 * 1024]).await.unwrap();
    std::mem::forget(writer);
    let target = destination.s3_target().unwrap();
    let full_key = format!("{PREFIX}/{key}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let uploads = target.list_uploads().await.unwrap();
        if let Some(upload) = uploads.iter().find(|u| u.key == full_key)
            && target.last_part_at(upload).await.unwrap().is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "no multipart upload for {key}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Parts still in flight land before the sweeps below look.
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn only_stale_uploads_under_the_prefix_are_aborted() {
    let emulator = emulators::s3(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let destination = destination(&emulator, dir.path());
    let target = destination.s3_target().unwrap();
    assert_eq!(target.prefix(), "backups/tests/");

    abandon_a_writer(&destination, "my-project/dead.tar.gz").await;
    let outside = start_upload(&emulator, "elsewhere/other.tar.gz").await;
    let sibling = start_upload(&emulator, "backups/tests-other/x.tar.gz").await;
    let listed = target.list_uploads().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].key, "backups/tests/my-project/dead.tar.gz");
    let dead = listed[0].clone();

    // Nothing is an hour old yet.
    let (aborted, errors) = destination
        .abort_stale_uploads(Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        aborted.is_empty() && errors.is_empty(),
        "{aborted:?} {errors:?}"
    );
    assert_eq!(target.list_uploads().await.unwrap(), vec![dead.clone()]);

    // Older than 5 s: the dead upload; one that just received a part stays.
    // (moto reports the same `Initiated` time, in 2010, for every upload:
    // what keeps this one is its fresh part, which is also what keeps a
    // backup that streams for longer than the age.)
    tokio::time::sleep(Duration::from_secs(6)).await;
    let young_key = format!("{PREFIX}/my-project/young.tar.gz");
    let young = start_upload(&emulator, &young_key).await;
    upload_part(&emulator, &young_key, &young).await;
    let (aborted, errors) = destination
        .abort_stale_uploads(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(aborted, vec![dead.clone()]);
    let left: Vec<String> = target
        .list_uploads()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.upload_id)
        .collect();
    assert_eq!(left, vec![young.clone()]);

    // Age 0: everything under the prefix, and nothing outside it.
    let (aborted, errors) = destination
        .abort_stale_uploads(Duration::ZERO)
        .await
        .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        aborted.iter().map(|u| &u.upload_id).collect::<Vec<_>>(),
        vec![&young]
    );
    assert!(target.list_uploads().await.unwrap().is_empty());
    let mut rest: Vec<String> = all_uploads(&emulator)
        .await
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    rest.sort();
    let mut expected = vec![outside, sibling];
    expected.sort();
    assert_eq!(rest, expected);

    // Aborting what is already gone (another worker's sweep) is fine.
    target.abort(&dead).await.unwrap();
}

#[tokio::test]
async fn an_s3_error_names_the_operation_and_not_the_secret() {
    // A bucket that does not exist: S3's error code is in the message, the
    // credentials are not.
    let emulator = emulators::s3(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let config = DestinationConfig {
        bucket: Some("no-such-bucket".into()),
        endpoint: Some(emulator.endpoint.clone()),
        access_key_id: Some("test".into()),
        secret_access_key: Some(Secret::new(SECRET)),
        ..Default::default()
    };
    let destination = Destination::new("minio", &config, dir.path()).unwrap();
    let error = destination
        .abort_stale_uploads(Duration::ZERO)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("ListMultipartUploads"), "{error}");
    assert!(error.contains("NoSuchBucket"), "{error}");
    assert!(!error.contains(SECRET), "{error}");
}

/// The reconciler of a running API (embedded workers) does it on its own,
/// and says which upload it aborted.
#[tokio::test]
async fn the_reconciler_of_a_running_api_aborts_abandoned_uploads() {
    let emulator = emulators::s3(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let destination = destination(&emulator, dir.path());
    abandon_a_writer(&destination, "my-project/dead.tar.gz").await;
    let outside = start_upload(&emulator, "elsewhere/other.tar.gz").await;
    let dead = destination
        .s3_target()
        .unwrap()
        .list_uploads()
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default()
            .env("SUPASCALE_DESTINATIONS__S3__BUCKET", BUCKET)
            .env("SUPASCALE_DESTINATIONS__S3__PREFIX", PREFIX)
            .env(
                "SUPASCALE_DESTINATIONS__S3__ENDPOINT",
                emulator.endpoint.clone(),
            )
            .env("SUPASCALE_DESTINATIONS__S3__ACCESS_KEY_ID", "test")
            .env("SUPASCALE_DESTINATIONS__S3__SECRET_ACCESS_KEY", SECRET)
            .env("SUPASCALE_STALE_UPLOAD_SECONDS", "1"),
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let uploads = all_uploads(&emulator).await;
        if !uploads.iter().any(|(_, id)| *id == dead[0].upload_id) {
            assert_eq!(
                uploads,
                vec![("elsewhere/other.tar.gz".to_string(), outside.clone())]
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still there: {uploads:?}\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = app.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("aborted an abandoned multipart upload"))
        .unwrap_or_else(|| panic!("no log line:\n{logs}"));
    assert!(line.contains(&dead[0].upload_id), "{line}");
    assert!(
        line.contains("backups/tests/my-project/dead.tar.gz"),
        "{line}"
    );
    assert!(!logs.contains(SECRET), "the secret is in the logs");
}
