//! The Supabase Cloud double's own behaviour, through a real HTTP client:
//! listings (one level with folders, list-v2 with cursors), downloads and
//! their headers, key refusal, Auth settings, every fault and counter.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;
use supascale_tests::cloud_double::{
    AuthSettings, Bucket, CloudDouble, ListV2, Object, Route, sample_objects,
};

const KEY: &str = "test-service-role-key";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A request with the service-role key as `apikey` and bearer.
fn authed(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("apikey", KEY).bearer_auth(KEY)
}

async fn post(double: &CloudDouble, path: &str, body: Value) -> (StatusCode, Value) {
    let r = authed(client().post(format!("{}{path}", double.base_url())))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

async fn get(double: &CloudDouble, path: &str) -> reqwest::Response {
    authed(client().get(format!("{}{path}", double.base_url())))
        .send()
        .await
        .unwrap()
}

/// `/storage/v1/object/authenticated/<bucket>/<key>` with the key's
/// segments percent-encoded.
fn download_path(bucket: &str, key: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/storage/v1/object/authenticated/").unwrap();
    url.path_segments_mut()
        .unwrap()
        .pop_if_empty()
        .push(bucket)
        .extend(key.split('/'));
    url.path().to_string()
}

/// A small tree: files at the root, folders, nested folders, mixed case.
async fn tree() -> CloudDouble {
    CloudDouble::builder()
        .service_role_key(KEY)
        .seed(42)
        .bucket(
            Bucket::new("docs")
                .file_size_limit(5_000_000)
                .allowed_mime_types(["text/plain", "image/png"]),
        )
        .bucket(Bucket::new("avatars").public(true))
        .objects(
            [
                ("docs", "a.txt", 10),
                ("docs", "b-notes.txt", 20),
                ("docs", "b/one.txt", 30),
                ("docs", "b/two.txt", 40),
                ("docs", "b/deeper/three.txt", 50),
                ("docs", "C.txt", 60),
                ("docs", "d/x.png", 70),
                ("docs", "e.txt", 0),
                ("avatars", "u1/me.png", 200_000),
            ]
            .map(|(b, k, s)| Object::new(b, k, s)),
        )
        .start()
        .await
}

fn names(rows: &Value) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn buckets_are_listed_with_their_settings() {
    let double = tree().await;
    let r = get(&double, "/storage/v1/bucket").await;
    assert_eq!(r.status(), 200);
    let buckets: Value = r.json().await.unwrap();
    assert_eq!(buckets.as_array().unwrap().len(), 2);
    let docs = &buckets[0];
    assert_eq!(docs["id"], "docs");
    assert_eq!(docs["name"], "docs");
    assert_eq!(docs["public"], false);
    assert_eq!(
        docs["owner"], "",
        "a null owner is rendered as an empty string"
    );
    assert_eq!(docs["type"], "STANDARD");
    assert_eq!(docs["file_size_limit"], 5_000_000);
    assert_eq!(
        docs["allowed_mime_types"],
        json!(["text/plain", "image/png"])
    );
    assert!(docs["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(docs["updated_at"].is_string());
    assert_eq!(buckets[1]["public"], true);
    assert_eq!(buckets[1]["file_size_limit"], Value::Null);
    assert_eq!(buckets[1]["allowed_mime_types"], Value::Null);
}

#[tokio::test]
async fn list_gives_one_level_with_folders_and_pages_by_offset() {
    let double = tree().await;
    let body = json!({"prefix": "", "limit": 100, "offset": 0, "sortBy": {"column": "name", "order": "asc"}});
    let (status, rows) = post(&double, "/storage/v1/object/list/docs", body).await;
    assert_eq!(status, 200, "{rows}");
    // Case-insensitive name order, folders where their names fall.
    assert_eq!(
        names(&rows),
        ["a.txt", "b-notes.txt", "b", "C.txt", "d", "e.txt"]
    );
    // '-' sorts before '/': "b-notes.txt" comes before the folder "b".
    let folder = &rows[2];
    assert_eq!(
        folder,
        &json!({"name": "b", "id": null, "updated_at": null, "created_at": null,
                "last_accessed_at": null, "metadata": null})
    );
    let file = &rows[0];
    assert_eq!(file["id"], double.object_id("docs", "a.txt").to_string());
    let md = &file["metadata"];
    assert_eq!(md["eTag"], double.etag("docs", "a.txt"));
    assert_eq!(
        md["eTag"],
        format!("\"{}\"", double.expected_md5("docs", "a.txt"))
    );
    assert_eq!(md["size"], 10);
    assert_eq!(md["contentLength"], 10);
    assert_eq!(md["mimetype"], "text/plain");
    assert_eq!(md["cacheControl"], "max-age=3600");
    assert_eq!(md["httpStatusCode"], 200);
    assert!(md["lastModified"].is_string());
    for field in ["updated_at", "created_at", "last_accessed_at"] {
        assert!(file[field].as_str().unwrap().ends_with('Z'), "{field}");
    }

    // A prefix is a folder with or without its slash; names are relative.
    for prefix in ["b", "b/"] {
        let (_, rows) = post(
            &double,
            "/storage/v1/object/list/docs",
            json!({"prefix": prefix}),
        )
        .await;
        assert_eq!(names(&rows), ["deeper", "one.txt", "two.txt"], "{prefix}");
    }

    // Paging by offset walks the same rows.
    let mut paged = Vec::new();
    for page in 0.. {
        let (_, rows) = post(
            &double,
            "/storage/v1/object/list/docs",
            json!({"prefix": "", "limit": 4, "offset": page * 4}),
        )
        .await;
        if rows.as_array().unwrap().is_empty() {
            break;
        }
        paged.extend(names(&rows));
    }
    assert_eq!(paged, ["a.txt", "b-notes.txt", "b", "C.txt", "d", "e.txt"]);

    // Descending, and an unknown bucket (an empty list, as Storage answers).
    let (_, rows) = post(
        &double,
        "/storage/v1/object/list/docs",
        json!({"prefix": "", "sortBy": {"column": "name", "order": "desc"}}),
    )
    .await;
    assert_eq!(
        names(&rows),
        ["e.txt", "d", "C.txt", "b", "b-notes.txt", "a.txt"]
    );
    let (status, rows) = post(
        &double,
        "/storage/v1/object/list/nope",
        json!({"prefix": ""}),
    )
    .await;
    assert_eq!((status, rows), (StatusCode::OK, json!([])));

    // The body is validated as Storage's schema does.
    let (status, err) = post(&double, "/storage/v1/object/list/docs", json!({"limit": 5})).await;
    assert_eq!(status, 400);
    assert_eq!(err["statusCode"], "400");
    assert_eq!(err["code"], "InvalidRequest");
    assert_eq!(err["message"], "body must have required property 'prefix'");
}

#[tokio::test]
async fn list_v2_pages_by_cursor_flat_and_by_folder() {
    let double = tree().await;
    let path = "/storage/v1/object/list-v2/docs";
    // Flat: every object under the prefix, bytewise order, cursor paging.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut body = json!({"prefix": "", "limit": 3});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let (status, page) = post(&double, path, body).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["folders"], json!([]));
        for o in page["objects"].as_array().unwrap() {
            assert!(o["id"].is_string());
            assert!(o["metadata"]["eTag"].is_string());
            seen.push(o["name"].as_str().unwrap().to_string());
        }
        pages += 1;
        if page["hasNext"] == false {
            assert!(page.get("nextCursor").is_none());
            break;
        }
        assert_eq!(page["nextCursorKey"], json!(seen.last().unwrap()));
        cursor = Some(page["nextCursor"].as_str().unwrap().to_string());
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        [
            "C.txt",
            "a.txt",
            "b-notes.txt",
            "b/deeper/three.txt",
            "b/one.txt",
            "b/two.txt",
            "d/x.png",
            "e.txt"
        ]
    );

    // With the delimiter: one level, folders with a trailing slash.
    let (_, page) = post(
        &double,
        path,
        json!({"prefix": "b/", "with_delimiter": true}),
    )
    .await;
    assert_eq!(page["hasNext"], false);
    assert_eq!(
        page["folders"],
        json!([{"key": "deeper", "name": "b/deeper/", "id": null, "updated_at": null,
                "created_at": null, "last_accessed_at": null, "metadata": null}])
    );
    let objects: Vec<_> = page["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].clone())
        .collect();
    assert_eq!(objects, [json!("b/one.txt"), json!("b/two.txt")]);
    assert_eq!(page["objects"][0]["key"], "one.txt");

    // Delimited paging crosses folders once each.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut body = json!({"prefix": "", "limit": 2, "with_delimiter": true});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let (_, page) = post(&double, path, body).await;
        for f in page["folders"].as_array().unwrap() {
            seen.push(f["name"].as_str().unwrap().to_string());
        }
        for o in page["objects"].as_array().unwrap() {
            seen.push(o["name"].as_str().unwrap().to_string());
        }
        if page["hasNext"] == false {
            break;
        }
        cursor = Some(page["nextCursor"].as_str().unwrap().to_string());
    }
    seen.sort();
    assert_eq!(seen, ["C.txt", "a.txt", "b-notes.txt", "b/", "d/", "e.txt"]);

    // A broken cursor is Storage's InvalidParameter.
    let (status, err) = post(&double, path, json!({"cursor": "!!!"})).await;
    assert_eq!(status, 400);
    assert_eq!(err["code"], "InvalidParameter");
    assert_eq!(err["message"], "Invalid Parameter continuation token");
}

#[tokio::test]
async fn list_v2_switched_off_answers_like_an_older_server() {
    let double = tree().await;
    let path = "/storage/v1/object/list-v2/docs";
    double.set_list_v2(false);
    let (status, err) = post(&double, path, json!({"prefix": ""})).await;
    assert_eq!(status, 400);
    assert_eq!(
        err,
        json!({"statusCode": "400", "error": "FeatureNotEnabled",
               "message": "This feature is not available for your tenant", "code": "FeatureNotEnabled"})
    );
    double.set_list_v2(ListV2::RouteMissing);
    let (status, err) = post(&double, path, json!({"prefix": ""})).await;
    assert_eq!(status, 404);
    assert_eq!(err["statusCode"], "404");
    assert_eq!(err["message"], "Route POST:/object/list-v2/docs not found");
    // The old listing still works.
    let (status, _) = post(
        &double,
        "/storage/v1/object/list/docs",
        json!({"prefix": ""}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn downloads_carry_the_bytes_and_headers_storage_sends() {
    let key = "u1/scan 2026 résumé.png";
    let double = CloudDouble::builder()
        .service_role_key(KEY)
        .object(Object::new("docs", key, 300_000).cache_control("no-cache"))
        .object(Object::new("docs", "page.html", 5))
        .start()
        .await;
    let r = get(&double, &download_path("docs", key)).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["content-length"], "300000");
    assert_eq!(h["etag"].to_str().unwrap(), double.etag("docs", key));
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["accept-ranges"], "bytes");
    assert!(h["last-modified"].to_str().unwrap().ends_with(" GMT"));
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len(), 300_000);
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        double.expected_sha256("docs", key)
    );
    assert_eq!(&bytes[..], &double.object_bytes("docs", key)[..]);

    // The listing's eTag is the header's.
    let (_, rows) = post(
        &double,
        "/storage/v1/object/list/docs",
        json!({"prefix": "u1"}),
    )
    .await;
    assert_eq!(rows[0]["metadata"]["eTag"], h["etag"].to_str().unwrap());

    // A range, and an unsatisfiable one.
    let r = authed(client().get(format!(
        "{}{}",
        double.base_url(),
        download_path("docs", key)
    )))
    .header("range", "bytes=1000-1999")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 1000-1999/300000");
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        &double.object_range("docs", key, 1000, 2000)[..]
    );
    let r = authed(client().get(format!(
        "{}{}",
        double.base_url(),
        download_path("docs", key)
    )))
    .header("range", "bytes=400000-")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 416);

    // HTML is served as text/plain, as Storage does.
    let r = get(&double, &download_path("docs", "page.html")).await;
    assert_eq!(r.headers()["content-type"], "text/plain");

    // Missing objects and buckets: HTTP 400 with the 404 inside.
    let r = get(&double, &download_path("docs", "nope.png")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"statusCode": "404", "error": "not_found", "message": "Object not found", "code": "NoSuchKey"})
    );
    let r = get(&double, &download_path("nobucket", "x")).await;
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(
        (err["code"].as_str(), err["statusCode"].as_str()),
        (Some("NoSuchBucket"), Some("404"))
    );
}

