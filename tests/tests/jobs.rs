//! The job pipeline as a client sees it: live events over SSE (read with a
//! real SSE parser), resuming with `Last-Event-ID`, the jobs list, cancel,
//! `Idempotency-Key`, the attempt limit, and per-project ordering.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use serde_json::{Value, json};
use supascale_shared::entities::job;
use supascale_shared::jobs::{JobKind, STATUS_IN_PROGRESS, store};
use supascale_tests::{
    Backend, Cluster, Deployment, Launch, SendJson, TableLock, TestApp, both_backends,
    job_sessions, make_project, read_events, register, start_backup, wait_for_job_state,
};

fn at(timestamp: &str) -> DateTime<Utc> {
    timestamp.parse().unwrap()
}

/// `job-restore-1`: a restore of `project` running on another worker since
/// `since`, its last heartbeat at `heartbeat`.
fn running_restore(
    project: &str,
    since: DateTime<Utc>,
    heartbeat: DateTime<Utc>,
) -> job::ActiveModel {
    let mut job = store::new_job(JobKind::Restore, Some(project), json!({}), 3);
    job.id = Set("job-restore-1".into());
    job.status = Set(STATUS_IN_PROGRESS.into());
    job.attempt = Set(1);
    job.worker_id = Set(Some("elsewhere-1-abc".into()));
    job.enqueued_at = Set(since);
    job.started_at = Set(Some(since));
    job.heartbeat_at = Set(Some(heartbeat));
    job
}

async fn events(app: &TestApp, job_id: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = app.jobs().events(job_id);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response
}

async fn events_stream_a_running_backup_and_resume(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    // pg_dump waits for this lock: the client attaches while the job runs.
    let lock = TableLock::hold(&project.database.url).await;
    let accepted = start_backup(&app, json!({"projectId": "p", "type": "full"})).await;
    let job_id = accepted["job"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        accepted["job"]["eventsUrl"],
        format!("/api/v1/jobs/{job_id}/events")
    );

    let response = events(&app, &job_id, None).await;
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers.get("content-encoding").is_none());
    let reader = tokio::spawn(read_events(response, Duration::from_secs(60), |_| false));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    lock.release().await;
    let seen = reader.await.unwrap();

    let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"start"), "{names:?}");
    assert_eq!(names.last(), Some(&"complete"), "{names:?}");
    assert!(names.contains(&"step"), "{names:?}");
    assert_eq!(seen[0].data["jobId"], job_id);
    let ids: Vec<i64> = seen
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
    let step = seen.iter().find(|e| e.event == "step").unwrap();
    assert_eq!(step.data["status"], "running");
    assert!(step.data["current"].is_u64() && step.data["total"].as_u64().unwrap() >= 1);
    // `complete` carries what the waiting POST answers.
    let complete = &seen.last().unwrap().data;
    assert_eq!(complete["success"], true);
    assert_eq!(complete["backup"]["id"], accepted["backup"]["id"]);
    assert_eq!(complete["backup"]["status"], "completed");
    assert!(complete["durationMs"].is_i64());
    let (_, backup) = app
        .backups()
        .get(accepted["backup"]["id"].as_str().unwrap())
        .await;
    assert_eq!(complete["backup"]["sha256"], backup["sha256"]);

    // Resuming after the second event replays exactly the rest, at once.
    let resumed = read_events(
        events(&app, &job_id, Some("2")).await,
        Duration::from_secs(10),
        |_| false,
    )
    .await;
    let resumed_ids: Vec<i64> = resumed
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(resumed_ids, ids[2..].to_vec());
    assert_eq!(resumed.last().unwrap().event, "complete");

    // Resuming after the end: nothing more, and the stream ends.
    let last = ids.last().unwrap().to_string();
    let after_end = read_events(
        events(&app, &job_id, Some(&last)).await,
        Duration::from_secs(10),
        |_| false,
    )
    .await;
    assert!(after_end.is_empty(), "{after_end:?}");

    let (status, body) = app
        .jobs()
        .events(&job_id)
        .header("Last-Event-ID", "yesterday")
        .send_json()
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["success"], false);
    let (status, _) = app.jobs().events("job-nope").send_json().await;
    assert_eq!(status, 404);
}

