//! Lift & shift's client of Supabase Cloud (`shared::lift_shift::cloud_api`)
//! and its object download (`shared::lift_shift::fetch`), against the
//! Supabase Cloud double on loopback: buckets, both listings, Auth
//! settings, a refused key, and downloads with faults, resumption and
//! cancellation.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::Digest;
use supascale_shared::import::storage::{CACHE_CONTROL_XATTR, CONTENT_TYPE_XATTR, ETAG_XATTR};
use supascale_shared::lift_shift::cloud_api::{CloudApi, CloudError, CloudObject};
use supascale_shared::lift_shift::fetch::{
    CancellationToken, FetchError, FetchOptions, FetchOutcome, FetchProgress, fetch_all,
    object_path,
};
use supascale_tests::cloud_double::{
    AuthSettings, Bucket, CloudDouble, ListV2, Object, Route, sample_objects,
};
use uuid::Uuid;

const KEY: &str = "lift-shift-fetch-service-role-key";

/// Names that need encoding, at the root and in nested folders.
const AWKWARD: [&str; 9] = [
    "with space/a b.txt",
    "quotes/it's \"quoted\".png",
    "日本語/ファイル.txt",
    "nested/a/b/c/d/deep.bin",
    "percent%20literal.txt",
    "plus+and&amp;.txt",
    "question?mark.txt",
    "hash#tag.txt",
    "résumé.pdf",
];

fn api(double: &CloudDouble) -> CloudApi {
    CloudApi::new(&double.base_url(), KEY).with_json_retries(3, Duration::from_millis(10))
}

fn quick(concurrency: usize) -> FetchOptions {
    FetchOptions {
        concurrency,
        attempts: 4,
        backoff_base: Duration::from_millis(10),
        read_timeout: Duration::from_secs(5),
    }
}

/// (name, size, md5, mimetype, cache control) of every object of a bucket.
type Row = (String, u64, Option<String>, Option<String>, Option<String>);

fn rows_of_listing(objects: &[CloudObject]) -> Vec<Row> {
    objects
        .iter()
        .map(|o| {
            (
                o.name.clone(),
                o.size,
                o.etag.clone(),
                o.mimetype.clone(),
                o.cache_control.clone(),
            )
        })
        .collect()
}

fn rows_of_double(double: &CloudDouble, bucket: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = double
        .objects()
        .into_iter()
        .filter(|o| o.bucket == bucket)
        .map(|o| {
            (
                o.key.clone(),
                o.size,
                Some(double.expected_md5(bucket, &o.key)),
                Some(o.mimetype.clone()),
                Some(o.cache_control.clone()),
            )
        })
        .collect();
    rows.sort();
    rows
}

async fn fetch(
    api: &CloudApi,
    objects: Vec<CloudObject>,
    dir: &Path,
    options: &FetchOptions,
) -> (Result<FetchOutcome, FetchError>, Vec<FetchProgress>) {
    let reports = Mutex::new(Vec::new());
    let progress = |p: FetchProgress| reports.lock().unwrap().push(p);
    let result = fetch_all(
        api,
        objects,
        dir,
        options,
        &progress,
        &CancellationToken::new(),
    )
    .await;
    (result, reports.into_inner().unwrap())
}

fn xattr_of(path: &Path, name: &str) -> String {
    String::from_utf8(xattr::get(path, name).unwrap().unwrap()).unwrap()
}

fn part_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("objects"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".part"))
                .collect()
        })
        .unwrap_or_default()
}

async fn listing(api: &CloudApi, buckets: &[&str]) -> Vec<CloudObject> {
    let mut all = Vec::new();
    for b in buckets {
        all.extend(api.objects(b).await.unwrap());
    }
    all
}

#[tokio::test]
async fn buckets_come_back_with_their_settings() {
    let owner = Uuid::from_u128(0x1234);
    let double = CloudDouble::builder()
        .service_role_key(KEY)
        .bucket(
            Bucket::new("docs")
                .file_size_limit(5_000_000)
                .allowed_mime_types(["text/plain", "image/png"]),
        )
        .bucket(Bucket::new("avatars").public(true).owner(owner))
        .bucket(Bucket::new("with space"))
        .start()
        .await;
    let buckets = api(&double).buckets().await.unwrap();
    assert_eq!(buckets.len(), 3);
    for (got, want) in buckets.iter().zip(double.buckets()) {
        assert_eq!(got.id, want.id);
        assert_eq!(got.name, want.name);
        assert_eq!(got.public, want.public);
        assert_eq!(got.owner, want.owner.map(|o| o.to_string()));
        assert_eq!(got.file_size_limit, want.file_size_limit);
        assert_eq!(got.allowed_mime_types, want.allowed_mime_types);
        assert_eq!(
            got.created_at.as_deref(),
            Some(
                want.created_at
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string()
                    .as_str()
            )
        );
        assert!(got.updated_at.is_some());
    }
    assert_eq!(buckets[0].allowed_mime_types.as_ref().unwrap().len(), 2);
    assert_eq!(buckets[1].owner, Some(owner.to_string()));
    assert_eq!(buckets[2].owner, None, "Storage's \"\" owner is none");
}