#[tokio::test]
async fn a_wrong_or_refused_key_gets_the_real_answers() {
    let double = tree().await;
    let base = double.base_url();
    let c = client();
    // A wrong apikey: the gateway's 401, on Storage and Auth alike.
    for path in ["/storage/v1/bucket", "/auth/v1/settings"] {
        let r = c
            .get(format!("{base}{path}"))
            .header("apikey", "wrong")
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["message"], "Invalid API key");
        assert!(body["hint"].as_str().unwrap().contains("service_role"));
    }
    // Auth without any apikey.
    let r = c
        .get(format!("{base}/auth/v1/settings"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "No API key found in request"
    );
    // Storage's own JWT check: HTTP 400, statusCode "403".
    let r = c
        .get(format!("{base}/storage/v1/bucket"))
        .bearer_auth("a.b.c")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"statusCode": "403", "error": "Unauthorized",
               "message": "signature verification failed", "code": "AccessDenied"})
    );
    let r = c
        .post(format!("{base}/storage/v1/object/list/docs"))
        .header("apikey", KEY)
        .json(&json!({"prefix": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "Invalid Compact JWS"
    );
    let r = c
        .get(format!("{base}{}", download_path("docs", "a.txt")))
        .header("apikey", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "headers must have required property 'authorization'"
    );
    assert_eq!(double.stats().rejected_requests(), 5);

    // The switch: the right key is refused too, then accepted again.
    double.faults().reject_key(true);
    let r = get(&double, "/storage/v1/bucket").await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "Invalid API key"
    );
    double.faults().reject_key(false);
    assert_eq!(get(&double, "/storage/v1/bucket").await.status(), 200);
}

