//! The job row is the record: a job survives losing its queue entry, its
//! worker (SIGKILL) and the API process, in both deployments.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use supascale_tests::{
    Backend, Cluster, Deployment, Launch, RedisServer, TableLock, TestApp, job_sessions,
    make_project, read_events, register, start_backup, wait_for_job_state,
};

/// Redis restarted empty while a job waits: the reconciler re-delivers it
/// from its row and it completes.
#[tokio::test]
async fn a_job_survives_redis_losing_everything() {
    let redis = RedisServer::start().await;
    let port = redis.port;
    let redis_url = redis.url();
    // The API alone: nothing takes the job yet.
    let app = TestApp::spawn_with(
        Backend::Postgres,
        Launch::default()
            .env("SUPASCALE_REDIS_URL", redis_url.clone())
            .env("SUPASCALE_WORKERS", "0"),
    )
    .await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    let (status, accepted) = app
        .backups()
        .start(json!({"projectId": "p", "type": "config"}))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let job_url = accepted["job"]["jobUrl"].as_str().unwrap().to_string();

    // Redis loses the queued job.
    let flushed = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "FLUSHALL"])
        .output()
        .unwrap();
    assert!(flushed.status.success());

    let mut worker = app.start_worker(Launch::default().env("SUPASCALE_REDIS_URL", redis_url));
    let job = app.wait_for_job(&job_url, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let (_, backup) = app
        .backups()
        .get(accepted["backup"]["id"].as_str().unwrap())
        .await;
    assert_eq!(backup["status"], "completed");
    let log = worker.stderr.lock().unwrap().join("\n");
    assert!(
        log.contains("re-delivered a job the queue had lost"),
        "{log}"
    );
    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(30));
}

/// `pg_dump` processes of `job_id` on this machine: their environment
/// names the job's session (`PGAPPNAME`).
fn dump_processes(job_id: &str) -> usize {
    let wanted = format!("PGAPPNAME=supascale-job-{job_id}");
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0;
    };
    processes
        .filter_map(|p| p.ok())
        .filter(|p| {
            let dir = p.path();
            let is_dump = std::fs::read_to_string(dir.join("comm"))
                .map(|name| name.trim() == "pg_dump")
                .unwrap_or(false);
            // A process that is gone, or not ours, has no environment to read.
            is_dump
                && std::fs::read(dir.join("environ"))
                    .map(|env| env.split(|b| *b == 0).any(|v| v == wanted.as_bytes()))
                    .unwrap_or(false)
        })
        .count()
}

