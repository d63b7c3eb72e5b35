//! `POST /projects/{id}/import/lift-shift` end to end: the real API and
//! its in-process workers, a source database shaped like a Supabase Cloud
//! project (the reference project's generator) on real PostgreSQL, and the
//! Cloud double for the Storage and Auth APIs. The SSE stream is read with
//! a real SSE parser.

use std::time::Duration;

use serde_json::{Value, json};
use supascale_tests::cloud_double::{AuthSettings, Bucket, CloudDouble, sample_objects};
use supascale_tests::refproject::{self, RefProject, table_fingerprints};
use supascale_tests::scratch_cluster::ScratchCluster;
use supascale_tests::{Backend, SseEvent, TestApp, psql, read_events};

const PATH: &str = "/api/v1/projects/target/import/lift-shift";

/// A source project (database and APIs) and a fresh target registered as
/// `target`.
struct Setup {
    app: TestApp,
    source: RefProject,
    target: RefProject,
    double: CloudDouble,
}

async fn setup() -> Setup {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let source = refproject::make(0.02, 11, false).await;
    // The objects live behind the Storage API (the double); the source's
    // rows for them would name files no API serves.
    psql(&source.database.url, "DELETE FROM storage.objects;");
    let target = refproject::make(0.0, 12, true).await;
    refproject::register(&app, &target, "target").await;
    let mut objects = sample_objects("avatars", 40, 3_000_000, 5);
    objects.extend(sample_objects("documents", 25, 1_000_000, 6));
    let double = CloudDouble::builder()
        .bucket(
            Bucket::new("avatars")
                .public(true)
                .file_size_limit(5_000_000)
                .allowed_mime_types(["image/png", "image/jpeg"]),
        )
        .bucket(Bucket::new("documents"))
        .objects(objects)
        .list_v2(true)
        .auth(
            AuthSettings::default()
                .provider("google", true)
                .provider("github", true),
        )
        .start()
        .await;
    Setup {
        app,
        source,
        target,
        double,
    }
}

fn request(setup: &Setup, components: &[&str]) -> Value {
    json!({
        "sourceUrl": setup.double.base_url(),
        "serviceRoleKey": setup.double.service_role_key(),
        "databasePassword": "source-db-password",
        "databaseUrl": setup.source.database.url,
        "components": components,
    })
}

/// Posts the migration and reads its whole event stream.
async fn migrate(app: &TestApp, body: &Value) -> (reqwest::header::HeaderMap, Vec<SseEvent>) {
    let response = app.post(PATH).json(body).send().await.unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let headers = response.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = read_events(response, Duration::from_secs(180), |_| false).await;
    (headers, events)
}

