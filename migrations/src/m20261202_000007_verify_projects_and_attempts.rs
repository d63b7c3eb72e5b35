use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Verify jobs carry their backup's project, so that a key limited to
/// other projects cannot see or cancel them (they were written without
/// one). Rows written before get the project of the backup their payload
/// names; a verify job whose backup is gone keeps none and stays visible
/// only to keys that see every project.
///
/// A job whose worker died during its last attempt is no longer taken
/// over as one more attempt (the caller fails it, see `store::Claim::Lost`),
/// so `attempt` never passes `max_attempts`; rows that did are brought back
/// to it.
///
/// On PostgreSQL the claim learns the kinds that carry a project without
/// being bound by it (`INDEPENDENT_KINDS`: a verification reads only the
/// artifact, so it neither waits for a restore of the project nor holds
/// one up). The function's rules are those of `store::claim` on SQLite;
/// keep them in step.
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backup_id = match manager.get_database_backend() {
            DbBackend::Postgres => "(jobs.payload::jsonb ->> 'backupId')",
            _ => "json_extract(jobs.payload, '$.backupId')",
        };
        db.execute_unprepared(&format!(
            "UPDATE jobs SET project_id = \
                 (SELECT b.project_id FROM backups b WHERE b.id = {backup_id}) \
             WHERE kind = 'verify' AND project_id IS NULL"
        ))
        .await?;
        // A takeover used to count as one more attempt even after the last
        // one (`attempt: 4` of 3); the claim no longer counts it.
        db.execute_unprepared(
            "UPDATE jobs SET attempt = max_attempts WHERE attempt > max_attempts",
        )
        .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(CLAIM).await?;
            db.execute_unprepared(
                "DROP FUNCTION IF EXISTS \
                 supascale_claim(TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ, TEXT[])",
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared(
                    "DROP FUNCTION IF EXISTS \
                     supascale_claim(TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ, TEXT[], TEXT[])",
                )
                .await?;
        }
        Ok(())
    }
}

/// `supascale_claim(job, worker, now, stale_before, exclusive_kinds,
/// independent_kinds)`: the claimed row, or no row (then the caller looks
/// for the reason). See migration 000006 for why it is one function.
const CLAIM: &str = r#"
CREATE OR REPLACE FUNCTION supascale_claim(
    p_job TEXT, p_worker TEXT, p_now TIMESTAMPTZ, p_stale TIMESTAMPTZ, p_exclusive TEXT[],
    p_independent TEXT[])
RETURNS SETOF jobs
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    target jobs%ROWTYPE;
    writes BOOLEAN;
    bound BOOLEAN;
BEGIN
    -- A claim lost in a crash of this server leaves the job pending, to be
    -- run again: it need not wait for the disk (the job's end does).
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT * INTO target FROM jobs WHERE id = p_job;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    writes := target.kind = ANY(p_exclusive);
    bound := target.project_id IS NOT NULL AND NOT (target.kind = ANY(p_independent));
    IF bound THEN
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
           OR (jobs.status = 'in_progress' AND jobs.heartbeat_at < p_stale
               AND jobs.attempt < jobs.max_attempts))
      AND (NOT bound OR NOT EXISTS (
            SELECT 1 FROM jobs other
            WHERE other.project_id = target.project_id
              AND other.status = 'in_progress'
              AND other.heartbeat_at >= p_stale
              AND other.id <> p_job
              AND NOT (other.kind = ANY(p_independent))
              AND (writes OR other.kind = ANY(p_exclusive))))
    RETURNING jobs.*;
END
$fn$;
"#;