#[tokio::test]
async fn objects_are_the_same_with_list_v2_and_with_the_folder_walk() {
    let mut objects = sample_objects("media", 300, 300_000, 7);
    // More than a page of either listing in one folder.
    objects.extend((0..1005).map(|i| Object::new("media", &format!("bulk/f{i:04}.txt"), 3)));
    objects.extend(AWKWARD.map(|k| Object::new("media", k, 10)));
    objects.push(Object::new("media", "page.html", 5).cache_control("no-store"));
    let double = CloudDouble::builder()
        .service_role_key(KEY)
        .bucket(Bucket::new("media"))
        .bucket(Bucket::new("empty"))
        .objects(objects)
        .list_v2(true)
        .start()
        .await;
    double.warm_up().await;
    let api = api(&double);
    let expected = rows_of_double(&double, "media");
    assert_eq!(expected.len(), 300 + 1005 + AWKWARD.len() + 1);

    // A 500 on the first page is tried again.
    double.faults().fail_route(Route::ListV2, 500, 1);
    let v2 = api.objects("media").await.unwrap();
    assert_eq!(rows_of_listing(&v2), expected);
    assert!(
        double.stats().requests(Route::ListV2) >= 3,
        "pages and the retry"
    );
    for o in &v2 {
        assert_eq!(o.bucket, "media");
        assert_eq!(o.id, Some(double.object_id("media", &o.name).to_string()));
        assert_eq!(o.metadata["size"], o.size);
        assert!(o.created_at.is_some() && o.updated_at.is_some() && o.last_modified.is_some());
    }
    assert!(api.objects("empty").await.unwrap().is_empty());

    for mode in [ListV2::NotAvailableForTenant, ListV2::RouteMissing] {
        double.set_list_v2(mode);
        let before = double.stats().requests(Route::List);
        let v1 = api.objects("media").await.unwrap();
        assert_eq!(rows_of_listing(&v1), expected, "{mode:?}");
        // Ids and metadata are the same whichever listing gave them.
        assert_eq!(v1, v2, "{mode:?}");
        // The root, bulk/ over two pages, and every other folder.
        assert!(
            double.stats().requests(Route::List) - before > 10,
            "{mode:?}"
        );
    }
}