async fn cancelling_stops_pending_and_running_jobs(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let project = make_project().await;
    register(&app, &project, "p").await;

    // Running: held in pg_dump by a lock.
    let lock = TableLock::hold(&project.database.url).await;
    let running = start_backup(&app, json!({"projectId": "p", "type": "database"})).await;
    let job_id = running["job"]["id"].as_str().unwrap().to_string();
    let job = wait_for_job_state(&app, &job_id, Duration::from_secs(20), |j| {
        j["progress"]["step"] == "database"
    })
    .await;
    assert_eq!(job["status"], "in_progress", "{job}");
    // pg_dump is connected, named after the job.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while job_sessions(&project.database.url, &job_id).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pg_dump never connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = app.jobs().cancel(&job_id).await;
    assert_eq!(status, 200, "{body}\n{}", app.logs());
    assert_eq!(body["job"]["status"], "failed");
    assert_eq!(body["job"]["error"], "Cancelled");
    assert_eq!(job_sessions(&project.database.url, &job_id).await, 0);
    let (_, backup) = app
        .backups()
        .get(running["backup"]["id"].as_str().unwrap())
        .await;
    assert_eq!(backup["status"], "failed");
    assert_eq!(backup["error"], "Cancelled");
    // Nothing half-written is left: no spooled dump, no artifact.
    let leftovers = app.spool_files();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let artifact = backup["path"]
        .as_str()
        .unwrap()
        .strip_prefix("file://")
        .unwrap();
    assert!(!std::path::Path::new(artifact).exists());
    let seen = read_events(
        events(&app, &job_id, None).await,
        Duration::from_secs(10),
        |_| false,
    )
    .await;
    let last = seen.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(last.data["success"], false);
    assert_eq!(last.data["error"], "Backup failed: Cancelled");
    lock.release().await;

    // Over already: 409.
    let (status, body) = app.jobs().cancel(&job_id).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["success"], false);
}

/// With no worker running, a job stays pending; cancelling ends it at once.
#[tokio::test]
async fn a_pending_job_is_cancelled_at_once() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default().env("SUPASCALE_WORKERS", "0"),
    )
    .await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    let accepted = start_backup(&app, json!({"projectId": "p", "type": "config"})).await;
    let job_id = accepted["job"]["id"].as_str().unwrap();
    let (status, body) = app.jobs().cancel(job_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["job"]["status"], "failed");
    assert_eq!(body["job"]["error"], "Cancelled");
    assert_eq!(body["job"]["cancelRequested"], true);
    let seen = read_events(
        events(&app, job_id, None).await,
        Duration::from_secs(10),
        |_| false,
    )
    .await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].event, "error");
    assert_eq!(seen[0].data["error"], "Backup failed: Cancelled");
    let (_, backup) = app
        .backups()
        .get(accepted["backup"]["id"].as_str().unwrap())
        .await;
    assert_eq!(backup["status"], "failed");
    assert_eq!(backup["error"], "Cancelled");
}

