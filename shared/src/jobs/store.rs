//! The job row's lifecycle. Every change is one conditional UPDATE, so two
//! workers that receive the same envelope cannot both run it.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};

use super::{STALE_AFTER, STATUS_COMPLETED, STATUS_FAILED, STATUS_IN_PROGRESS, STATUS_PENDING};
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
        worker_id: Set(None),
        idempotency_key: Set(None),
        enqueued_at: Set(now()),
        started_at: Set(None),
        finished_at: Set(None),
        heartbeat_at: Set(None),
    }
}

/// Takes the job for `worker`: a `pending` row, or an `in_progress` one
/// whose worker stopped beating. `None` when it is not there to take.
pub async fn claim(
    db: &impl ConnectionTrait,
    job_id: &str,
    worker: &str,
) -> Result<Option<job::Model>, DbErr> {
    let now = now();
    let stale = now - chrono::Duration::from_std(STALE_AFTER).expect("small duration");
    let result = job::Entity::update_many()
        .col_expr(job::Column::Status, Expr::value(STATUS_IN_PROGRESS))
        .col_expr(job::Column::Attempt, Expr::col(job::Column::Attempt).add(1))
        .col_expr(job::Column::WorkerId, Expr::value(worker))
        .col_expr(
            job::Column::StartedAt,
            Expr::col(job::Column::StartedAt).if_null(now),
        )
        .col_expr(job::Column::HeartbeatAt, Expr::value(now))
        .filter(job::Column::Id.eq(job_id))
        .filter(
            job::Column::Status
                .eq(STATUS_PENDING)
                .or(job::Column::Status
                    .eq(STATUS_IN_PROGRESS)
                    .and(job::Column::HeartbeatAt.lt(stale))),
        )
        .exec(db)
        .await?;
    if result.rows_affected == 0 {
        return Ok(None);
    }
    job::Entity::find_by_id(job_id.to_string()).one(db).await
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

/// Ends the job: `completed`, or `failed` with `error`. Its secrets go.
pub async fn finish(
    db: &impl ConnectionTrait,
    job_id: &str,
    worker: &str,
    error: Option<&str>,
) -> Result<(), DbErr> {
    job::Entity::update_many()
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

/// Hands a job back for another attempt, keeping the cause.
pub async fn release(
    db: &impl ConnectionTrait,
    job_id: &str,
    worker: &str,
    error: &str,
) -> Result<(), DbErr> {
    job::Entity::update_many()
        .col_expr(job::Column::Status, Expr::value(STATUS_PENDING))
        .col_expr(job::Column::Error, Expr::value(error))
        .col_expr(job::Column::WorkerId, Expr::value(Option::<String>::None))
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::WorkerId.eq(worker))
        .exec(db)
        .await
        .map(|_| ())
}