#[tokio::test]
async fn every_object_is_fetched_whole_with_its_xattrs_and_bounded_concurrency() {
    let mut objects = sample_objects("media", 40, 2_000_000, 3);
    objects.extend(AWKWARD.map(|k| Object::new("docs", k, 70_000)));
    objects.push(Object::new("docs", "page.html", 300).cache_control("no-store"));
    let double = CloudDouble::builder()
        .service_role_key(KEY)
        .objects(objects)
        .start()
        .await;
    let api = api(&double);
    let listed = listing(&api, &["media", "docs"]).await;
    assert_eq!(listed.len(), 40 + AWKWARD.len() + 1);
    let dir = tempfile::tempdir().unwrap();
    let options = quick(3);

    let (result, reports) = fetch(&api, listed.clone(), dir.path(), &options).await;
    let outcome = result.unwrap();
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    assert_eq!(outcome.fetched.len(), listed.len());
    assert_eq!(outcome.reused, 0);
    let max = double.stats().max_concurrent_downloads();
    assert!((1..=3).contains(&max), "at most 3 at once, saw {max}");
    assert_eq!(double.stats().downloads_completed(), listed.len() as u64);

    for f in &outcome.fetched {
        let (bucket, key) = (&f.object.bucket, &f.object.name);
        let want = double.object(bucket, key).unwrap();
        assert_eq!(f.path, object_path(dir.path(), bucket, key));
        let bytes = std::fs::read(&f.path).unwrap();
        assert_eq!(bytes.len() as u64, want.size);
        assert_eq!(f.size, want.size);
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            double.expected_sha256(bucket, key),
            "{bucket}/{key}"
        );
        assert_eq!(f.md5, double.expected_md5(bucket, key));
        assert!(!f.reused);
        assert_eq!(xattr_of(&f.path, ETAG_XATTR), double.etag(bucket, key));
        // The listing's type, even where the download answers text/plain.
        assert_eq!(xattr_of(&f.path, CONTENT_TYPE_XATTR), want.mimetype);
        assert_eq!(xattr_of(&f.path, CACHE_CONTROL_XATTR), want.cache_control);
        let mode = std::fs::metadata(&f.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
    let html = object_path(dir.path(), "docs", "page.html");
    assert_eq!(xattr_of(&html, CONTENT_TYPE_XATTR), "text/html");
    assert_eq!(xattr_of(&html, CACHE_CONTROL_XATTR), "no-store");
    assert!(part_files(dir.path()).is_empty());

    let total_bytes: u64 = listed.iter().map(|o| o.size).sum();
    let first = reports.first().unwrap();
    assert_eq!((first.files_done, first.bytes_done), (0, 0));
    assert_eq!(first.files_total, listed.len() as u64);
    assert_eq!(
        *reports.last().unwrap(),
        FetchProgress {
            files_done: listed.len() as u64,
            files_total: listed.len() as u64,
            bytes_done: total_bytes,
            bytes_total: total_bytes,
        }
    );
    assert!(
        reports
            .windows(2)
            .all(|w| w[0].files_done <= w[1].files_done)
    );

    // Again over the same folder: nothing is downloaded again.
    let before = double.stats().all_downloads();
    let requests = double.stats().requests(Route::Download);
    let (result, reports) = fetch(&api, listed.clone(), dir.path(), &options).await;
    let again = result.unwrap();
    assert_eq!(again.reused, listed.len());
    assert_eq!(again.fetched.len(), listed.len());
    assert!(again.fetched.iter().all(|f| f.reused));
    assert_eq!(double.stats().all_downloads(), before);
    assert_eq!(double.stats().requests(Route::Download), requests);
    assert_eq!(reports.last().unwrap().bytes_done, total_bytes);
    let mut md5s: BTreeMap<_, _> = again
        .fetched
        .iter()
        .map(|f| {
            (
                (f.object.bucket.clone(), f.object.name.clone()),
                f.md5.clone(),
            )
        })
        .collect();
    for f in &outcome.fetched {
        assert_eq!(
            md5s.remove(&(f.object.bucket.clone(), f.object.name.clone())),
            Some(f.md5.clone())
        );
    }

    // A changed object (new bytes, new eTag in the listing) is fetched
    // again, and a damaged file is replaced.
    double.add_object(Object::new("docs", AWKWARD[0], 1234));
    let damaged = object_path(dir.path(), "docs", AWKWARD[1]);
    xattr::set(
        &damaged,
        ETAG_XATTR,
        b"\"00000000000000000000000000000000\"",
    )
    .unwrap();
    let listed = listing(&api, &["media", "docs"]).await;
    let (result, _) = fetch(&api, listed.clone(), dir.path(), &options).await;
    let third = result.unwrap();
    assert_eq!(third.reused, listed.len() - 2);
    assert_eq!(double.stats().downloads_of("docs", AWKWARD[0]).completed, 2);
    assert_eq!(double.stats().downloads_of("docs", AWKWARD[1]).completed, 2);
    let changed = object_path(dir.path(), "docs", AWKWARD[0]);
    assert_eq!(std::fs::metadata(&changed).unwrap().len(), 1234);
    assert_eq!(
        hex::encode(sha2::Sha256::digest(std::fs::read(&changed).unwrap())),
        double.expected_sha256("docs", AWKWARD[0])
    );
}

/// A double serving `objects` (bucket `b`) whose next `times` downloads
/// each send `chunk` bytes every `interval`.
async fn trickling_double(
    objects: &[Object],
    chunk: usize,
    interval: Duration,
    times: u32,
) -> CloudDouble {
    let double = CloudDouble::builder()
        .service_role_key(KEY)
        .objects(objects.to_vec())
        .start()
        .await;
    for o in objects {
        double.faults().trickle("b", &o.key, chunk, interval, times);
    }
    double
}

#[tokio::test]
async fn downloads_in_flight_never_exceed_the_concurrency() {
    let objects: Vec<Object> = (0..24)
        .map(|i| Object::new("b", &format!("f{i:02}.bin"), 64_000))
        .collect();
    // Slow bodies, so that the double sees every download in flight (fast
    // ones fit in the socket buffers and are over before the next starts).
    let double = trickling_double(&objects, 8000, Duration::from_millis(5), 1).await;
    let api = api(&double);
    let listed = api.objects("b").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (result, _) = fetch(&api, listed, dir.path(), &quick(5)).await;
    let outcome = result.unwrap();
    assert_eq!(outcome.fetched.len(), 24);
    let max = double.stats().max_concurrent_downloads();
    assert!((3..=5).contains(&max), "at most 5 at once, saw {max}");
    assert_eq!(double.stats().concurrent_downloads(), 0);
}

#[tokio::test]
async fn faults_are_tried_again_and_a_lost_cause_fails_alone() {
    let names = [
        "throttled.bin",
        "five-hundred.bin",
        "truncated.bin",
        "slow-headers.bin",
        "stalls.bin",
        "always-503.bin",
        "gone.bin",
        "fine.bin",
    ];
    let double = CloudDouble::builder()
        .service_role_key(KEY)
        .objects(names.map(|n| Object::new("b", n, 150_000)))
        .start()
        .await;
    let api = api(&double);
    let listed = api.objects("b").await.unwrap();
    double.remove_object("b", "gone.bin");
    let faults = double.faults();
    faults.throttle("b", "throttled.bin", 2, 1);
    faults.fail("b", "five-hundred.bin", 500, 2);
    faults.truncate("b", "truncated.bin", 70_000, 2);
    faults.delay_headers("b", "slow-headers.bin", Duration::from_secs(2), 1);
    faults.trickle("b", "stalls.bin", 1000, Duration::from_secs(2), 1);
    faults.fail("b", "always-503.bin", 503, u32::MAX);
    let options = FetchOptions {
        read_timeout: Duration::from_millis(500),
        ..quick(4)
    };
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (result, reports) = fetch(&api, listed, dir.path(), &options).await;
    let elapsed = started.elapsed();
    let outcome = result.unwrap();

    let mut fetched: Vec<&str> = outcome
        .fetched
        .iter()
        .map(|f| f.object.name.as_str())
        .collect();
    fetched.sort();
    assert_eq!(
        fetched,
        [
            "fine.bin",
            "five-hundred.bin",
            "slow-headers.bin",
            "stalls.bin",
            "throttled.bin",
            "truncated.bin"
        ]
    );
    for f in &outcome.fetched {
        let bytes = std::fs::read(&f.path).unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            double.expected_sha256("b", &f.object.name)
        );
    }
    let stats = double.stats();
    assert_eq!(stats.downloads_of("b", "throttled.bin").requests, 3);
    assert_eq!(stats.downloads_of("b", "five-hundred.bin").requests, 3);
    assert_eq!(stats.downloads_of("b", "truncated.bin").started, 3);
    assert_eq!(stats.downloads_of("b", "truncated.bin").completed, 1);
    assert_eq!(stats.downloads_of("b", "slow-headers.bin").requests, 2);
    assert_eq!(stats.downloads_of("b", "stalls.bin").requests, 2);
    // Retry-After: 1 was waited twice.
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    let mut failed = outcome.failed.clone();
    failed.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0].name, "always-503.bin");
    assert!(
        failed[0].reason.contains("after 4 attempts") && failed[0].reason.contains("503"),
        "{}",
        failed[0].reason
    );
    assert_eq!(stats.downloads_of("b", "always-503.bin").requests, 4);
    // Gone since it was listed: failed at once.
    assert_eq!(failed[1].name, "gone.bin");
    assert!(
        failed[1].reason.contains("NoSuchKey"),
        "{}",
        failed[1].reason
    );
    assert_eq!(stats.downloads_of("b", "gone.bin").requests, 1);
    for f in &failed {
        assert!(!f.reason.contains(KEY));
        assert!(!object_path(dir.path(), &f.bucket, &f.name).exists());
    }
    assert!(part_files(dir.path()).is_empty());
    let last = reports.last().unwrap();
    assert_eq!(last.files_done, 8);
    assert_eq!(last.bytes_done, 6 * 150_000);
}

