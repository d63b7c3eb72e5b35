use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Copies of a backup's artifact on other destinations (3-2-1): one row
/// per backup and destination, under the same key as the primary. And
/// when an artifact may be deleted at the earliest (`locked_until`, from a
/// destination's `immutable_days`), on the backup and on each copy.
const TABLE: &str = r#"
CREATE TABLE IF NOT EXISTS backup_copies (
    backup_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT,
    status TEXT NOT NULL,
    error TEXT,
    job_id TEXT,
    created_at {ts} NOT NULL,
    completed_at {ts},
    locked_until {ts},
    PRIMARY KEY (backup_id, destination)
);
"#;

/// A copy changes what `GET /backups` shows: the API's list cache hears of
/// it as it hears of the backups' own changes.
const POSTGRES_NOTIFY: &str = r#"
CREATE OR REPLACE FUNCTION backup_copies_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('supascale_backups_changed', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS backup_copies_notify ON backup_copies;
CREATE TRIGGER backup_copies_notify AFTER INSERT OR UPDATE OR DELETE ON backup_copies
    FOR EACH STATEMENT EXECUTE FUNCTION backup_copies_changed();
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let (ts, if_not_exists) = match backend {
            DbBackend::Postgres => ("TIMESTAMPTZ", "IF NOT EXISTS "),
            // SQLite has no `ADD COLUMN IF NOT EXISTS`; the migrator records
            // what it ran.
            _ => ("TEXT", ""),
        };
        let connection = manager.get_connection();
        connection
            .execute_unprepared(&TABLE.replace("{ts}", ts))
            .await?;
        connection
            .execute_unprepared(&format!(
                "ALTER TABLE backups ADD COLUMN {if_not_exists}locked_until {ts};"
            ))
            .await?;
        if backend == DbBackend::Postgres {
            connection.execute_unprepared(POSTGRES_NOTIFY).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE IF EXISTS backup_copies; \
                 ALTER TABLE backups DROP COLUMN locked_until;",
            )
            .await?;
        Ok(())
    }
}