async fn an_idempotency_key_returns_the_first_job(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    let request = json!({"projectId": "p", "type": "config"});
    let send = |key: &str, body: &Value| {
        app.post("/api/v1/backups")
            .header("Idempotency-Key", key)
            .json(body)
            .send_json()
    };
    let (status, first) = send("retry-me-1", &request).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = send("retry-me-1", &request).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["backup"]["id"], first["backup"]["id"]);
    // Same key, another request: refused, nothing started.
    let (status, body) = send(
        "retry-me-1",
        &json!({"projectId": "p", "type": "functions"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Idempotency-Key"));
    let (status, other) = send("retry-me-2", &request).await;
    assert_eq!(status, 200);
    assert_ne!(other["backup"]["id"], first["backup"]["id"]);
    let (status, body) = send(&"k".repeat(300), &request).await;
    assert_eq!(status, 400, "{body}");
    let (_, list) = app.backups().list("").await;
    assert_eq!(list["pagination"]["total"], 2, "{list}");
}

async fn jobs_are_listed_with_filters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Two projects never share folders or a database.
    let (project, other) = (make_project().await, make_project().await);
    register(&app, &project, "p").await;
    register(&app, &other, "q").await;
    for id in ["p", "q", "p"] {
        let (status, body) = app
            .backups()
            .create(json!({"projectId": id, "type": "config"}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, list) = app
        .jobs()
        .list("kind=backup&status=completed&projectId=p")
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["pagination"]["total"], 2);
    let jobs = list["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(
        jobs.iter()
            .all(|j| j["projectId"] == "p" && j["status"] == "completed")
    );
    assert!(jobs[0]["enqueuedAt"].as_str() >= jobs[1]["enqueuedAt"].as_str());
    let (_, page) = app.jobs().list("limit=1&offset=1").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page["pagination"]["total"], 3);
    assert_eq!(page["pagination"]["hasMore"], true);
    for bad in ["status=done", "kind=snapshot", "limit=0"] {
        let (status, body) = app.jobs().list(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["success"], false);
    }
}

/// A backup's `completed` (or `failed`) is written by its job's end, in
/// the same commit, and only by the worker that still holds the job: a
/// worker whose job was taken over records nothing, and neither does an
/// attempt released for a retry.
async fn a_backup_is_recorded_completed_only_by_the_worker_holding_its_job(backend: Backend) {
    use sea_orm::{
        ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryTrait,
        sea_query::Expr,
    };
    use supascale_shared::entities::backup;
    use supascale_shared::jobs::events::Batch;
    use supascale_shared::jobs::store::{Claim, Ending};
    use supascale_shared::jobs::{JobError, STATUS_COMPLETED, STATUS_FAILED};

    let app = TestApp::spawn_with(backend, Launch::default().env("SUPASCALE_WORKERS", "0")).await;
    let db = sea_orm::Database::connect(&app.control_plane_url())
        .await
        .unwrap();
    let control = app.control_plane().await;
    let backup_of = |id: &str, job_id: &str| backup::ActiveModel {
        id: Set(id.into()),
        project_id: Set("p".into()),
        project_name: Set("p".into()),
        backup_type: Set("config".into()),
        status: Set(STATUS_IN_PROGRESS.into()),
        destination: Set("local".into()),
        path: Set(format!("/backups/{id}.tar.gz")),
        size: Set(0),
        encrypted: Set(false),
        compression: Set("gzip".into()),
        sha256: Set(None),
        duration_secs: Set(None),
        error: Set(None),
        manifest: Set(None),
        job_id: Set(Some(job_id.into())),
        created_at: Set(store::now()),
        completed_at: Set(None),
        verified_at: Set(None),
        verify_error: Set(None),
        locked_until: Set(None),
    };
    let completed = |id: &str| {
        backup::Entity::update_many()
            .col_expr(backup::Column::Status, Expr::value(STATUS_COMPLETED))
            .col_expr(backup::Column::Size, Expr::value(42i64))
            .filter(backup::Column::Id.eq(id))
            .into_query()
    };
    let row = |id: &'static str| {
        let db = db.clone();
        async move {
            backup::Entity::find_by_id(id)
                .one(&db)
                .await
                .unwrap()
                .unwrap()
        }
    };
    let claimed = |id: String| {
        let db = db.clone();
        async move {
            match store::claim(&db, &id, "worker-a").await.unwrap() {
                Claim::Taken(job) => job,
                _ => panic!("the job was not taken"),
            }
        }
    };

    let first = store::new_job(JobKind::Backup, Some("p"), json!({}), 3)
        .insert(&db)
        .await
        .unwrap();
    backup_of("backup-taken-over", &first.id)
        .insert(&db)
        .await
        .unwrap();
    let held = claimed(first.id.clone()).await;
    // Its heartbeat went stale and worker-b took it over.
    control
        .execute(&format!(
            "UPDATE jobs SET worker_id = 'worker-b' WHERE id = '{}'",
            first.id
        ))
        .await;
    let late = Ending::Finish(None);
    let ended = store::end_job(
        &db,
        &held,
        "worker-a",
        late,
        &Batch::default(),
        Some(completed("backup-taken-over")),
    )
    .await
    .unwrap();
    assert!(!ended.ours);
    let untouched = row("backup-taken-over").await;
    assert_eq!(
        (untouched.status.as_str(), untouched.size),
        (STATUS_IN_PROGRESS, 0),
        "a worker that lost its job recorded a result"
    );
    let ended = store::end_job(
        &db,
        &held,
        "worker-b",
        Ending::Finish(None),
        &Batch::default(),
        Some(completed("backup-taken-over")),
    )
    .await
    .unwrap();
    assert!(ended.ours);
    let recorded = row("backup-taken-over").await;
    assert_eq!(
        (recorded.status.as_str(), recorded.size),
        (STATUS_COMPLETED, 42)
    );
    let job_row = job::Entity::find_by_id(first.id.clone())
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job_row.status, STATUS_COMPLETED);

    // Released for another attempt: nothing is recorded; failed: it is.
    let second = store::new_job(JobKind::Backup, Some("p"), json!({}), 3)
        .insert(&db)
        .await
        .unwrap();
    backup_of("backup-failed", &second.id)
        .insert(&db)
        .await
        .unwrap();
    let failed = || {
        backup::Entity::update_many()
            .col_expr(backup::Column::Status, Expr::value(STATUS_FAILED))
            .col_expr(
                backup::Column::Error,
                Expr::value("the destination is full"),
            )
            .filter(backup::Column::Id.eq("backup-failed"))
            .into_query()
    };
    let held = claimed(second.id.clone()).await;
    let released = Ending::Release {
        error: "the destination is full",
        wait: Duration::from_secs(1),
    };
    let ended = store::end_job(
        &db,
        &held,
        "worker-a",
        released,
        &Batch::default(),
        Some(failed()),
    )
    .await
    .unwrap();
    assert!(ended.ours);
    assert_eq!(row("backup-failed").await.status, STATUS_IN_PROGRESS);
    control
        .execute(&format!(
            "UPDATE jobs SET run_after = NULL WHERE id = '{}'",
            second.id
        ))
        .await;
    let held = claimed(second.id.clone()).await;
    let failure = JobError::Target("the destination is full".into());
    store::end_job(
        &db,
        &held,
        "worker-a",
        Ending::Finish(Some(&failure)),
        &Batch::default(),
        Some(failed()),
    )
    .await
    .unwrap();
    let recorded = row("backup-failed").await;
    assert_eq!(recorded.status, STATUS_FAILED);
    assert_eq!(recorded.error.as_deref(), Some("the destination is full"));
    let job_row = job::Entity::find_by_id(second.id.clone())
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job_row.status, STATUS_FAILED);
}

