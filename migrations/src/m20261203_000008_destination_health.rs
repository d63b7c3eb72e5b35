use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Each destination's latest probe (`shared::destinations::health`): what
/// `/metrics` reports as `supascale_destination_up`, whichever process
/// probed it.
const TABLE: &str = r#"
CREATE TABLE IF NOT EXISTS destination_health (
    name TEXT PRIMARY KEY,
    up {boolean} NOT NULL,
    latency_ms BIGINT NOT NULL,
    error TEXT,
    checked_at {ts} NOT NULL
);
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let (ts, boolean) = match manager.get_database_backend() {
            DbBackend::Postgres => ("TIMESTAMPTZ", "BOOLEAN"),
            _ => ("TEXT", "INTEGER"),
        };
        manager
            .get_connection()
            .execute_unprepared(&TABLE.replace("{ts}", ts).replace("{boolean}", boolean))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS destination_health;")
            .await?;
        Ok(())
    }
}