/// A worker killed with SIGKILL in the middle of a backup: its `pg_dump`
/// dies with it, another worker (or the restarted API) takes the job over
/// within 30 s, and it completes; no job stays `in_progress`.
async fn a_killed_workers_job_is_taken_over(deployment: Deployment) {
    let mut cluster = Cluster::start(deployment, Launch::default()).await;
    let project = make_project().await;
    register(&cluster.app, &project, "p").await;
    let lock = TableLock::hold(&project.database.url).await;
    let accepted = start_backup(&cluster.app, json!({"projectId": "p", "type": "full"})).await;
    let job_id = accepted["job"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    // `pg_dumpall --roles-only` connects first under the same name: wait
    // for `pg_dump` itself, blocked behind the lock.
    while dump_processes(&job_id) == 0 || job_sessions(&project.database.url, &job_id).await == 0 {
        assert!(Instant::now() < deadline, "pg_dump never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = wait_for_job_state(&cluster.app, &job_id, Duration::from_secs(1), |_| true).await;
    assert_eq!(job["status"], "in_progress", "{job}");
    assert_eq!(dump_processes(&job_id), 1);

    cluster.kill_worker_of(&job);
    let killed_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(5);
    while dump_processes(&job_id) > 0 {
        assert!(
            Instant::now() < deadline,
            "pg_dump outlived its worker by 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lock.release().await;

    let job = wait_for_job_state(&cluster.app, &job_id, Duration::from_secs(45), |j| {
        j["status"] == "completed" || j["status"] == "failed"
    })
    .await;
    assert_eq!(job["status"], "completed", "{job}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "taken over after {:?}",
        killed_at.elapsed()
    );
    assert_eq!(job["attempt"], 2, "{job}");
    let (_, running) = cluster.app.jobs().list("status=in_progress,pending").await;
    assert_eq!(running["pagination"]["total"], 0, "{running}");
    let (_, backup) = cluster
        .app
        .backups()
        .get(accepted["backup"]["id"].as_str().unwrap())
        .await;
    assert_eq!(backup["status"], "completed");
    let artifact = backup["path"]
        .as_str()
        .unwrap()
        .strip_prefix("file://")
        .unwrap();
    assert_eq!(
        std::fs::metadata(artifact).unwrap().len(),
        backup["size"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn embedded_a_killed_workers_job_is_taken_over() {
    a_killed_workers_job_is_taken_over(Deployment::Embedded).await;
}

#[tokio::test]
async fn scale_out_a_killed_workers_job_is_taken_over() {
    a_killed_workers_job_is_taken_over(Deployment::ScaleOut).await;
}

/// The API restarts while a job runs: a client that was following the
/// job's events reconnects with `Last-Event-ID` and gets the rest, with no
/// event lost or repeated.
async fn clients_reattach_after_an_api_restart(deployment: Deployment) {
    let mut cluster = Cluster::start(deployment, Launch::default()).await;
    let project = make_project().await;
    register(&cluster.app, &project, "p").await;
    let lock = TableLock::hold(&project.database.url).await;
    let accepted = start_backup(&cluster.app, json!({"projectId": "p", "type": "full"})).await;
    let job_id = accepted["job"]["id"].as_str().unwrap().to_string();
    let events_url = accepted["job"]["eventsUrl"].as_str().unwrap().to_string();
    let response = cluster.app.get(&events_url).send().await.unwrap();
    let before = read_events(response, Duration::from_secs(20), |e| e.event == "step").await;
    assert_eq!(
        before.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["start", "step"]
    );

    cluster.app.restart();
    lock.release().await;
    let response = cluster
        .app
        .get(&events_url)
        .header("Last-Event-ID", before.last().unwrap().id.clone().unwrap())
        .send()
        .await
        .unwrap();
    let after = read_events(response, Duration::from_secs(60), |_| false).await;
    let ids: Vec<i64> = before
        .iter()
        .chain(after.iter())
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
    let last = after.last().expect("events after the restart");
    assert_eq!(last.event, "complete", "{after:?}");
    assert_eq!(last.data["backup"]["status"], "completed");
    let job = wait_for_job_state(&cluster.app, &job_id, Duration::from_secs(1), |_| true).await;
    assert_eq!(job["status"], "completed");
}

#[tokio::test]
async fn embedded_clients_reattach_after_an_api_restart() {
    clients_reattach_after_an_api_restart(Deployment::Embedded).await;
}

#[tokio::test]
async fn scale_out_clients_reattach_after_an_api_restart() {
    clients_reattach_after_an_api_restart(Deployment::ScaleOut).await;
}

/// Redis loses everything while two jobs run and one waits: all three
/// complete (the running ones hold their rows; the reconciler re-delivers
/// the waiting one).
#[tokio::test]
async fn running_and_waiting_jobs_survive_a_redis_flush() {
    let redis = RedisServer::start().await;
    let launch = Launch::default()
        .env("SUPASCALE_REDIS_URL", redis.url())
        .env("SUPASCALE_WORKERS", "0");
    let app = TestApp::spawn_with(Backend::Postgres, launch).await;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            app.start_worker(
                Launch::default()
                    .env("SUPASCALE_REDIS_URL", redis.url())
                    .env("SUPASCALE_WORKER_CONCURRENCY", "1"),
            )
        })
        .collect();
    let project = make_project().await;
    register(&app, &project, "p").await;
    let lock = TableLock::hold(&project.database.url).await;
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let accepted = start_backup(&app, json!({"projectId": "p", "type": "database"})).await;
        jobs.push(accepted["job"]["id"].as_str().unwrap().to_string());
    }
    // Two run (one per worker slot), one waits.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, running) = app.jobs().list("status=in_progress").await;
        if running["pagination"]["total"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{running}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flushed = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "FLUSHALL"])
        .output()
        .unwrap();
    assert!(flushed.status.success());
    lock.release().await;
    for job_id in &jobs {
        let job = wait_for_job_state(&app, job_id, Duration::from_secs(45), |j| {
            j["status"] == "completed" || j["status"] == "failed"
        })
        .await;
        let logs: Vec<String> = workers
            .iter()
            .map(|w| w.stderr.lock().unwrap().join("\n"))
            .collect();
        assert_eq!(
            job["status"],
            "completed",
            "{job}\n{}",
            logs.join("\n----\n")
        );
    }
    drop(workers);
}

/// SIGTERM while a job runs past the grace period: the worker exits 0 and
/// hands the job back without counting the attempt; another worker then
/// completes it.
#[tokio::test]
async fn a_stopping_worker_hands_back_what_it_cannot_finish() {
    let queue = supascale_tests::RedisQueue::new();
    let shared = Launch::default()
        .env("SUPASCALE_REDIS_URL", "redis://127.0.0.1:6379")
        .env("SUPASCALE_QUEUE_NAME", queue.name.clone());
    let app = TestApp::spawn_with(
        Backend::Postgres,
        shared.clone().env("SUPASCALE_WORKERS", "0"),
    )
    .await;
    let mut first = app.start_worker(shared.clone().env("SUPASCALE_SHUTDOWN_GRACE_SECONDS", "1"));
    let project = make_project().await;
    register(&app, &project, "p").await;
    let lock = TableLock::hold(&project.database.url).await;
    let accepted = start_backup(&app, json!({"projectId": "p", "type": "database"})).await;
    let job_id = accepted["job"]["id"].as_str().unwrap().to_string();
    let job = wait_for_job_state(&app, &job_id, Duration::from_secs(20), |j| {
        j["status"] == "in_progress"
    })
    .await;
    assert_eq!(job["attempt"], 1, "{job}");

    first.signal("TERM");
    let (code, log) = first.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("handed back"), "{log}");
    let job = wait_for_job_state(&app, &job_id, Duration::from_secs(1), |_| true).await;
    assert_eq!(job["status"], "pending", "{job}");
    assert_eq!(job["attempt"], 0, "{job}");
    assert_eq!(dump_processes(&job_id), 0);

    let _second = app.start_worker(shared);
    lock.release().await;
    let job = wait_for_job_state(&app, &job_id, Duration::from_secs(30), |j| {
        j["status"] == "completed" || j["status"] == "failed"
    })
    .await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempt"], 1, "{job}");
}

/// A client that gives up waiting does not cancel its backup.
#[tokio::test]
async fn a_client_that_disconnects_does_not_cancel_the_job() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let project = make_project().await;
    register(&app, &project, "p").await;
    let lock = TableLock::hold(&project.database.url).await;
    let gave_up = app
        .post("/api/v1/backups")
        .json(&json!({"projectId": "p", "type": "database"}))
        .timeout(Duration::from_millis(1500))
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    lock.release().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = app.backups().list("").await;
        let backup = &list["backups"][0];
        if backup["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What dead attempts leave on disk (a spooled dump, a partial local
/// artifact) is removed when a worker starts, and what is not ours stays.
#[tokio::test]
async fn leftovers_of_dead_jobs_are_removed() {
    let mut app = TestApp::spawn(Backend::Sqlite).await;
    let data = app.data_dir.path().to_path_buf();
    let spool = data.join("tmp");
    let incomplete = data.join("backups/.incomplete");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::create_dir_all(&incomplete).unwrap();
    std::fs::write(spool.join("job-0123.dump"), b"half a dump").unwrap();
    std::fs::write(spool.join("job-0123.roles.sql"), b"roles").unwrap();
    std::fs::write(spool.join("notes.txt"), b"not ours").unwrap();
    std::fs::write(incomplete.join("old-upload"), b"partial").unwrap();
    std::fs::write(incomplete.join("fresh-upload"), b"partial").unwrap();
    let touched = Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(incomplete.join("old-upload"))
        .status()
        .unwrap();
    assert!(touched.success());
    app.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while spool.join("job-0123.dump").exists() || incomplete.join("old-upload").exists() {
        assert!(Instant::now() < deadline, "leftovers stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!spool.join("job-0123.roles.sql").exists());
    assert!(spool.join("notes.txt").exists());
    assert!(incomplete.join("fresh-upload").exists());
}

fn redis_count(command: &str, key: &str) -> i64 {
    let out = Command::new("redis-cli")
        .args([command, key])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The queue forgets deliveries that are over (apalis keeps them forever;
/// the job rows are the record): Redis keeps no payload, metadata or
/// done-set entry of a finished job once a worker has cleaned up.
#[tokio::test]
async fn the_redis_queue_does_not_grow_with_finished_jobs() {
    let queue = supascale_tests::RedisQueue::new();
    let shared = Launch::default()
        .env("SUPASCALE_REDIS_URL", "redis://127.0.0.1:6379")
        .env("SUPASCALE_QUEUE_NAME", queue.name.clone());
    let app = TestApp::spawn_with(
        Backend::Postgres,
        shared.clone().env("SUPASCALE_WORKERS", "0"),
    )
    .await;
    let _first = app.start_worker(shared.clone());
    let project = make_project().await;
    register(&app, &project, "p").await;
    for _ in 0..3 {
        let (status, body) = app
            .backups()
            .create(json!({"projectId": "p", "type": "config"}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let done = format!("{}:done", queue.name);
    let data = format!("{}:data", queue.name);
    assert!(redis_count("SCARD", &done) + redis_count("HLEN", &data) > 0);
    // A worker cleans up when it starts (and every minute).
    let _second = app.start_worker(shared);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_count("SCARD", &done) > 0 || redis_count("HLEN", &data) > 0 {
        assert!(
            Instant::now() < deadline,
            "finished deliveries stayed in Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metas = Command::new("redis-cli")
        .args(["--scan", "--pattern", &format!("{}:meta:*", queue.name)])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&metas.stdout).trim().is_empty());
}

/// A worker killed during a job's last attempt: the worker that takes the
/// job over fails it without counting another attempt, so the job shows
/// `attempt` 1 of 1 (not 2 of 1), and its backup fails with it.
async fn a_job_lost_on_its_last_attempt_fails_within_the_limit(deployment: Deployment) {
    let mut cluster = Cluster::start(
        deployment,
        Launch::default().env("SUPASCALE_JOB_ATTEMPTS", "1"),
    )
    .await;
    let project = make_project().await;
    register(&cluster.app, &project, "p").await;
    let lock = TableLock::hold(&project.database.url).await;
    let accepted = start_backup(&cluster.app, json!({"projectId": "p", "type": "full"})).await;
    let job_id = accepted["job"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while dump_processes(&job_id) == 0 {
        assert!(Instant::now() < deadline, "pg_dump never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = wait_for_job_state(&cluster.app, &job_id, Duration::from_secs(1), |_| true).await;
    assert_eq!(job["status"], "in_progress", "{job}");
    cluster.kill_worker_of(&job);
    lock.release().await;

    let job = wait_for_job_state(&cluster.app, &job_id, Duration::from_secs(45), |j| {
        j["status"] == "completed" || j["status"] == "failed"
    })
    .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempt"], 1, "{job}");
    assert_eq!(job["maxAttempts"], 1, "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("stopped during attempt 1 of 1"),
        "{job}"
    );
    let (_, listed) = cluster.app.jobs().list("").await;
    let listed = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == job_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(listed["attempt"], 1, "{listed}");
    let (_, backup) = cluster
        .app
        .backups()
        .get(accepted["backup"]["id"].as_str().unwrap())
        .await;
    assert_eq!(backup["status"], "failed", "{backup}");
}

#[tokio::test]
async fn embedded_a_job_lost_on_its_last_attempt_fails_within_the_limit() {
    a_job_lost_on_its_last_attempt_fails_within_the_limit(Deployment::Embedded).await;
}

#[tokio::test]
async fn scale_out_a_job_lost_on_its_last_attempt_fails_within_the_limit() {
    a_job_lost_on_its_last_attempt_fails_within_the_limit(Deployment::ScaleOut).await;
}