/// A row naming a kind this build does not know (written by a newer
/// version, or by hand) is taken and failed for good, saying so, instead of
/// waiting forever or being skipped.
async fn a_job_of_an_unknown_kind_fails_for_good_saying_so(backend: Backend) {
    use sea_orm::ActiveModelTrait;
    let app = TestApp::spawn(backend).await;
    let db = sea_orm::Database::connect(&app.control_plane_url())
        .await
        .unwrap();
    let mut row = store::new_job(JobKind::Backup, None, json!({}), 3);
    row.kind = Set("from_the_future".into());
    let job = row.insert(&db).await.unwrap();
    // Nothing pushed it: the reconciler delivers the pending row.
    let ended = app
        .wait_for_job(&format!("/api/v1/jobs/{}", job.id), Duration::from_secs(30))
        .await;
    assert_eq!(ended["status"], "failed", "{ended}");
    assert_eq!(ended["attempt"], 1, "not retried: {ended}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap()
            .contains("unknown job kind \"from_the_future\""),
        "{ended}"
    );
}

both_backends!(
    a_job_of_an_unknown_kind_fails_for_good_saying_so,
    events_stream_a_running_backup_and_resume,
    cancelling_stops_pending_and_running_jobs,
    an_idempotency_key_returns_the_first_job,
    jobs_are_listed_with_filters,
    a_backup_is_recorded_completed_only_by_the_worker_holding_its_job,
    verify_jobs_belong_to_their_backups_project,
);

