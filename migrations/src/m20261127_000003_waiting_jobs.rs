use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The jobs that wait for a delivery date (a retry's backoff, or a job
/// waiting behind another job of its project). A claimed job has none, so
/// this index stays as small as the backlog of waiting jobs, and the
/// wake-up that follows every job's end reads only those.
const UP: &str = "\
UPDATE jobs SET run_after = NULL WHERE status <> 'pending' AND run_after IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_waiting_idx ON jobs (project_id, status, enqueued_at) WHERE run_after IS NOT NULL;
";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(UP).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS jobs_waiting_idx;")
            .await?;
        Ok(())
    }
}
