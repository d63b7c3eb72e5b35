//! Restores through the API into real projects (reference-project
//! generator, real PostgreSQL, real files with xattrs): what comes back is
//! exactly what was backed up, and a restore that fails changes nothing.

use std::path::Path;

use serde_json::{Value, json};
use supascale_tests::refproject::{self, RefProject, schema_of, table_fingerprints, tree_snapshot};
use supascale_tests::{Backend, TestApp, psql, status_and_body};

/// What a user would compare: every table's rows, the schema, the files.
#[derive(Debug, PartialEq)]
struct ProjectState {
    tables: Vec<String>,
    schema: String,
    storage: Vec<String>,
    functions: Vec<String>,
    env: String,
}

fn state_of(project: &RefProject) -> ProjectState {
    let root = project.root.path();
    ProjectState {
        tables: table_fingerprints(&project.database.url),
        schema: schema_of(&project.database.url),
        storage: tree_snapshot(&root.join("volumes/storage")),
        functions: tree_snapshot(&root.join("volumes/functions")),
        env: std::fs::read_to_string(root.join(".env")).unwrap(),
    }
}

async fn register(app: &TestApp, project: &RefProject, id: &str) {
    let (status, body) = status_and_body(
        app.post("/api/v1/projects")
            .json(&json!({"id": id, "name": format!("Project {id}"),
                "rootDir": project.root.path().to_str().unwrap(),
                "databaseUrl": project.database.url}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

async fn backup(app: &TestApp, project_id: &str, kind: &str) -> String {
    let (status, body) = status_and_body(
        app.post("/api/v1/backups")
            .json(&json!({"projectId": project_id, "type": kind}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["backup"]["id"].as_str().unwrap().to_string()
}

async fn restore(app: &TestApp, backup_id: &str, request: Value) -> (u16, Value) {
    status_and_body(
        app.post(&format!("/api/v1/backups/{backup_id}/restore"))
            .json(&request)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Changes of every kind a restore must undo.
fn change_everything(project: &RefProject) {
    psql(
        &project.database.url,
        "DELETE FROM public.comments WHERE id % 3 = 0; \
         UPDATE public.posts SET title = 'changed' WHERE id % 5 = 0; \
         INSERT INTO public.\"Über Tabelle ✓\" VALUES (1000, 'neu'); \
         DROP TABLE public.attachments; \
         CREATE TABLE public.after_backup (id int); \
         CREATE FUNCTION public.after_backup_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'; \
         CREATE POLICY \"new policy\" ON public.posts FOR SELECT TO anon USING (true);",
    );
    let root = project.root.path();
    let (first, _) = &project.objects[0];
    std::fs::write(root.join(first), b"overwritten").unwrap();
    std::fs::remove_file(root.join(&project.objects[1].0)).unwrap();
    let added = root.join("volumes/storage/stub/stub/avatars/new.png/v1");
    std::fs::create_dir_all(added.parent().unwrap()).unwrap();
    std::fs::write(&added, b"new").unwrap();
    std::fs::remove_dir_all(root.join("volumes/functions/stripe-sync")).unwrap();
    std::fs::write(root.join("volumes/functions/main/index.ts"), "changed").unwrap();
    std::fs::write(root.join(".env"), "JWT_SECRET=changed\n").unwrap();
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".supascale-"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_changed_project_comes_back_exactly_as_it_was_backed_up() {
    let project = refproject::make(0.05, 11, false).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &project, "alpha").await;
    let before = state_of(&project);
    let backup_id = backup(&app, "alpha", "full").await;
    change_everything(&project);
    assert_ne!(state_of(&project), before);

    let (status, body) = restore(&app, &backup_id, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    let restored = &body["restore"];
    assert_eq!(restored["backupId"], backup_id.as_str());
    assert_eq!(restored["projectId"], "alpha");
    assert!(restored["duration"].as_i64().is_some(), "{body}");
    assert!(restored["restoredAt"].as_str().is_some(), "{body}");
    assert!(restored["warnings"].is_array(), "{body}");

    let after = state_of(&project);
    assert_eq!(after.tables, before.tables);
    assert_eq!(after.schema, before.schema);
    assert_eq!(after.storage, before.storage);
    assert_eq!(after.functions, before.functions);
    assert_eq!(after.env, before.env);
    let root = project.root.path();
    assert!(leftovers(&root.join("volumes/storage")).is_empty());
    assert!(leftovers(&root.join("volumes/functions")).is_empty());

    // The restore is in the backup's history.
    let (status, details) = status_and_body(
        app.get(&format!("/api/v1/backups/{backup_id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let history = details["restoreHistory"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{details}");
    assert_eq!(history[0]["restoredAt"], restored["restoredAt"]);
    assert_eq!(history[0]["duration"], restored["duration"]);
}

#[tokio::test]
async fn a_backup_restores_into_a_freshly_initialised_project() {
    let source = refproject::make(0.05, 12, false).await;
    let fresh = refproject::make(0.05, 13, true).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &source, "source").await;
    register(&app, &fresh, "fresh").await;
    let at_backup = state_of(&source);
    let fresh_env = std::fs::read_to_string(fresh.root.path().join(".env")).unwrap();
    std::fs::write(
        fresh.root.path().join(".env"),
        format!("{fresh_env}# fresh\n"),
    )
    .unwrap();
    let backup_id = backup(&app, "source", "full").await;

    let (status, body) = restore(&app, &backup_id, json!({"targetProjectId": "fresh"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restore"]["projectId"], "fresh");
    let warnings = body["restore"]["warnings"].to_string();
    assert!(warnings.contains("Config was not restored"), "{warnings}");

    let restored = state_of(&fresh);
    assert_eq!(restored.tables, at_backup.tables);
    assert_eq!(restored.schema, at_backup.schema);
    assert_eq!(restored.storage, at_backup.storage);
    assert_eq!(restored.functions, at_backup.functions);
    // B keeps its own identity.
    assert_eq!(restored.env, format!("{fresh_env}# fresh\n"));
}

#[tokio::test]
async fn each_restore_type_alone_restores_only_that_component() {
    let project = refproject::make(0.05, 14, false).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &project, "solo").await;
    let before = state_of(&project);
    let backup_id = backup(&app, "solo", "full").await;

    change_everything(&project);
    let changed = state_of(&project);
    let (status, body) = restore(&app, &backup_id, json!({"restoreTypes": ["storage"]})).await;
    assert_eq!(status, 200, "{body}");
    let after = state_of(&project);
    assert_eq!(after.storage, before.storage);
    assert_eq!(after.tables, changed.tables);
    assert_eq!(after.functions, changed.functions);
    assert_eq!(after.env, changed.env);

    let (status, body) = restore(&app, &backup_id, json!({"restoreTypes": ["database"]})).await;
    assert_eq!(status, 200, "{body}");
    let after = state_of(&project);
    assert_eq!(after.tables, before.tables);
    assert_eq!(after.schema, before.schema);
    assert_eq!(after.functions, changed.functions);
    assert_eq!(after.env, changed.env);

    let (status, body) = restore(
        &app,
        &backup_id,
        json!({"restoreTypes": ["functions", "config"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(state_of(&project), before);
}
