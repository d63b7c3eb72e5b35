//! The job row's lifecycle. Every change is one conditional UPDATE, so two
//! workers that receive the same envelope cannot both run it.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query, SelectStatement};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};

use super::{
    EXCLUSIVE_KINDS, STALE_AFTER, STATUS_COMPLETED, STATUS_FAILED, STATUS_IN_PROGRESS,
    STATUS_PENDING,
};
use crate::entities::job;

pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A new `pending` row.
pub fn new_job(
    kind: &str,
    project_id: Option<&str>,
    payload: serde_json::Value,
    max_attempts: i32,
) -> job::ActiveModel {
    job::ActiveModel {
        id: Set(format!("job-{}", uuid::Uuid::now_v7().simple())),
        kind: Set(kind.to_string()),
        project_id: Set(project_id.map(str::to_string)),
        status: Set(STATUS_PENDING.into()),
        attempt: Set(0),
        max_attempts: Set(max_attempts),
        payload: Set(payload.to_string()),
        secrets_enc: Set(None),
        progress: Set(None),
        warnings: Set("[]".into()),
        error: Set(None),
        error_kind: Set(None),
        result: Set(None),
        worker_id: Set(None),
        idempotency_key: Set(None),
        request_hash: Set(None),
        cancel_requested: Set(false),
        run_after: Set(None),
        enqueued_at: Set(now()),
        started_at: Set(None),
        finished_at: Set(None),
        heartbeat_at: Set(None),
    }
}

/// What a delivery found.
pub enum Claim {
    /// The job is this worker's now.
    Taken(job::Model),
    /// Another job of the same project must end first (see
    /// [`super::EXCLUSIVE_KINDS`]); the row is untouched.
    Busy { blocker: job::Model },
    /// Finished, running elsewhere with a live heartbeat, cancelled, or
    /// waiting for its backoff: nothing to do.
    NotNow,
}

/// Takes the job for `worker`: a `pending` row (past its backoff), or an
/// `in_progress` one whose worker stopped beating, provided no job of the
/// same project that conflicts with it is running.
///
/// One UPDATE decides, so two workers cannot both take a job, nor two
/// conflicting jobs of a project both start: SQLite runs one writer at a
/// time, and on PostgreSQL every claim for a project first takes that
/// project's advisory lock (shared for a backup, exclusive for a job that
/// writes the project), so the `NOT EXISTS` of one conflicting claim sees
/// the other.
pub async fn claim(db: &DatabaseConnection, job_id: &str, worker: &str) -> Result<Claim, DbErr> {
    let Some(row) = job::Entity::find_by_id(job_id.to_string()).one(db).await? else {
        return Ok(Claim::NotNow);
    };
    let now = now();
    let stale = now - chrono::Duration::from_std(STALE_AFTER).expect("small duration");
    let txn = db.begin().await?;
    if let (Some(project), DbBackend::Postgres) = (&row.project_id, txn.get_database_backend()) {
        // Readers share the lock (backups of one project never wait for
        // each other to be claimed); a writer's claim excludes all others.
        let lock = if EXCLUSIVE_KINDS.contains(&row.kind.as_str()) {
            "SELECT pg_advisory_xact_lock(hashtext($1))"
        } else {
            "SELECT pg_advisory_xact_lock_shared(hashtext($1))"
        };
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            lock,
            [format!("supascale-project:{project}").into()],
        ))
        .await?;
    }
    let mut update = job::Entity::update_many()
        .col_expr(job::Column::Status, Expr::value(STATUS_IN_PROGRESS))
        .col_expr(job::Column::Attempt, Expr::col(job::Column::Attempt).add(1))
        .col_expr(job::Column::WorkerId, Expr::value(worker))
        .col_expr(
            job::Column::StartedAt,
            Expr::col(job::Column::StartedAt).if_null(now),
        )
        .col_expr(job::Column::HeartbeatAt, Expr::value(now))
        // A running job has no delivery date; this keeps the index of
        // waiting jobs (`jobs_waiting_idx`) to the few that really wait.
        .col_expr(
            job::Column::RunAfter,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(job::Column::Id.eq(job_id))
        .filter(
            job::Column::Status
                .eq(STATUS_PENDING)
                .and(
                    job::Column::RunAfter
                        .is_null()
                        .or(job::Column::RunAfter.lte(now)),
                )
                .or(job::Column::Status
                    .eq(STATUS_IN_PROGRESS)
                    .and(job::Column::HeartbeatAt.lt(stale))),
        );
    if let Some(project) = &row.project_id {
        update = update.filter(Expr::not_exists(conflicting(&row, project, now)));
    }
    let taken = update.exec_with_returning(&txn).await?.pop();
    if taken.is_none() {
        let blocker = match &row.project_id {
            Some(project) => {
                let ids: Vec<String> = job::Entity::find()
                    .select_only()
                    .column(job::Column::Id)
                    .filter(job::Column::Id.in_subquery(conflicting(&row, project, now)))
                    .into_tuple()
                    .all(&txn)
                    .await?;
                match ids.first() {
                    Some(id) => job::Entity::find_by_id(id.clone()).one(&txn).await?,
                    None => None,
                }
            }
            None => None,
        };
        txn.commit().await?;
        return Ok(match blocker {
            Some(blocker) if row.status == STATUS_PENDING => Claim::Busy { blocker },
            _ => Claim::NotNow,
        });
    }
    txn.commit().await?;
    Ok(taken.map(Claim::Taken).unwrap_or(Claim::NotNow))
}