#[tokio::test]
async fn auth_settings_report_the_configured_providers() {
    let double = CloudDouble::builder()
        .service_role_key(KEY)
        .auth(
            AuthSettings::default()
                .provider("google", true)
                .provider("github", true)
                .provider("anonymous_users", true)
                .mailer_autoconfirm(true),
        )
        .start()
        .await;
    let r = get(&double, "/auth/v1/settings").await;
    assert_eq!(r.status(), 200);
    let s: Value = r.json().await.unwrap();
    let ext = s["external"].as_object().unwrap();
    assert_eq!(ext.len(), 26);
    for (p, on) in [
        ("google", true),
        ("github", true),
        ("email", true),
        ("anonymous_users", true),
        ("apple", false),
        ("phone", false),
        ("azure", false),
    ] {
        assert_eq!(ext[p], on, "{p}");
    }
    assert_eq!(s["disable_signup"], false);
    assert_eq!(s["mailer_autoconfirm"], true);
    assert_eq!(s["phone_autoconfirm"], false);
    assert_eq!(s["saml_enabled"], false);
    assert!(s["sms_provider"].is_string());
    assert!(s["passkeys_enabled"].is_boolean());
    assert_eq!(
        double.auth_settings().enabled(),
        ["anonymous_users", "github", "google", "email"]
    );
    // Auth's router answers other paths with Go's plain 404.
    let r = get(&double, "/auth/v1/nothing").await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn throttles_and_failures_fire_as_configured() {
    let double = tree().await;
    let path = download_path("docs", "a.txt");
    double
        .faults()
        .throttle("docs", "a.txt", 2, 7)
        .fail("docs", "a.txt", 503, 1);
    for _ in 0..2 {
        let r = get(&double, &path).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "7");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "SlowDown");
    }
    let r = get(&double, &path).await;
    assert_eq!(r.status(), 503);
    assert!(r.json::<Value>().await.unwrap()["message"].is_string());
    assert_eq!(get(&double, &path).await.status(), 200);
    let counts = double.stats().downloads_of("docs", "a.txt");
    assert_eq!(
        (counts.requests, counts.started, counts.completed),
        (4, 1, 1)
    );

    // Every 3rd download is throttled, twice.
    let other = download_path("docs", "C.txt");
    double.faults().throttle_every(3, 2, 1);
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(get(&double, &other).await.status().as_u16());
    }
    // Download requests so far: 4 above, so the 6th and 9th are throttled.
    assert_eq!(statuses, [200, 429, 200, 200, 429, 200, 200]);

    // A failing listing.
    double.faults().fail_route(Route::List, 502, 1);
    let (status, body) = post(
        &double,
        "/storage/v1/object/list/docs",
        json!({"prefix": ""}),
    )
    .await;
    assert_eq!(status, 502);
    assert!(body["message"].is_string());
    let (status, _) = post(
        &double,
        "/storage/v1/object/list/docs",
        json!({"prefix": ""}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn slow_trickled_and_truncated_responses() {
    let double = tree().await;
    let key = "u1/me.png";
    let path = download_path("avatars", key);

    // Delay before the headers.
    double
        .faults()
        .delay_headers("avatars", key, Duration::from_millis(300), 1);
    let t = Instant::now();
    let r = get(&double, &path).await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.bytes().await.unwrap().len(), 200_000);

    // A trickle: 4 chunks of 50 KB, 100 ms apart.
    double
        .faults()
        .trickle("avatars", key, 50_000, Duration::from_millis(100), 1);
    let t = Instant::now();
    let bytes = get(&double, &path).await.bytes().await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        double.expected_sha256("avatars", key)
    );

    // A truncated body: all of Content-Length announced, 1000 bytes sent.
    double.faults().truncate("avatars", key, 1000, 1);
    let r = get(&double, &path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "200000");
    assert!(r.bytes().await.is_err(), "the body must end early");
    let counts = double.stats().downloads_of("avatars", key);
    assert_eq!(
        (counts.requests, counts.started, counts.completed),
        (3, 3, 2)
    );
    assert_eq!(counts.bytes, 2 * 200_000 + 1000);

    // A slow listing.
    double.faults().slow_listing(Duration::from_millis(200));
    let t = Instant::now();
    let (status, _) = post(
        &double,
        "/storage/v1/object/list/docs",
        json!({"prefix": ""}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));
    double.faults().clear();
    // The next download is whole.
    let bytes = get(&double, &path).await.bytes().await.unwrap();
    assert_eq!(bytes.len(), 200_000);
}