/// Starts the migration with `?async=true`; its job id.
async fn start_async(app: &TestApp, body: &Value) -> String {
    let response = app
        .post(&format!("{PATH}?async=true"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    accepted["job"]["id"].as_str().unwrap().to_string()
}

/// Until the double has sent `count` objects whole.
async fn downloads_reach(double: &CloudDouble, count: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while double.stats().downloads_completed() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "the downloads never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn without_storage(fingerprints: Vec<String>) -> Vec<String> {
    fingerprints
        .into_iter()
        .filter(|f| !f.starts_with("storage."))
        .collect()
}

#[tokio::test]
async fn a_migration_streams_the_contracts_events_and_the_target_equals_the_source() {
    let setup = setup().await;
    let body = request(&setup, &["database", "storage", "auth"]);
    let (headers, events) = migrate(&setup.app, &body).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"start"), "{names:?}");
    assert_eq!(names.last(), Some(&"complete"), "{events:#?}");
    let start = &events[0].data;
    assert_eq!(start["message"], "Starting Lift & Shift migration...");
    assert_eq!(start["components"], json!(["database", "storage", "auth"]));
    assert_eq!(start["targetProject"]["id"], "target");
    assert_eq!(start["targetProject"]["name"], "Project target");
    let job_id = start["jobId"].as_str().unwrap().to_string();
    assert_eq!(
        headers["location"].to_str().unwrap(),
        format!("/api/v1/jobs/{job_id}")
    );
    // Every event has an id, in order.
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // Steps as the contract shows them; the data's tables count up.
    let steps: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "step")
        .map(|e| &e.data)
        .collect();
    for step in &steps {
        assert_eq!(step["status"], "running", "{step}");
        assert!(step["message"].is_string() && step["current"].is_u64() && step["total"].is_u64());
    }
    let loading: Vec<&&Value> = steps
        .iter()
        .filter(|s| {
            s["step"] == "database" && s["message"].as_str().unwrap().starts_with("Loading ")
        })
        .collect();
    assert!(loading.len() >= 5, "{loading:?}");
    assert!(loading.iter().all(|s| s["total"] == loading[0]["total"]));
    assert!(
        steps
            .iter()
            .any(|s| s["step"] == "storage" && s["bytesDone"].is_u64())
    );
    // Warnings: the two OAuth providers, the JWT secret, Edge Functions.
    let warnings: Vec<String> = events
        .iter()
        .filter(|e| e.event == "warning")
        .map(|e| e.data["message"].as_str().unwrap().to_string())
        .collect();
    for needle in [
        "auth: google",
        "auth: github",
        "JWT secret",
        "Edge Functions",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(needle)),
            "{needle}: {warnings:#?}"
        );
    }
    assert!(
        !warnings.iter().any(|w| w.contains("email sign-in")),
        "{warnings:#?}"
    );

    let complete = &events.last().unwrap().data;
    assert_eq!(complete["success"], true);
    assert!(complete["duration"].as_i64().unwrap() > 0);
    assert_eq!(
        complete["warnings"].as_array().unwrap().len(),
        warnings.len()
    );
    let summary = &complete["summary"];
    assert!(
        summary["database"]["tables"].as_u64().unwrap() >= 5,
        "{summary}"
    );
    assert!(
        summary["database"]["size"].as_u64().unwrap() > 100_000,
        "{summary}"
    );
    assert_eq!(summary["storage"]["buckets"], 2);
    assert_eq!(summary["storage"]["files"], 65);
    assert_eq!(summary["storage"]["size"], setup.double.total_bytes());
    assert_eq!(
        summary["auth"]["providers"],
        json!(["email", "github", "google"])
    );

    // The target now holds the source's rows, table for table.
    assert_eq!(
        without_storage(table_fingerprints(&setup.target.database.url)),
        without_storage(table_fingerprints(&setup.source.database.url))
    );
    // Its policies, functions and triggers too.
    let policies = "SELECT string_agg(schemaname || '.' || tablename || ' ' || policyname, ', ' \
                    ORDER BY schemaname || '.' || tablename || ' ' || policyname) \
                    FROM pg_policies WHERE schemaname = 'public'";
    assert_eq!(
        psql(&setup.target.database.url, policies),
        psql(&setup.source.database.url, policies)
    );
    // The project's own trigger on auth.users and its policy on
    // storage.objects came along (the guide's dump loses both).
    let hooks = "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname = 'profile_for_new_user' \
                 AND tgrelid = 'auth.users'::regclass) || ' ' || (SELECT count(*) FROM pg_policies \
                 WHERE schemaname = 'storage' AND policyname = 'avatars are public')";
    assert_eq!(psql(&setup.target.database.url, hooks).trim(), "1 1");
    // Every object: its file with the source's bytes and the backend's
    // xattrs, and its row.
    let stub = setup.target.root.path().join("volumes/storage/stub/stub");
    for object in setup.double.objects() {
        let dir = stub.join(&object.bucket).join(&object.key);
        let versions: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(versions.len(), 1, "{}", dir.display());
        let bytes = std::fs::read(&versions[0]).unwrap();
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            setup.double.expected_sha256(&object.bucket, &object.key)
        );
        let etag = xattr::get(&versions[0], "user.supabase.etag")
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8(etag).unwrap(),
            format!(
                "\"{}\"",
                setup.double.expected_md5(&object.bucket, &object.key)
            )
        );
        let version = versions[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let row = psql(
            &setup.target.database.url,
            &format!(
                "SELECT version || ' ' || (metadata->>'size') FROM storage.objects \
                 WHERE bucket_id = '{}' AND name = '{}'",
                object.bucket,
                object.key.replace('\'', "''")
            ),
        );
        assert_eq!(row.trim(), format!("{version} {}", bytes.len()));
    }
    assert_eq!(
        psql(
            &setup.target.database.url,
            "SELECT public FROM storage.buckets WHERE id = 'avatars'"
        )
        .trim(),
        "t"
    );
    // No download folder is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(setup.target.root.path().join("volumes/storage"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".supascale"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A client that dropped re-attaches with Last-Event-ID and gets the
    // rest, without repeats.
    let response = setup
        .app
        .get(&format!("/api/v1/jobs/{job_id}/events"))
        .header("Last-Event-ID", ids[2].to_string())
        .send()
        .await
        .unwrap();
    let rest = read_events(response, Duration::from_secs(30), |_| false).await;
    let rest_ids: Vec<i64> = rest
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(rest_ids, ids[3..].to_vec());
    assert_eq!(rest.last().unwrap().data["summary"], *summary);

    // The job's record: completed, its credentials wiped, none in the logs
    // or the events.
    let (_, job) = setup.app.get_json(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(job["status"], "completed", "{job}");
    let sealed = setup
        .app
        .control_plane()
        .await
        .text(&format!(
            "SELECT coalesce(secrets_enc, 'wiped') FROM jobs WHERE id = '{job_id}'"
        ))
        .await;
    assert_eq!(sealed.as_deref(), Some("wiped"));
    let key = setup.double.service_role_key();
    let everything = format!(
        "{}\n{}\n{}",
        setup.app.logs(),
        serde_json::to_string(&events.iter().map(|e| &e.data).collect::<Vec<_>>()).unwrap(),
        setup
            .app
            .control_plane()
            .await
            .text(&format!(
                "SELECT payload || coalesce(result, '') || warnings || coalesce(progress, '') \
                 FROM jobs WHERE id = '{job_id}'"
            ))
            .await
            .unwrap_or_default()
    );
    assert!(!everything.contains(key));
    assert!(!everything.contains("source-db-password"));

    // A second run gives the same rows, not doubled ones, and the same
    // objects.
    let (_, again) = migrate(&setup.app, &body).await;
    assert_eq!(again.last().unwrap().event, "complete", "{again:#?}");
    assert_eq!(
        without_storage(table_fingerprints(&setup.target.database.url)),
        without_storage(table_fingerprints(&setup.source.database.url))
    );
    let objects = psql(
        &setup.target.database.url,
        "SELECT count(*) FROM storage.objects",
    );
    assert_eq!(objects.trim(), "65");
}