#[tokio::test]
async fn a_rejected_key_stops_everything_at_once_and_is_never_printed() {
    let double = CloudDouble::builder()
        .service_role_key(KEY)
        .objects(sample_objects("media", 30, 300_000, 1))
        .start()
        .await;
    let api = api(&double);
    let listed = api.objects("media").await.unwrap();

    double.faults().reject_key(true);
    let started = Instant::now();
    let e = api.buckets().await.unwrap_err();
    assert!(matches!(e, CloudError::KeyRejected { .. }), "{e:?}");
    assert!(!e.is_temporary());
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "the service-role key was rejected by {}",
            double.base_url()
        )),
        "{text}"
    );
    assert!(!text.contains(KEY) && !format!("{e:?}").contains(KEY));
    assert!(matches!(
        api.objects("media").await,
        Err(CloudError::KeyRejected { .. })
    ));
    assert!(matches!(
        api.auth_settings().await,
        Err(CloudError::KeyRejected { .. })
    ));

    let dir = tempfile::tempdir().unwrap();
    let options = quick(4);
    let (result, _) = fetch(&api, listed, dir.path(), &options).await;
    let e = result.unwrap_err();
    assert!(e.is_key_rejected(), "{e:?}");
    assert!(!e.to_string().contains(KEY) && !format!("{e:?}").contains(KEY));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(double.stats().requests(Route::Download) <= 4);
    assert!(part_files(dir.path()).is_empty());

    // Another key altogether: the gateway's 401.
    double.faults().reject_key(false);
    let other = CloudApi::new(&double.base_url(), "some-other-secret-key");
    let e = other.buckets().await.unwrap_err();
    assert!(e.is_key_rejected(), "{e:?}");
    assert!(!format!("{e} {e:?} {other:?}").contains("some-other-secret-key"));
}