#[tokio::test]
async fn counters_count_requests_downloads_and_concurrency() {
    let objects = sample_objects("media", 12, 600_000, 3);
    assert_eq!(objects.iter().map(|o| o.size).sum::<u64>(), 600_000);
    let double = CloudDouble::builder()
        .service_role_key(KEY)
        .objects(objects.clone())
        .start()
        .await;
    assert_eq!(double.total_bytes(), 600_000);
    // Every object trickles slowly enough for 6 at once to overlap.
    for o in &objects {
        double
            .faults()
            .trickle(&o.bucket, &o.key, 64 * 1024, Duration::from_millis(60), 1);
    }
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(6));
    let mut tasks = tokio::task::JoinSet::new();
    for o in objects.clone() {
        let url = format!("{}{}", double.base_url(), download_path(&o.bucket, &o.key));
        let semaphore = semaphore.clone();
        tasks.spawn(async move {
            let _permit = semaphore.acquire().await.unwrap();
            let r = client()
                .get(url)
                .header("apikey", KEY)
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            (o, r.bytes().await.unwrap())
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (o, bytes) = done.unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            double.expected_sha256(&o.bucket, &o.key)
        );
    }
    let stats = double.stats();
    assert_eq!(stats.requests(Route::Download), 12);
    assert_eq!(stats.downloads_started(), 12);
    assert_eq!(stats.downloads_completed(), 12);
    assert_eq!(stats.bytes_sent(), 600_000);
    let max = stats.max_concurrent_downloads();
    assert!((2..=6).contains(&max), "max concurrent {max}");
    assert_eq!(stats.concurrent_downloads(), 0);
    assert!(stats.completed_more_than_once().is_empty());
    // Download one again: it shows up as fetched twice.
    let o = &objects[1];
    get(&double, &download_path(&o.bucket, &o.key))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        stats.completed_more_than_once(),
        [(o.bucket.clone(), o.key.clone())]
    );
    post(
        &double,
        "/storage/v1/object/list/media",
        json!({"prefix": ""}),
    )
    .await;
    get(&double, "/storage/v1/bucket").await;
    assert_eq!(stats.requests(Route::List), 1);
    assert_eq!(stats.requests(Route::Buckets), 1);
    assert_eq!(stats.total_requests(), 15);
    stats.reset();
    assert_eq!(stats.total_requests(), 0);
}