#[tokio::test]
async fn requests_are_checked_before_any_job_is_written() {
    let setup = setup().await;
    let app = &setup.app;
    let good = request(&setup, &["database", "storage"]);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut body = good.clone();
        change(&mut body);
        body
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            with(&|b| drop(b.as_object_mut().unwrap().remove("serviceRoleKey"))),
            400,
            "serviceRoleKey",
        ),
        (with(&|b| b["components"] = json!([])), 400, "at least one"),
        (
            with(&|b| b["components"] = json!(["database", "functions"])),
            400,
            "\"functions\"",
        ),
        (
            with(&|b| b["sourceUrl"] = json!("http://example.com")),
            400,
            "https://",
        ),
        (
            with(&|b| b["sourceUrl"] = json!("ftp://abcdefghijklmnopqrst.supabase.co")),
            400,
            "https://",
        ),
        (
            with(&|b| b["sourceUrl"] = json!("http://169.254.169.254")),
            400,
            "metadata",
        ),
        (
            with(&|b| b["sourceUrl"] = json!("https://[fd00:ec2::254]")),
            400,
            "metadata",
        ),
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("databaseUrl");
            }),
            400,
            "databaseUrl is required",
        ),
        (
            with(&|b| {
                b["databaseUrl"] = json!(
                    "postgres://postgres.abc@aws-0-eu-west-1.pooler.supabase.com:6543/postgres"
                )
            }),
            400,
            "session pooler",
        ),
        (
            with(&|b| b["databaseUrl"] = json!(setup.target.database.url)),
            400,
            "this project's own database",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, answer) = app.post_json(PATH, &body).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["success"], false, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{needle}: {answer}"
        );
    }
    let (status, _) = app
        .post_json("/api/v1/projects/nope/import/lift-shift", &good)
        .await;
    assert_eq!(status, 404);
    // A key that may write backups but is not an unrestricted admin cannot
    // point a migration at this machine.
    let (status, created) = app
        .api_keys()
        .create(json!({"name": "writer", "permissions": ["backups:read", "backups:write"]}))
        .await;
    assert_eq!(status, 201, "{created}");
    let writer = created["apiKey"]["key"].as_str().unwrap();
    let (status, answer) = app.as_key(writer).post_json(PATH, &good).await;
    assert_eq!(status, 403, "{answer}");
    // `database` into a project that is down.
    let (status, _) = app
        .patch_json(
            "/api/v1/projects/target",
            &json!({"databaseUrl": "postgres://postgres@127.0.0.1:1/nothing"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, answer) = app.post_json(PATH, &good).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("Project target is not running: "),
        "{answer}"
    );
    // Nothing of it became a job, or touched the source.
    let (_, jobs) = app.get_json("/api/v1/jobs").await;
    assert_eq!(jobs["pagination"]["total"], 0, "{jobs}");
    assert_eq!(setup.double.stats().total_requests(), 0);
}

