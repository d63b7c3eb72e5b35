//! A client generated from the committed `openapi.yaml` by a standard
//! generator (openapi-python-client) talks to the real server.

use std::path::PathBuf;
use std::process::Command;

use chrono::Utc;
use serde_json::Value;
use supascale_tests::{Backend, BackupRow, TestApp};

fn tools_python() -> (PathBuf, PathBuf) {
    let venv = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/test-tools/venv/bin"
    ));
    let python = venv.join("python");
    let generator = venv.join("openapi-python-client");
    assert!(
        generator.exists(),
        "{} is missing: run scripts/install-test-tools (scripts/test does)",
        generator.display()
    );
    (python, generator)
}

const SCRIPT: &str = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
from supascale_client import AuthenticatedClient, Client
from supascale_client.api.backups import list_backups, get_backup, create_backup
from supascale_client.api.projects import create_project, list_projects, get_project
from supascale_client.api.api_keys import create_api_key
from supascale_client.models import CreateProject, CreateApiKey, CreateBackup

base, key, root = sys.argv[2], sys.argv[3], sys.argv[4]
client = AuthenticatedClient(base_url=base, token=key)
out = {}
created = create_project.sync_detailed(client=client, body=CreateProject(
    id="gen-client", name="Generated", root_dir=root, database_url="postgres://u:p@127.0.0.1:1/db"))
out["create_status"] = int(created.status_code)
out["created_id"] = created.parsed.project.id
out["projects"] = [p.id for p in list_projects.sync(client=client).projects]
out["project_status"] = str(get_project.sync(client=client, id="gen-client").status)
page = list_backups.sync(client=client, limit=2, stats=True)
out["page_ids"] = [b.id for b in page.backups]
out["total"] = page.pagination.total
out["next_cursor"] = bool(page.pagination.next_cursor)
out["stats_total"] = page.stats.total_backups
out["by_destination"] = {k: v.count for k, v in page.stats.by_destination.additional_properties.items()}
second = list_backups.sync(client=client, limit=2, cursor=page.pagination.next_cursor)
out["second_ids"] = [b.id for b in second.backups]
one = get_backup.sync(client=client, id=page.backups[0].id)
out["project_name"] = one.project_name
out["created_at"] = one.created_at.isoformat()
missing = get_backup.sync_detailed(client=client, id="backup-none")
out["missing_status"] = int(missing.status_code)
out["missing_error"] = missing.parsed.error
denied = list_backups.sync_detailed(client=AuthenticatedClient(base_url=base, token="ssk_wrong"))
out["denied_status"] = int(denied.status_code)
made = create_api_key.sync_detailed(client=client, body=CreateApiKey(name="gen", permissions=["backups:read"]))
out["new_key_ok"] = made.parsed.api_key.key.startswith("ssk_")
x_api_key = AuthenticatedClient(base_url=base, token=made.parsed.api_key.key, prefix="", auth_header_name="X-API-Key")
out["x_api_key_total"] = list_backups.sync(client=x_api_key).pagination.total
made_backup = create_backup.sync_detailed(client=client, body=CreateBackup(project_id="gen-client", type_="config"))
out["backup_status"] = int(made_backup.status_code)
out["backup_state"] = (made_backup.parsed.backup.status if made_backup.status_code == 200
                       else made_backup.parsed.error)
print(json.dumps(out))
"#;

#[tokio::test]
async fn a_generated_python_client_works() {
    let (python, generator) = tools_python();
    let app = TestApp::spawn(Backend::Sqlite).await;
    let cp = app.control_plane().await;
    for (i, destination) in ["local", "s3", "local"].iter().enumerate() {
        cp.insert_backup(&BackupRow {
            id: format!("backup-gen-{i}"),
            project_id: "gen-client".into(),
            project_name: "Generated".into(),
            backup_type: "full".into(),
            status: "completed".into(),
            destination: destination.to_string(),
            size: 100,
            created_at: Utc::now() - chrono::Duration::minutes(10 - i as i64),
        })
        .await;
    }
    let work = tempfile::tempdir().unwrap();
    // The project's folder, with its `.env` (the config backup's content).
    let root = work.path().join("gen-root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join(".env"), "POSTGRES_PASSWORD=x\n").unwrap();
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml");
    let package = work.path().join("supascale_client");
    let generated = Command::new(&generator)
        .args([
            "generate",
            "--path",
            spec,
            "--meta",
            "none",
            "--output-path",
        ])
        .arg(&package)
        .output()
        .expect("run openapi-python-client");
    let log = String::from_utf8_lossy(&generated.stdout).to_string()
        + &String::from_utf8_lossy(&generated.stderr);
    assert!(generated.status.success(), "generation failed: {log}");
    assert!(
        !log.contains("removal of"),
        "the generator dropped schemas: {log}"
    );

    let run = Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(work.path())
        .arg(app.url("/api/v1"))
        .arg(&app.admin_key)
        .arg(&root)
        .output()
        .expect("run python");
    assert!(
        run.status.success(),
        "the generated client failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out: Value = serde_json::from_slice(&run.stdout).expect("JSON from the script");
    assert_eq!(out["create_status"], 201);
    assert_eq!(out["created_id"], "gen-client");
    assert_eq!(out["projects"], serde_json::json!(["gen-client"]));
    assert_eq!(out["project_status"], "stopped");
    assert_eq!(
        out["page_ids"],
        serde_json::json!(["backup-gen-2", "backup-gen-1"])
    );
    assert_eq!(out["second_ids"], serde_json::json!(["backup-gen-0"]));
    assert_eq!(out["total"], 3);
    assert_eq!(out["next_cursor"], true);
    assert_eq!(out["stats_total"], 3);
    assert_eq!(
        out["by_destination"],
        serde_json::json!({"local": 2, "s3": 1})
    );
    assert_eq!(out["project_name"], "Generated");
    assert!(out["created_at"].as_str().unwrap().ends_with("+00:00"));
    assert_eq!(out["missing_status"], 404);
    assert_eq!(out["missing_error"], "Backup not found");
    assert_eq!(out["denied_status"], 401);
    assert_eq!(out["new_key_ok"], true);
    assert_eq!(out["x_api_key_total"], 3);
    assert_eq!(out["backup_status"], 200);
    assert_eq!(out["backup_state"], "completed");
}