/// A job whose cause does not go away ends `failed` after the configured
/// attempts, with the last cause, its retries told as warnings.
async fn a_failing_job_stops_at_the_attempt_limit(deployment: Deployment) {
    let cluster = Cluster::start(
        deployment,
        Launch::default().env("SUPASCALE_JOB_ATTEMPTS", "2"),
    )
    .await;
    let app = &cluster.app;
    let project = make_project().await;
    register(app, &project, "p").await;
    // The project's database goes away.
    let (status, body) = app
        .projects()
        .patch(
            "p",
            json!({"databaseUrl": "postgres://postgres:pw@127.0.0.1:9/postgres"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "p", "type": "database"}))
        .await;
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("Backup failed: project database is not reachable ("),
        "{error}"
    );
    assert!(!error.contains("pw@"), "{error}");
    let (_, jobs) = app.jobs().list("").await;
    let job = &jobs["jobs"][0];
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempt"], 2);
    assert_eq!(job["maxAttempts"], 2);
    let warnings = job["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("Attempt 1 of 2 failed")
    );
    let seen = read_events(
        events(app, job["id"].as_str().unwrap(), None).await,
        Duration::from_secs(10),
        |_| false,
    )
    .await;
    let names: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"start"));
    assert!(names.contains(&"warning"), "{names:?}");
    assert_eq!(names.last(), Some(&"error"));
    assert_eq!(seen.last().unwrap().data["error"], error);
}

#[tokio::test]
async fn embedded_a_failing_job_stops_at_the_attempt_limit() {
    a_failing_job_stops_at_the_attempt_limit(Deployment::Embedded).await;
}

#[tokio::test]
async fn scale_out_a_failing_job_stops_at_the_attempt_limit() {
    a_failing_job_stops_at_the_attempt_limit(Deployment::ScaleOut).await;
}