#[tokio::test]
async fn a_wrong_password_a_rejected_key_and_an_unreachable_host_each_say_so() {
    let setup = setup().await;
    let app = &setup.app;
    let cluster = ScratchCluster::start();
    let before = table_fingerprints(&setup.target.database.url);
    let failure = |events: &[SseEvent]| -> (String, i64) {
        let last = events.last().expect("events");
        assert_eq!(last.event, "error", "{events:#?}");
        assert_eq!(last.data["success"], false);
        (
            last.data["error"].as_str().unwrap().to_string(),
            last.data["duration"].as_i64().unwrap(),
        )
    };

    let mut body = request(&setup, &["database"]);
    body["databaseUrl"] = json!(cluster.url_without_password("postgres"));
    body["databasePassword"] = json!("not-the-password");
    let (_, events) = migrate(app, &body).await;
    let (error, duration) = failure(&events);
    assert!(
        error.starts_with("Migration failed: Failed to connect to source database")
            && error.contains("password authentication failed"),
        "{error}"
    );
    assert!(duration < 15_000, "{duration}");
    assert!(!error.contains("not-the-password"));

    let mut body = request(&setup, &["storage"]);
    body["serviceRoleKey"] = json!("eyJ-not-the-key");
    let (_, events) = migrate(app, &body).await;
    let (error, _) = failure(&events);
    assert!(error.contains("service-role key was rejected"), "{error}");
    assert!(!error.contains("eyJ-not-the-key"));

    let mut body = request(&setup, &["database"]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    body["databaseUrl"] = json!(format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    let (_, events) = migrate(app, &body).await;
    let (error, duration) = failure(&events);
    assert!(
        error.contains("Failed to connect to source database 127.0.0.1"),
        "{error}"
    );
    assert!(duration < 15_000, "{duration}");

    // None of them touched the target, or was tried again.
    assert_eq!(table_fingerprints(&setup.target.database.url), before);
    let (_, jobs) = app.get_json("/api/v1/jobs?status=failed").await;
    assert_eq!(jobs["pagination"]["total"], 3, "{jobs}");
    for job in jobs["jobs"].as_array().unwrap() {
        assert_eq!(job["attempt"], 1, "{job}");
    }

    // The right password works (and `?async=true` answers 202 with the job).
    let mut body = request(&setup, &["database"]);
    body["databaseUrl"] = json!(cluster.url_without_password("postgres"));
    body["databasePassword"] = json!(cluster.password);
    let response = app
        .post(&format!("{PATH}?async=true"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["job"]["kind"], "lift_shift");
    let job = app.wait_for_job(&location, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "completed", "{job}");
}

/// A worker killed while the objects download: the job is taken over and
/// the next attempt fetches only what was not finished. No secret is in
/// the queue meanwhile.
#[tokio::test]
async fn a_migration_killed_mid_storage_resumes_without_fetching_finished_objects() {
    use supascale_tests::{Cluster, Deployment, Launch, wait_for_job_state};
    let mut cluster = Cluster::start(Deployment::ScaleOut, Launch::default()).await;
    let target = refproject::make(0.0, 21, true).await;
    refproject::register(&cluster.app, &target, "target").await;
    let objects = sample_objects("media", 30, 6_000_000, 9);
    let slow: Vec<String> = objects
        .iter()
        .filter(|o| o.size > 50_000)
        .take(3)
        .map(|o| o.key.clone())
        .collect();
    assert_eq!(slow.len(), 3);
    let double = CloudDouble::builder()
        .bucket(Bucket::new("media"))
        .objects(objects)
        .list_v2(false)
        .start()
        .await;
    for key in &slow {
        double
            .faults()
            .trickle("media", key, 1024, Duration::from_millis(100), 1);
    }
    let body = json!({
        "sourceUrl": double.base_url(),
        "serviceRoleKey": double.service_role_key(),
        "databasePassword": "unused",
        "components": ["storage"],
    });
    let job_id = start_async(&cluster.app, &body).await;
    downloads_reach(&double, 27).await;
    let finished: Vec<(String, String)> = double
        .stats()
        .all_downloads()
        .into_iter()
        .filter(|(_, d)| d.completed == 1)
        .map(|(k, _)| k)
        .collect();
    // Given time to land in the download folder.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = cluster.queue.as_ref().unwrap().contents();
    assert!(!queued.contains(double.service_role_key()), "{queued}");
    let job = wait_for_job_state(&cluster.app, &job_id, Duration::from_secs(1), |_| true).await;
    assert_eq!(job["status"], "in_progress", "{job}");
    cluster.kill_worker_of(&job);

    let job = wait_for_job_state(&cluster.app, &job_id, Duration::from_secs(90), |j| {
        j["status"] == "completed" || j["status"] == "failed"
    })
    .await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempt"], 2, "{job}");
    assert!(double.stats().completed_more_than_once().is_empty());
    for (bucket, key) in &finished {
        assert_eq!(
            double.stats().downloads_of(bucket, key).started,
            1,
            "{bucket}/{key} was fetched again"
        );
    }
    let rows = psql(&target.database.url, "SELECT count(*) FROM storage.objects");
    assert_eq!(rows.trim(), "30");
    let logs = format!(
        "{}\n{}",
        cluster.app.logs(),
        cluster
            .workers
            .iter()
            .map(|w| w.stdout.lock().unwrap().join("\n") + &w.stderr.lock().unwrap().join("\n"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!logs.contains(double.service_role_key()));
}

/// The contract's own JavaScript ("Handling SSE in Code"), run with Node
/// against the endpoint: it sees the events, in order, each parsed.
#[tokio::test]
async fn the_contracts_javascript_snippet_reads_the_stream() {
    let setup = setup().await;
    let body = request(&setup, &["storage", "auth"]);
    let script = tempfile::Builder::new().suffix(".mjs").tempfile().unwrap();
    // The snippet as the contract prints it; only the body's values, the
    // absolute URL Node needs, and what each handler does are ours.
    let snippet = r#"
const projectId = 'target';
const apiKey = process.env.API_KEY;
const base = process.env.BASE_URL;
const seen = [];
let event = null;
const response = await fetch(`${base}/api/v1/projects/${projectId}/import/lift-shift`, {
method: 'POST',
headers: {
'Content-Type': 'application/json',
'X-API-Key': apiKey
},
body: process.env.BODY
});
const reader = response.body.getReader();
const decoder = new TextDecoder();
while (true) {
const { done, value } = await reader.read();
if (done) break;
const text = decoder.decode(value);
// Parse SSE events
const lines = text.split('\n');
for (const line of lines) {
if (line.startsWith('event: ')) {
event = line.slice(7);
// Handle event type
} else if (line.startsWith('data: ')) {
const data = JSON.parse(line.slice(6));
// Handle event data
seen.push({ event, data });
}
}
}
console.log(JSON.stringify(seen));
"#;
    std::fs::write(script.path(), snippet).unwrap();
    let output = tokio::process::Command::new("node")
        .arg(script.path())
        .env("API_KEY", &setup.app.admin_key)
        .env("BASE_URL", &setup.app.address)
        .env("BODY", body.to_string())
        .output()
        .await
        .expect("node (installed with npm; see scripts/install-test-tools)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<&str> = seen.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names.first(), Some(&"start"), "{names:?}");
    assert_eq!(names.last(), Some(&"complete"), "{names:?}");
    assert!(
        names.contains(&"step") && names.contains(&"warning"),
        "{names:?}"
    );
    assert_eq!(
        seen[0]["data"]["message"],
        "Starting Lift & Shift migration..."
    );
    let complete = &seen.last().unwrap()["data"];
    assert_eq!(complete["success"], true);
    assert_eq!(complete["summary"]["storage"]["files"], 65);
}

/// Cancelled while the objects download: the job ends `Cancelled`, the
/// project's storage (files and rows) is as it was, and the download
/// folder is gone.
#[tokio::test]
async fn a_cancelled_migration_leaves_the_target_as_it_was() {
    use supascale_tests::refproject::tree_snapshot;
    let setup = setup().await;
    let storage = setup.target.root.path().join("volumes/storage");
    let before = (
        tree_snapshot(&storage),
        table_fingerprints(&setup.target.database.url),
    );
    let slow = setup.double.objects()[3].clone();
    setup
        .double
        .faults()
        .trickle(&slow.bucket, &slow.key, 512, Duration::from_millis(200), 1);
    let job_id = start_async(&setup.app, &request(&setup, &["storage"])).await;
    downloads_reach(&setup.double, 30).await;
    let (status, cancelled) = setup
        .app
        .post_json(&format!("/api/v1/jobs/{job_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["job"]["status"], "failed", "{cancelled}");
    assert_eq!(cancelled["job"]["error"], "Cancelled", "{cancelled}");
    assert_eq!(
        (
            tree_snapshot(&storage),
            table_fingerprints(&setup.target.database.url)
        ),
        before
    );
}

/// A source whose image is newer than the target's: a table the target
/// lacks is left out with a warning naming it, a table without one of the
/// source's columns is copied without it (and a warning), the rest loads.
#[tokio::test]
async fn what_an_older_target_lacks_is_a_warning_not_a_failed_load() {
    let setup = setup().await;
    psql(
        &setup.source.database.url,
        "CREATE TABLE auth.oauth_clients (id uuid PRIMARY KEY, name text); \
         INSERT INTO auth.oauth_clients VALUES (gen_random_uuid(), 'cli'); \
         ALTER TABLE auth.users ADD COLUMN is_anonymous boolean NOT NULL DEFAULT false;",
    );
    let (_, events) = migrate(&setup.app, &request(&setup, &["database"])).await;
    assert_eq!(events.last().unwrap().event, "complete", "{events:#?}");
    let warnings: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "warning")
        .map(|e| e.data["message"].as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("auth.oauth_clients") && w.contains("no such table")),
        "{warnings:#?}"
    );
    // A column the target lacks: the rows come without it.
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("auth.users") && w.contains("lacks the columns is_anonymous")),
        "{warnings:#?}"
    );
    let users = "SELECT count(*) || ' ' || md5(string_agg(id || email || encrypted_password, ',' \
                 ORDER BY id)) FROM auth.users";
    assert_eq!(
        psql(&setup.target.database.url, users),
        psql(&setup.source.database.url, users)
    );
    let others = |url: &str| {
        without_storage(table_fingerprints(url))
            .into_iter()
            .filter(|t| !t.starts_with("auth."))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        others(&setup.target.database.url),
        others(&setup.source.database.url)
    );
}

/// A source whose objects do not fit beside the disk reserve fails before
/// the first download, in the contract's words, and leaves nothing.
#[tokio::test]
async fn objects_that_do_not_fit_on_the_disk_are_refused_before_any_download() {
    use supascale_tests::{Launch, SmallDisk};
    let target = refproject::make(0.0, 41, true).await;
    // The project's storage folder on a 16 MB disk of its own, 1 MB kept
    // free: 40 MB of objects cannot fit, whatever the other tests do.
    let disk = SmallDisk::mount(&target.root.path().join("volumes/storage"), 16_000_000);
    let reserve = if disk.mounted {
        1_000_000
    } else {
        disk.reserve_leaving(15_000_000)
    };
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default().env("SUPASCALE_DISK_RESERVE_BYTES", reserve.to_string()),
    )
    .await;
    refproject::register(&app, &target, "target").await;
    let double = CloudDouble::builder()
        .bucket(Bucket::new("big"))
        .objects(sample_objects("big", 10, 40_000_000, 3))
        .start()
        .await;
    let body = json!({
        "sourceUrl": double.base_url(),
        "serviceRoleKey": double.service_role_key(),
        "databasePassword": "unused",
        "components": ["storage"],
    });
    let (_, events) = migrate(&app, &body).await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{events:#?}");
    let error = last.data["error"].as_str().unwrap();
    assert!(
        error.starts_with("Migration failed: Insufficient disk space on the storage folder"),
        "{error}"
    );
    assert_eq!(double.stats().downloads_started(), 0);
    let left: Vec<_> = std::fs::read_dir(&disk.path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".supascale"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A source on a cluster of its own (password auth) with roles of its
/// own, into a target on another cluster: the target's cluster gets them
/// (memberships and settings included, no password; Supabase's reserved
/// roles, which the target has, are not created again), and the grants to
/// them come with the schema. Both clusters are the test's: roles are
/// cluster-wide, and the machine's shared one must not see them.
#[tokio::test]
async fn the_sources_roles_arrive_and_its_reserved_ones_are_left_alone() {
    let (reader, app_user) = ("reporting", "app_user");
    let app = TestApp::spawn(Backend::Sqlite).await;
    let source = ScratchCluster::start();
    let target = ScratchCluster::start();
    let supabase_shape = "CREATE ROLE anon NOLOGIN; CREATE ROLE authenticated NOLOGIN; \
                          CREATE ROLE service_role NOLOGIN BYPASSRLS; \
                          CREATE SCHEMA auth; CREATE SCHEMA storage;";
    psql(&target.url("postgres"), supabase_shape);
    psql(
        &source.url("postgres"),
        &format!(
            "{supabase_shape} \
             CREATE ROLE \"{reader}\" NOLOGIN; CREATE ROLE \"{app_user}\" LOGIN PASSWORD 'secret'; \
             GRANT \"{reader}\" TO \"{app_user}\"; \
             ALTER ROLE \"{app_user}\" SET statement_timeout = '5s'; \
             ALTER ROLE anon SET search_path = 'nowhere'; \
             CREATE TABLE public.reports (id int PRIMARY KEY, body text); \
             INSERT INTO public.reports SELECT g, 'report ' || g FROM generate_series(1, 100) g; \
             GRANT SELECT ON public.reports TO \"{reader}\";"
        ),
    );
    let folders = supascale_tests::make_project().await;
    let (status, registered) = app
        .projects()
        .register(json!({"id": "elsewhere", "name": "Elsewhere",
            "rootDir": folders.root.path().to_str().unwrap(),
            "databaseUrl": target.url("postgres")}))
        .await;
    assert_eq!(status, 201, "{registered}");
    let double = CloudDouble::builder().start().await;
    let response = app
        .post("/api/v1/projects/elsewhere/import/lift-shift")
        .json(&json!({
            "sourceUrl": double.base_url(),
            "serviceRoleKey": double.service_role_key(),
            "databasePassword": source.password,
            "databaseUrl": source.url_without_password("postgres"),
            "components": ["database"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = read_events(response, Duration::from_secs(120), |_| false).await;
    assert_eq!(events.last().unwrap().event, "complete", "{events:#?}");

    let on_target = target.url("postgres");
    let shown = psql(
        &on_target,
        &format!(
            "SELECT r.rolname || ' ' || r.rolcanlogin || ' ' || \
             coalesce(array_to_string(s.setconfig, ','), '-') || ' ' || \
             coalesce((SELECT string_agg(g.rolname, ',') FROM pg_auth_members m \
                JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid), '-') \
             FROM pg_roles r LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0 \
             WHERE r.rolname IN ('{reader}', '{app_user}') ORDER BY 1"
        ),
    );
    assert_eq!(
        shown.trim(),
        format!("{app_user} true statement_timeout=5s {reader}\n{reader} false - -")
    );
    // The password did not come (pg_dumpall --no-role-passwords).
    let password = psql(
        &on_target,
        &format!("SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = '{app_user}'"),
    );
    assert_eq!(password.trim(), "t");
    // A reserved role's settings are the target's own, but for the few
    // the guide carries over (search_path is not one of them).
    let anon = psql(
        &on_target,
        "SELECT count(*) FROM pg_db_role_setting WHERE setrole = 'anon'::regrole",
    );
    assert_eq!(anon.trim(), "0");
    let granted = psql(
        &on_target,
        &format!("SELECT has_table_privilege('{reader}', 'public.reports', 'SELECT')"),
    );
    assert_eq!(granted.trim(), "t");
    let rows = psql(&on_target, "SELECT count(*) FROM public.reports");
    assert_eq!(rows.trim(), "100");
}