/// The running jobs of `project` that `row` may not run beside: any job
/// when `row` writes the project, the writing jobs when it only reads.
fn conflicting(row: &job::Model, project: &str, now: DateTime<Utc>) -> SelectStatement {
    let stale = now - chrono::Duration::from_std(STALE_AFTER).expect("small duration");
    let other = Alias::new("other");
    let mut select = Query::select();
    select
        .column((other.clone(), job::Column::Id))
        .from_as(job::Entity, other.clone())
        .and_where(Expr::col((other.clone(), job::Column::ProjectId)).eq(project))
        .and_where(Expr::col((other.clone(), job::Column::Status)).eq(STATUS_IN_PROGRESS))
        .and_where(Expr::col((other.clone(), job::Column::HeartbeatAt)).gte(stale))
        .and_where(Expr::col((other.clone(), job::Column::Id)).ne(row.id.as_str()));
    if !EXCLUSIVE_KINDS.contains(&row.kind.as_str()) {
        select.and_where(
            Expr::col((other.clone(), job::Column::Kind)).is_in(EXCLUSIVE_KINDS.iter().copied()),
        );
    }
    select
}

/// Marks what a job that waits behind another job of its project has in
/// its `progress` (see the worker's `wait_behind`).
pub const WAITING_STEP: &str = "waiting";

/// Makes the jobs of `project` that wait behind another job due now, and
/// returns them (to be delivered again): called when a job of the project
/// ends. Other pending jobs are left alone; they are in the queue already.
pub async fn wake_waiting(db: &impl ConnectionTrait, project: &str) -> Result<Vec<String>, DbErr> {
    let ids: Vec<String> = job::Entity::find()
        .select_only()
        .column(job::Column::Id)
        .filter(job::Column::ProjectId.eq(project))
        .filter(job::Column::Status.eq(STATUS_PENDING))
        // Every waiting job has a delivery date (see `jobs_waiting_idx`):
        // without this, each ending job would read all of its project's
        // pending jobs.
        .filter(job::Column::RunAfter.is_not_null())
        .filter(job::Column::Progress.like(format!("%\"step\":\"{WAITING_STEP}\"%")))
        .order_by_asc(job::Column::EnqueuedAt)
        .limit(50)
        .into_tuple()
        .all(db)
        .await?;
    if !ids.is_empty() {
        job::Entity::update_many()
            .col_expr(job::Column::RunAfter, Expr::value(now()))
            .filter(job::Column::Id.is_in(ids.clone()))
            .filter(job::Column::Status.eq(STATUS_PENDING))
            .exec(db)
            .await?;
    }
    Ok(ids)
}

/// Whether the job has been asked to stop.
pub async fn cancel_requested(db: &impl ConnectionTrait, job_id: &str) -> Result<bool, DbErr> {
    Ok(job::Entity::find()
        .select_only()
        .column(job::Column::CancelRequested)
        .filter(job::Column::Id.eq(job_id))
        .into_tuple::<bool>()
        .one(db)
        .await?
        .unwrap_or(false))
}

pub async fn heartbeat(db: &impl ConnectionTrait, job_id: &str, worker: &str) -> Result<(), DbErr> {
    job::Entity::update_many()
        .col_expr(job::Column::HeartbeatAt, Expr::value(now()))
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::WorkerId.eq(worker))
        .filter(job::Column::Status.eq(STATUS_IN_PROGRESS))
        .exec(db)
        .await
        .map(|_| ())
}

