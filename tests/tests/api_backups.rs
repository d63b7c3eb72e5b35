//! The read side of backups through HTTP, against both control planes.

use std::collections::HashSet;

use chrono::{Duration, TimeZone, Utc};
use supascale_tests::{Backend, BackupRow, TestApp, both_backends};

both_backends! {
    lists_are_newest_first_with_contract_fields,
    filters_take_one_value_or_a_comma_list,
    pages_by_offset_and_by_cursor_cover_every_backup_once,
    stats_follow_inserts_updates_and_deletes,
    details_carry_project_name_and_restore_history,
    bad_list_parameters_answer_400_naming_the_parameter,
}

fn row(i: i64, project: &str, status: &str, destination: &str) -> BackupRow {
    BackupRow {
        id: format!("backup-{i:04}"),
        project_id: project.into(),
        project_name: format!("Project {project}"),
        backup_type: if i % 2 == 0 { "full" } else { "database" }.into(),
        status: status.into(),
        destination: destination.into(),
        size: 1000 + i,
        created_at: Utc.with_ymd_and_hms(2026, 1, 19, 2, 0, 0).unwrap() + Duration::minutes(i),
    }
}

/// 30 backups: projects a/b/c in turn, statuses and destinations varied.
async fn seed(app: &TestApp) -> Vec<BackupRow> {
    let cp = app.control_plane().await;
    let mut rows = Vec::new();
    for i in 0..30 {
        let project = ["a", "b", "c"][(i % 3) as usize];
        let status =
            ["completed", "completed", "failed", "pending", "in_progress"][(i % 5) as usize];
        let destination = ["local", "s3", "local", "gcs"][(i % 4) as usize];
        let r = row(i, project, status, destination);
        cp.insert_backup(&r).await;
        rows.push(r);
    }
    rows
}

