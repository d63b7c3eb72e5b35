use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Job events (the record an SSE stream replays; pub/sub only wakes it),
/// the worker registry (what `/metrics` counts as live workers), and the
/// jobs columns for cancellation, idempotency and retry backoff.
const TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at {ts} NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    concurrency INTEGER NOT NULL,
    started_at {ts} NOT NULL,
    last_seen_at {ts} NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_kind_status_idx ON jobs (kind, status);
"#;

fn statements(backend: DbBackend) -> String {
    let (ts, boolean, false_, if_not_exists) = match backend {
        DbBackend::Postgres => ("TIMESTAMPTZ", "BOOLEAN", "FALSE", "IF NOT EXISTS "),
        // SQLite has no `ADD COLUMN IF NOT EXISTS`; the embedded default is
        // one process, and the migrator records what it ran.
        _ => ("TEXT", "INTEGER", "0", ""),
    };
    let mut sql = TABLES.replace("{ts}", ts);
    sql.push_str(&format!(
        "ALTER TABLE jobs ADD COLUMN {if_not_exists}cancel_requested {boolean} NOT NULL DEFAULT {false_};\n\
         ALTER TABLE jobs ADD COLUMN {if_not_exists}request_hash TEXT;\n\
         ALTER TABLE jobs ADD COLUMN {if_not_exists}run_after {ts};\n"
    ));
    sql
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&statements(manager.get_database_backend()))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE IF EXISTS job_events; DROP TABLE IF EXISTS workers; \
                 ALTER TABLE jobs DROP COLUMN cancel_requested; \
                 ALTER TABLE jobs DROP COLUMN request_hash; ALTER TABLE jobs DROP COLUMN run_after;",
            )
            .await?;
        Ok(())
    }
}