#[tokio::test]
async fn an_unreachable_source_says_so() {
    let double = CloudDouble::builder().start().await;
    let base = double.base_url();
    double.stop().await;
    let api = CloudApi::new(&base, KEY).with_json_retries(2, Duration::from_millis(10));
    let e = api.buckets().await.unwrap_err();
    assert!(matches!(e, CloudError::Unreachable(_)), "{e:?}");
    assert!(e.is_temporary());
    assert!(e.to_string().contains("could not connect"), "{e}");
    assert!(!format!("{e:?}").contains(KEY));
}

#[tokio::test]
async fn cancelling_ends_promptly_and_leaves_no_part_file() {
    // Large enough that blocks of them are on disk (as `.part` files)
    // when the stop comes, slow enough that none is whole by then.
    let objects: Vec<Object> = (0..6)
        .map(|i| Object::new("b", &format!("big-{i}.bin"), 3_000_000))
        .collect();
    let double = trickling_double(&objects, 64_000, Duration::from_millis(10), u32::MAX).await;
    let api = api(&double);
    let listed = api.objects("b").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let canceller = {
        let stop = stop.clone();
        let dir = dir.path().to_path_buf();
        tokio::spawn(async move {
            let waiting = Instant::now();
            while part_files(&dir).is_empty() && waiting.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(!part_files(&dir).is_empty(), "no block was written in 5 s");
            stop.cancel();
        })
    };
    let started = Instant::now();
    let result = fetch_all(&api, listed, dir.path(), &quick(3), &|_| {}, &stop).await;
    canceller.await.unwrap();
    assert!(matches!(result, Err(FetchError::Cancelled)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(double.stats().downloads_started() >= 1);
    assert!(part_files(dir.path()).is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("objects"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn auth_settings_give_the_enabled_providers() {
    let double = CloudDouble::builder()
        .service_role_key(KEY)
        .auth(
            AuthSettings::default()
                .provider("github", true)
                .provider("google", true)
                .provider("anonymous_users", true)
                .provider("phone", true)
                .disable_signup(true)
                .saml_enabled(true),
        )
        .start()
        .await;
    let settings = api(&double).auth_settings().await.unwrap();
    let mut want: Vec<String> = double
        .auth_settings()
        .enabled()
        .into_iter()
        .map(String::from)
        .collect();
    want.sort();
    assert_eq!(settings.enabled, want);
    assert_eq!(
        settings.enabled,
        ["anonymous_users", "email", "github", "google", "phone"]
    );
    assert_eq!(settings.oauth_providers(), ["github", "google"]);
    assert_eq!(settings.external.len(), 26);
    assert!(settings.disable_signup && settings.saml_enabled);
    assert_eq!(settings.sms_provider.as_deref(), Some("twilio"));

    // A new project: email only, no OAuth provider.
    double.set_auth(AuthSettings::default());
    let settings = api(&double).auth_settings().await.unwrap();
    assert_eq!(settings.enabled, ["email"]);
    assert!(settings.oauth_providers().is_empty());
}