async fn lists_are_newest_first_with_contract_fields(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let rows = seed(&app).await;
    let (status, body) = app.backups().list("limit=10").await;
    assert_eq!(status, 200, "{body}");
    let backups = body["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 10);
    assert_eq!(body["pagination"]["total"], 30);
    assert_eq!(body["pagination"]["limit"], 10);
    assert_eq!(body["pagination"]["offset"], 0);
    // Newest first.
    assert_eq!(backups[0]["id"], "backup-0029");
    assert_eq!(backups[9]["id"], "backup-0020");
    // The contract's fields, names and formats.
    let newest = &rows[29];
    let first = &backups[0];
    assert_eq!(first["projectId"], newest.project_id.as_str());
    assert_eq!(first["projectName"], newest.project_name.as_str());
    assert_eq!(first["type"], newest.backup_type.as_str());
    assert_eq!(first["status"], newest.status.as_str());
    assert_eq!(first["destination"], newest.destination.as_str());
    assert_eq!(first["size"], newest.size);
    assert_eq!(first["encrypted"], false);
    assert_eq!(first["createdAt"], "2026-01-19T02:29:00Z");
    let completed = backups.iter().find(|b| b["status"] == "completed").unwrap();
    let created =
        chrono::DateTime::parse_from_rfc3339(completed["createdAt"].as_str().unwrap()).unwrap();
    let done =
        chrono::DateTime::parse_from_rfc3339(completed["completedAt"].as_str().unwrap()).unwrap();
    assert_eq!((done - created).num_seconds(), 90);
    assert!(completed["completedAt"].as_str().unwrap().ends_with('Z'));
    assert!(first.get("stats").is_none() && body.get("stats").is_none());
}

async fn filters_take_one_value_or_a_comma_list(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let rows = seed(&app).await;
    let expect = |f: &dyn Fn(&BackupRow) -> bool| -> HashSet<String> {
        rows.iter().filter(|r| f(r)).map(|r| r.id.clone()).collect()
    };
    let cases: Vec<(&str, HashSet<String>)> = vec![
        ("projectId=a", expect(&|r| r.project_id == "a")),
        (
            "projectId=a&status=completed",
            expect(&|r| r.project_id == "a" && r.status == "completed"),
        ),
        (
            "status=completed,%20failed",
            expect(&|r| r.status == "completed" || r.status == "failed"),
        ),
        (
            "destination=local,s3",
            expect(&|r| r.destination == "local" || r.destination == "s3"),
        ),
        (
            "projectId=b,c&destination=gcs",
            expect(&|r| r.project_id != "a" && r.destination == "gcs"),
        ),
        ("projectId=nobody", HashSet::new()),
    ];
    for (query, expected) in cases {
        let (status, body) = app.backups().list(&format!("limit=500&{query}")).await;
        assert_eq!(status, 200, "{body}");
        let got: HashSet<String> = body["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, expected, "{query}");
        assert_eq!(body["pagination"]["total"], expected.len(), "{query}");
    }
}

async fn pages_by_offset_and_by_cursor_cover_every_backup_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let cp = app.control_plane().await;
    // Several backups share a creation time: the id breaks the tie.
    for i in 0..23 {
        let mut r = row(i, "a", "completed", "local");
        r.created_at =
            Utc.with_ymd_and_hms(2026, 1, 19, 2, 0, 0).unwrap() + Duration::minutes(i / 4);
        cp.insert_backup(&r).await;
    }
    let mut by_cursor = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=5&cursor={c}"),
            None => "limit=5".to_string(),
        };
        let (status, body) = app.backups().list(&query).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["pagination"]["total"], 23);
        for b in body["backups"].as_array().unwrap() {
            by_cursor.push(b["id"].as_str().unwrap().to_string());
        }
        match body["pagination"]["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut by_offset = Vec::new();
    for offset in (0..25).step_by(5) {
        let (status, body) = app
            .backups()
            .list(&format!("limit=5&offset={offset}"))
            .await;
        assert_eq!(status, 200, "{body}");
        for b in body["backups"].as_array().unwrap() {
            by_offset.push(b["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(by_cursor.len(), 23);
    assert_eq!(by_cursor, by_offset);
    let unique: HashSet<_> = by_cursor.iter().collect();
    assert_eq!(unique.len(), 23);
    // A cursor that was never issued is a 400, not a silent first page.
    let (status, body) = app.backups().list("cursor=bm9wZQ").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("cursor"));
}

async fn stats_follow_inserts_updates_and_deletes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let rows = seed(&app).await;
    let sum = |f: &dyn Fn(&BackupRow) -> bool| -> (i64, i64) {
        rows.iter()
            .filter(|r| f(r))
            .fold((0, 0), |(c, s), r| (c + 1, s + r.size))
    };
    let (status, body) = app.backups().list("stats=true&limit=1").await;
    assert_eq!(status, 200, "{body}");
    let stats = &body["stats"];
    let (count, size) = sum(&|_| true);
    assert_eq!(stats["totalBackups"], count);
    assert_eq!(stats["totalSize"], size);
    for destination in ["local", "s3", "gcs"] {
        let (c, s) = sum(&|r| r.destination == destination);
        assert_eq!(
            stats["byDestination"][destination]["count"], c,
            "{destination}"
        );
        assert_eq!(
            stats["byDestination"][destination]["size"], s,
            "{destination}"
        );
    }
    assert!(stats["byDestination"].get("azure").is_none());

    // Stats follow the filters.
    let (status, body) = app
        .backups()
        .list("stats=true&projectId=b&status=completed")
        .await;
    assert_eq!(status, 200, "{body}");
    let (c, s) = sum(&|r| r.project_id == "b" && r.status == "completed");
    assert_eq!(body["stats"]["totalBackups"], c);
    assert_eq!(body["stats"]["totalSize"], s);

    // Rows change status, grow and go away: totals stay exact.
    let cp = app.control_plane().await;
    cp.execute(
        "UPDATE backups SET status = 'completed', size = size + 500 WHERE status = 'pending'",
    )
    .await;
    cp.execute("DELETE FROM backups WHERE destination = 's3'")
        .await;
    let (status, body) = app.backups().list("stats=true&status=completed").await;
    assert_eq!(status, 200, "{body}");
    let (c, s) = rows
        .iter()
        .filter(|r| r.destination != "s3" && (r.status == "completed" || r.status == "pending"))
        .fold((0, 0), |(c, s), r| {
            (
                c + 1,
                s + r.size + if r.status == "pending" { 500 } else { 0 },
            )
        });
    assert_eq!(body["stats"]["totalBackups"], c);
    assert_eq!(body["stats"]["totalSize"], s);
    assert_eq!(body["pagination"]["total"], c);
    assert!(body["stats"]["byDestination"].get("s3").is_none());
}

async fn details_carry_project_name_and_restore_history(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    seed(&app).await;
    let cp = app.control_plane().await;
    let restored = Utc.with_ymd_and_hms(2026, 1, 19, 10, 0, 0).unwrap();
    cp.insert_restore("restore-1", "backup-0001", "b", restored, 180)
        .await;
    let (status, body) = app.backups().get("backup-0001").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "backup-0001");
    assert_eq!(body["projectName"], "Project b");
    assert_eq!(body["status"], "completed");
    let history = body["restoreHistory"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["restoredAt"], "2026-01-19T10:00:00Z");
    assert_eq!(history[0]["duration"], 180);
    assert_eq!(history[0]["warnings"][0], "role x is missing");

    let (status, body) = app.backups().get("backup-0002").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restoreHistory"], serde_json::json!([]));

    let (status, body) = app.backups().get("backup-9999").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"success": false, "error": "Backup not found"})
    );
}

async fn bad_list_parameters_answer_400_naming_the_parameter(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (query, word) in [
        ("status=done", "status"),
        ("status=completed,nope", "status"),
        ("destination=ftp", "destination"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("stats=maybe", "stats"),
    ] {
        let (status, body) = app.backups().list(query).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["success"], false, "{query}");
        assert!(
            body["error"].as_str().unwrap().contains(word),
            "{query}: {body}"
        );
    }
}

/// Lists are cached in scale-out; a change made by any process (here: plain
/// SQL on the control plane) must show on the very next reads.
#[tokio::test]
async fn a_cached_list_follows_changes_made_elsewhere() {
    let app = TestApp::spawn(Backend::Postgres).await;
    seed(&app).await;
    let query = "limit=5&status=completed&stats=true";
    let (status, first) = app.backups().list(query).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = app.backups().list(query).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(first, again);
    let newest = first["backups"][0]["id"].as_str().unwrap().to_string();
    let cp = app.control_plane().await;
    cp.execute(&format!(
        "UPDATE backups SET status = 'failed' WHERE id = '{newest}'"
    ))
    .await;
    let mut seen = None;
    for _ in 0..40 {
        let (status, body) = app.backups().list(query).await;
        assert_eq!(status, 200, "{body}");
        if body["backups"][0]["id"] != newest.as_str() {
            seen = Some(body);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let body = seen.expect("the list still shows a backup that is no longer completed");
    assert_eq!(
        body["pagination"]["total"].as_i64().unwrap(),
        first["pagination"]["total"].as_i64().unwrap() - 1
    );
}
