use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// PostgreSQL: a job's claim in one round trip.
///
/// A claim reads the row, takes its project's advisory lock (shared for a
/// job that only reads the project, exclusive for one that writes it), then
/// updates the row unless a conflicting job of the project runs. Sent as
/// separate statements that is five round trips (`BEGIN`, read, lock,
/// update, `COMMIT`), most of a short job's time on the control plane. In
/// one PL/pgSQL function it is one, and still correct: each statement of a
/// volatile function takes a fresh snapshot, so the update's `NOT EXISTS`
/// sees every claim committed before the lock was granted.
///
/// The claim's commit does not wait for the disk: see the function.
///
/// SQLite runs one writer at a time and needs none of this.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager.get_connection().execute_unprepared(CLAIM).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared(
                "DROP FUNCTION IF EXISTS supascale_claim(TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ, TEXT[])",
            )
            .await?;
        Ok(())
    }
}

/// `supascale_claim(job, worker, now, stale_before, exclusive_kinds)`:
/// the claimed row, or no row (then the caller looks for the reason).
/// The rules are those of `store::claim` on SQLite; keep them in step.
/// Replaced by migration 000007 (which adds the independent kinds).
const CLAIM: &str = r#"
CREATE OR REPLACE FUNCTION supascale_claim(
    p_job TEXT, p_worker TEXT, p_now TIMESTAMPTZ, p_stale TIMESTAMPTZ, p_exclusive TEXT[])
RETURNS SETOF jobs
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    target jobs%ROWTYPE;
    writes BOOLEAN;
BEGIN
    -- A claim lost in a crash of this server leaves the job pending, to be
    -- run again: it need not wait for the disk (the job's end does).
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT * INTO target FROM jobs WHERE id = p_job;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    writes := target.kind = ANY(p_exclusive);
    IF target.project_id IS NOT NULL THEN
        IF writes THEN
            PERFORM pg_advisory_xact_lock(hashtext('supascale-project:' || target.project_id));
        ELSE
            PERFORM pg_advisory_xact_lock_shared(hashtext('supascale-project:' || target.project_id));
        END IF;
    END IF;
    RETURN QUERY
    UPDATE jobs SET
        status = 'in_progress',
        attempt = jobs.attempt + 1,
        worker_id = p_worker,
        started_at = COALESCE(jobs.started_at, p_now),
        heartbeat_at = p_now,
        run_after = NULL
    WHERE jobs.id = p_job
      AND ((jobs.status = 'pending' AND (jobs.run_after IS NULL OR jobs.run_after <= p_now))
           OR (jobs.status = 'in_progress' AND jobs.heartbeat_at < p_stale))
      AND (target.project_id IS NULL OR NOT EXISTS (
            SELECT 1 FROM jobs other
            WHERE other.project_id = target.project_id
              AND other.status = 'in_progress'
              AND other.heartbeat_at >= p_stale
              AND other.id <> p_job
              AND (writes OR other.kind = ANY(p_exclusive))))
    RETURNING jobs.*;
END
$fn$;
"#;
