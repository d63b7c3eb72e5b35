use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Why the last verification of a backup found it unusable (`verified_at`
/// keeps the time of the last one that found it whole), and the command a
/// project runs after a database restore (a JSON array: program and
/// arguments, no shell).
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let if_not_exists = match manager.get_database_backend() {
            DbBackend::Postgres => "IF NOT EXISTS ",
            // SQLite has no `ADD COLUMN IF NOT EXISTS`; the migrator records
            // what it ran.
            _ => "",
        };
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "ALTER TABLE backups ADD COLUMN {if_not_exists}verify_error TEXT;\n\
                 ALTER TABLE projects ADD COLUMN {if_not_exists}post_restore_command TEXT;"
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE backups DROP COLUMN verify_error; \
                 ALTER TABLE projects DROP COLUMN post_restore_command;",
            )
            .await?;
        Ok(())
    }
}
