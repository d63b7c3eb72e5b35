use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Why a job failed, as a kind: `invalid_input` when the caller's upload
/// was at fault (the waiting request answers 400 instead of 500); and what
/// a job without a row of its own (an import) found, as JSON.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let if_not_exists = match manager.get_database_backend() {
            DbBackend::Postgres => "IF NOT EXISTS ",
            _ => "",
        };
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "ALTER TABLE jobs ADD COLUMN {if_not_exists}error_kind TEXT;\n\
                 ALTER TABLE jobs ADD COLUMN {if_not_exists}result TEXT;"
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE jobs DROP COLUMN error_kind; ALTER TABLE jobs DROP COLUMN result;",
            )
            .await?;
        Ok(())
    }
}