/// Records what a job found, for its waiting request and its `complete`
/// event.
pub async fn set_result(
    db: &impl ConnectionTrait,
    job_id: &str,
    result: &serde_json::Value,
) -> Result<(), DbErr> {
    job::Entity::update_many()
        .col_expr(job::Column::Result, Expr::value(result.to_string()))
        .filter(job::Column::Id.eq(job_id))
        .exec(db)
        .await
        .map(|_| ())
}

/// Ends the job: `completed`, or `failed` with `error`. Its secrets go.
pub async fn finish(
    db: &impl ConnectionTrait,
    job_id: &str,
    worker: &str,
    failure: Option<&super::JobError>,
) -> Result<(), DbErr> {
    let error = failure.map(|e| e.to_string());
    let error = error.as_deref();
    let error_kind = match failure {
        Some(super::JobError::Invalid(_)) => Some(super::ERROR_KIND_INVALID_INPUT),
        _ => None,
    };
    job::Entity::update_many()
        .col_expr(job::Column::ErrorKind, Expr::value(error_kind))
        .col_expr(
            job::Column::Status,
            Expr::value(if error.is_some() {
                STATUS_FAILED
            } else {
                STATUS_COMPLETED
            }),
        )
        .col_expr(job::Column::Error, Expr::value(error.map(str::to_string)))
        .col_expr(job::Column::FinishedAt, Expr::value(now()))
        .col_expr(job::Column::SecretsEnc, Expr::value(Option::<String>::None))
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::WorkerId.eq(worker))
        .exec(db)
        .await
        .map(|_| ())
}

/// Fails the row a job works for (its backup, its restore) when the job
/// ended without its module having ended that row: cancelled before it
/// started, its worker gone on the last attempt, never queued.
pub async fn fail_owned_row(
    db: &impl ConnectionTrait,
    job: &job::Model,
    cause: &str,
) -> Result<(), DbErr> {
    use crate::entities::{backup, restore};
    let open = [STATUS_PENDING, STATUS_IN_PROGRESS];
    match job.kind.as_str() {
        "backup" => {
            backup::Entity::update_many()
                .col_expr(backup::Column::Status, Expr::value(STATUS_FAILED))
                .col_expr(backup::Column::Error, Expr::value(cause))
                .filter(backup::Column::JobId.eq(job.id.clone()))
                .filter(backup::Column::Status.is_in(open))
                .exec(db)
                .await?;
        }
        "restore" => {
            restore::Entity::update_many()
                .col_expr(restore::Column::Status, Expr::value(STATUS_FAILED))
                .col_expr(restore::Column::Error, Expr::value(cause))
                .filter(restore::Column::JobId.eq(job.id.clone()))
                .filter(restore::Column::Status.is_in(open))
                .exec(db)
                .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Hands a job back for another attempt after `wait`, keeping the cause.
pub async fn release(
    db: &impl ConnectionTrait,
    job_id: &str,
    worker: &str,
    error: &str,
    wait: std::time::Duration,
) -> Result<(), DbErr> {
    let run_after = now() + chrono::Duration::from_std(wait).expect("small duration");
    job::Entity::update_many()
        .col_expr(job::Column::Status, Expr::value(STATUS_PENDING))
        .col_expr(job::Column::Error, Expr::value(error))
        .col_expr(job::Column::RunAfter, Expr::value(run_after))
        .col_expr(job::Column::WorkerId, Expr::value(Option::<String>::None))
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::WorkerId.eq(worker))
        .exec(db)
        .await
        .map(|_| ())
}

/// Gives back the jobs `worker` still holds as it stops: `pending` again,
/// due at once, the interrupted attempt not counted. Returns how many.
pub async fn hand_back(db: &impl ConnectionTrait, worker: &str) -> Result<u64, DbErr> {
    job::Entity::update_many()
        .col_expr(job::Column::Status, Expr::value(STATUS_PENDING))
        .col_expr(job::Column::Attempt, Expr::col(job::Column::Attempt).sub(1))
        .col_expr(job::Column::WorkerId, Expr::value(Option::<String>::None))
        .col_expr(job::Column::RunAfter, Expr::value(now()))
        .filter(job::Column::WorkerId.eq(worker))
        .filter(job::Column::Status.eq(STATUS_IN_PROGRESS))
        .exec(db)
        .await
        .map(|r| r.rows_affected)
}