/// A backup waits while a job that writes its project (a restore) runs,
/// says so, and runs once that job ends.
#[tokio::test]
async fn a_backup_waits_for_a_restore_of_its_project() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    let control = app.control_plane().await;
    // A restore running on another worker (its heartbeat kept fresh).
    let now = store::now();
    control.insert_job(running_restore("p", now, now)).await;
    let beat = {
        let url = app.database.as_ref().unwrap().url.clone();
        tokio::spawn(async move {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            loop {
                sqlx::query("UPDATE jobs SET heartbeat_at = now() WHERE id = 'job-restore-1'")
                    .execute(&pool)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let accepted = start_backup(&app, json!({"projectId": "p", "type": "config"})).await;
    let job_id = accepted["job"]["id"].as_str().unwrap().to_string();
    let job = wait_for_job_state(&app, &job_id, Duration::from_secs(10), |j| {
        j["progress"]["step"] == "waiting"
    })
    .await;
    assert_eq!(job["status"], "pending", "{job}");
    assert_eq!(job["attempt"], 0, "waiting uses no attempt");
    assert!(
        job["progress"]["message"]
            .as_str()
            .unwrap()
            .contains("job-restore-1"),
        "{job}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let job = wait_for_job_state(&app, &job_id, Duration::from_secs(1), |_| true).await;
    assert_eq!(job["status"], "pending", "ran beside a restore: {job}");

    beat.abort();
    control
        .execute(
            "UPDATE jobs SET status = 'completed', finished_at = now() WHERE id = 'job-restore-1'",
        )
        .await;
    let job = wait_for_job_state(&app, &job_id, Duration::from_secs(30), |j| {
        j["status"] == "completed"
    })
    .await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempt"], 1);
}

/// On PostgreSQL a claim is one call of `supascale_claim`, which takes the
/// project's lock before it looks for conflicting jobs: a restore and a
/// backup of one project claimed at the same instant by two workers never
/// both start, and two backups of a project (readers) both do.
#[tokio::test]
async fn conflicting_jobs_claimed_at_once_never_both_start() {
    use supascale_shared::jobs::store::Claim;
    let app = TestApp::spawn_with(
        Backend::Postgres,
        Launch::default().env("SUPASCALE_WORKERS", "0"),
    )
    .await;
    let url = app.database.as_ref().unwrap().url.clone();
    let db = sea_orm::Database::connect(&url).await.unwrap();
    let control = app.control_plane().await;
    let insert = |id: String, kind: JobKind| {
        let mut job = store::new_job(kind, Some("p"), json!({}), 3);
        job.id = Set(id);
        control.insert_job(job)
    };
    let taken = |claim: &Claim| matches!(claim, Claim::Taken(_));
    let mut restores_won = 0;
    for round in 0..60 {
        let (restore, backup) = (format!("job-r{round}"), format!("job-b{round}"));
        insert(restore.clone(), JobKind::Restore).await;
        insert(backup.clone(), JobKind::Backup).await;
        let (a, b) = tokio::join!(
            store::claim(&db, &restore, "worker-a"),
            store::claim(&db, &backup, "worker-b"),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            !(taken(&a) && taken(&b)),
            "round {round}: a restore and a backup of one project both started"
        );
        assert!(taken(&a) || taken(&b), "round {round}: neither started");
        if taken(&a) {
            restores_won += 1;
            // The loser is told what it waits for.
            assert!(
                matches!(&b, Claim::Busy { blocker } if blocker.id == restore),
                "round {round}"
            );
        }
        control
            .execute("UPDATE jobs SET status = 'completed' WHERE status <> 'completed'")
            .await;
    }
    eprintln!("the restore won {restores_won} of 60 races");

    for n in 0..2 {
        insert(format!("job-reader{n}"), JobKind::Backup).await;
    }
    let (a, b) = tokio::join!(
        store::claim(&db, "job-reader0", "worker-a"),
        store::claim(&db, "job-reader1", "worker-b"),
    );
    assert!(
        taken(&a.unwrap()) && taken(&b.unwrap()),
        "two backups of a project both run"
    );
}

/// A key limited to other projects gets 404 for the job everywhere (read,
/// events, cancel) and does not find it in the list.
async fn hidden_from(app: &TestApp, key: &str, job_id: &str) {
    let jobs = app.as_key(key).jobs();
    for (status, body) in [
        jobs.get(job_id).await,
        jobs.events(job_id).send_json().await,
        jobs.cancel(job_id).await,
    ] {
        assert_eq!(status, 404, "{job_id}: {body}");
        assert_eq!(body["error"], "Job not found");
    }
    let (status, body) = jobs.list("kind=verify").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pagination"]["total"], 0, "{body}");
}

/// A verification is a job of its backup's project: a key limited to other
/// projects gets 404 for it everywhere (read, list, events, cancel), rows
/// written before jobs carried it get it from their backup, and it does
/// not wait for a restore of the project that is running.
async fn verify_jobs_belong_to_their_backups_project(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let project = make_project().await;
    register(&app, &project, "theirs").await;
    let (status, created) = app
        .backups()
        .create(json!({"projectId": "theirs", "type": "config"}))
        .await;
    assert_eq!(status, 200, "{created}");
    let backup_id = created["backup"]["id"].as_str().unwrap().to_string();
    let (status, key) = app
        .api_keys()
        .create(
            json!({"name": "mine only", "permissions": ["backups:read", "backups:write"],
                       "projectIds": ["mine"]}),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let key = key["apiKey"]["key"].as_str().unwrap().to_string();
    // A restore of the project runs (on another worker, its heartbeat
    // fresh for as long as the test lasts): the verification goes on.
    let control = app.control_plane().await;
    let long_ago = at("2026-01-01T00:00:00Z");
    control
        .insert_job(running_restore(
            "theirs",
            long_ago,
            at("2999-01-01T00:00:00Z"),
        ))
        .await;
    let (status, verified) = app.backups().verify(&backup_id).await;
    assert_eq!(status, 200, "waited behind the restore? {verified}");
    assert_eq!(verified["verification"]["valid"], true, "{verified}");
    let (_, listed) = app.jobs().list("kind=verify").await;
    let job = &listed["jobs"][0];
    assert_eq!(job["projectId"], "theirs", "{listed}");
    let job_id = job["id"].as_str().unwrap().to_string();

    hidden_from(&app, &key, &job_id).await;

    // A verify job written before jobs carried a project: the migration
    // gives it its backup's.
    let mut old_verify = store::new_job(JobKind::Verify, None, json!({"backupId": backup_id}), 3);
    old_verify.id = Set("job-old-verify".into());
    old_verify.enqueued_at = Set(long_ago);
    control.insert_job(old_verify).await;
    control
        .execute("DELETE FROM seaql_migrations WHERE version LIKE '%_000007_%'")
        .await;
    drop(control);
    app.restart();
    hidden_from(&app, &key, "job-old-verify").await;
    let (_, old) = app.jobs().get("job-old-verify").await;
    assert_eq!(old["projectId"], "theirs", "{old}");
}