#[tokio::test]
async fn a_stopped_double_is_unreachable_until_resumed() {
    let double = tree().await;
    assert_eq!(get(&double, "/storage/v1/bucket").await.status(), 200);
    double.stop().await;
    assert!(!double.is_running());
    let err = authed(client().get(format!("{}/storage/v1/bucket", double.base_url())))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
    double.resume().await;
    assert_eq!(get(&double, "/storage/v1/bucket").await.status(), 200);
}

#[tokio::test]
async fn a_seeded_source_database_agrees_with_the_api() {
    use supascale_tests::psql;
    let double = CloudDouble::builder()
        .service_role_key(KEY)
        .bucket(
            Bucket::new("docs")
                .file_size_limit(1000)
                .allowed_mime_types(["text/plain"]),
        )
        .bucket(Bucket::new("avatars").public(true))
        .object(Object::new("docs", "a'b/c.txt", 100).owner(uuid::Uuid::from_u128(7)))
        .object(Object::new("docs", "x.txt", 0).user_metadata(json!({"k": "v"})))
        .objects(sample_objects("avatars", 20, 100_000, 1))
        .start()
        .await;
    // The reference project's subset of the columns…
    let project = supascale_tests::refproject::make(0.0, 1, true).await;
    double
        .seed_source_database(&project.database.url)
        .await
        .unwrap();
    let url = &project.database.url;
    assert_eq!(
        psql(
            url,
            "SELECT string_agg(id || ':' || public, ',' ORDER BY id) FROM storage.buckets"
        ),
        "avatars:true,docs:false"
    );
    assert_eq!(psql(url, "SELECT count(*) FROM storage.objects"), "22");
    let etag = psql(
        url,
        "SELECT metadata->>'eTag' FROM storage.objects WHERE name = 'a''b/c.txt'",
    );
    assert_eq!(etag, double.etag("docs", "a'b/c.txt"));
    let id = psql(
        url,
        "SELECT id || ' ' || owner FROM storage.objects WHERE name = 'a''b/c.txt'",
    );
    assert_eq!(
        id,
        format!(
            "{} {}",
            double.object_id("docs", "a'b/c.txt"),
            uuid::Uuid::from_u128(7)
        )
    );
    // Seeding again replaces, not duplicates.
    double.seed_source_database(url).await.unwrap();
    assert_eq!(psql(url, "SELECT count(*) FROM storage.objects"), "22");

    // …and Supabase's full set.
    let db = supascale_tests::TempDatabase::create("supascale_clouddouble").await;
    psql(
        &db.url,
        "CREATE SCHEMA storage; \
         CREATE TABLE storage.buckets (id text PRIMARY KEY, name text NOT NULL, owner uuid, \
           created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now(), \
           public boolean DEFAULT false, avif_autodetection boolean DEFAULT false, \
           file_size_limit bigint, allowed_mime_types text[], owner_id text, type text DEFAULT 'STANDARD'); \
         CREATE TABLE storage.objects (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), bucket_id text, \
           name text, owner uuid, created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now(), \
           last_accessed_at timestamptz DEFAULT now(), metadata jsonb, \
           path_tokens text[] GENERATED ALWAYS AS (string_to_array(name, '/')) STORED, \
           version text, owner_id text, user_metadata jsonb); \
         CREATE UNIQUE INDEX bucketid_objname ON storage.objects (bucket_id, name);",
    );
    double.seed_source_database(&db.url).await.unwrap();
    assert_eq!(
        psql(
            &db.url,
            "SELECT file_size_limit || ' ' || allowed_mime_types::text FROM storage.buckets WHERE id = 'docs'"
        ),
        "1000 {text/plain}"
    );
    assert_eq!(
        psql(
            &db.url,
            "SELECT user_metadata::text FROM storage.objects WHERE name = 'x.txt'"
        ),
        r#"{"k": "v"}"#
    );
    // The timestamps are the API's.
    let (_, rows) = post(
        &double,
        "/storage/v1/object/list/docs",
        json!({"prefix": ""}),
    )
    .await;
    let api_created = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "x.txt")
        .unwrap()["created_at"]
        .clone();
    let db_created = psql(
        &db.url,
        "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') FROM storage.objects WHERE name = 'x.txt'",
    );
    assert_eq!(api_created, db_created);
}
