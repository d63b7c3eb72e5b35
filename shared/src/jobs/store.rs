//! The job row's lifecycle. Every change is one conditional UPDATE, so two
//! workers that receive the same envelope cannot both run it.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query, SelectStatement, UpdateStatement};
use sea_orm::{
    ActiveModelBehavior, ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait,
    DatabaseConnection, DbBackend, DbErr, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, Statement, TransactionTrait, TryIntoModel,
};

use super::{
    JobKind, STALE_AFTER, STATUS_COMPLETED, STATUS_FAILED, STATUS_IN_PROGRESS, STATUS_PENDING,
};
use crate::entities::job;

pub use super::now;

/// A new `pending` row.
pub fn new_job(
    kind: JobKind,
    project_id: Option<&str>,
    payload: serde_json::Value,
    max_attempts: i32,
) -> job::ActiveModel {
    job::ActiveModel {
        id: Set(format!("job-{}", uuid::Uuid::now_v7().simple())),
        kind: Set(kind.as_str().to_string()),
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

/// A condition that holds for every row and makes its statement's commit
/// not wait for the disk (PostgreSQL; nothing elsewhere). For the writes of
/// a running job: its end commits durably after them, and the write-ahead
/// log is written in order, so that commit makes them durable too; a crash
/// of the server before it leaves the job to be taken over and run again.
pub fn relaxed_commit(backend: DbBackend) -> Option<sea_orm::sea_query::SimpleExpr> {
    (backend == DbBackend::Postgres)
        .then(|| Expr::cust("set_config('synchronous_commit', 'off', true) = 'off'"))
}

/// What a delivery found.
pub enum Claim {
    /// The job is this worker's now.
    Taken(job::Model),
    /// Its worker died during its last attempt: it is this worker's now,
    /// to be failed without another attempt (so `attempt` never passes
    /// `max_attempts`).
    Lost(job::Model),
    /// Another job of the same project must end first (see
    /// [`JobKind::is_exclusive`]); the row is untouched.
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
/// time, and on PostgreSQL (the `supascale_claim` function) every claim
/// for a project first takes that project's advisory lock (shared for a
/// backup, exclusive for a job that writes the project), so the
/// `NOT EXISTS` of one conflicting claim sees the other.
pub async fn claim(db: &DatabaseConnection, job_id: &str, worker: &str) -> Result<Claim, DbErr> {
    if db.get_database_backend() == DbBackend::Postgres {
        return claim_postgres(db, job_id, worker).await;
    }
    let Some(row) = job::Entity::find_by_id(job_id.to_string()).one(db).await? else {
        return Ok(Claim::NotNow);
    };
    let now = now();
    let stale = now - chrono::Duration::from_std(STALE_AFTER).expect("small duration");
    let txn = db.begin().await?;
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
                    .and(job::Column::HeartbeatAt.lt(stale))
                    .and(Expr::col(job::Column::Attempt).lt(Expr::col(job::Column::MaxAttempts)))),
        );
    if let Some(project) = bound_project(&row) {
        update = update.filter(Expr::not_exists(conflicting(&row, project, now)));
    }
    let taken = update.exec_with_returning(&txn).await?.pop();
    let claim = match taken {
        Some(job) => Claim::Taken(job),
        None => not_taken(&txn, &row, worker, now).await?,
    };
    txn.commit().await?;
    Ok(claim)
}

/// Why `row` was not taken: `Lost` when its worker died during its last
/// attempt (then it is taken, to be failed), `Busy` with the running job
/// it must wait for, or `NotNow`.
async fn not_taken(
    db: &impl ConnectionTrait,
    row: &job::Model,
    worker: &str,
    now: DateTime<Utc>,
) -> Result<Claim, DbErr> {
    let stale = now - chrono::Duration::from_std(STALE_AFTER).expect("small duration");
    if row.status == STATUS_IN_PROGRESS && row.attempt >= row.max_attempts {
        let lost = job::Entity::update_many()
            .col_expr(job::Column::WorkerId, Expr::value(worker))
            .col_expr(job::Column::HeartbeatAt, Expr::value(now))
            .filter(job::Column::Id.eq(row.id.clone()))
            .filter(job::Column::Status.eq(STATUS_IN_PROGRESS))
            .filter(job::Column::HeartbeatAt.lt(stale))
            .exec_with_returning(db)
            .await?
            .pop();
        if let Some(lost) = lost {
            return Ok(Claim::Lost(lost));
        }
    }
    let blocker = match (bound_project(row), row.status == STATUS_PENDING) {
        (Some(project), true) => {
            job::Entity::find()
                .filter(job::Column::Id.in_subquery(conflicting(row, project, now)))
                .one(db)
                .await?
        }
        _ => None,
    };
    Ok(blocker.map_or(Claim::NotNow, |blocker| Claim::Busy { blocker }))
}

/// PostgreSQL: the same rules in one round trip (the `supascale_claim`
/// function, migration 000006). Only a job that is not taken costs more:
/// the reason is looked up then.
async fn claim_postgres(
    db: &DatabaseConnection,
    job_id: &str,
    worker: &str,
) -> Result<Claim, DbErr> {
    let now = now();
    let stale = now - chrono::Duration::from_std(STALE_AFTER).expect("small duration");
    let taken = job::Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT * FROM supascale_claim($1, $2, $3, $4, string_to_array($5, ','), \
             string_to_array($6, ','))",
            [
                job_id.into(),
                worker.into(),
                now.into(),
                stale.into(),
                JobKind::names(JobKind::is_exclusive).join(",").into(),
                JobKind::names(JobKind::is_independent).join(",").into(),
            ],
        ))
        .one(db)
        .await?;
    if let Some(job) = taken {
        return Ok(Claim::Taken(job));
    }
    match job::Entity::find_by_id(job_id.to_string()).one(db).await? {
        Some(row) => not_taken(db, &row, worker, now).await,
        None => Ok(Claim::NotNow),
    }
}

/// The kind a row names (`None` for one this build does not know: the
/// worker fails such a job, see `worker::run_kind`).
fn kind_of(row: &job::Model) -> Option<JobKind> {
    row.kind.parse().ok()
}

/// The project whose other jobs `row` must not run beside, if any.
fn bound_project(row: &job::Model) -> Option<&str> {
    row.project_id
        .as_deref()
        .filter(|_| !kind_of(row).is_some_and(JobKind::is_independent))
}

/// The running jobs of `project` that `row` may not run beside: any job
/// when `row` writes the project, the writing jobs when it only reads;
/// never an independent one (see [`JobKind::is_independent`]).
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
        .and_where(Expr::col((other.clone(), job::Column::Id)).ne(row.id.as_str()))
        .and_where(
            Expr::col((other.clone(), job::Column::Kind))
                .is_not_in(JobKind::names(JobKind::is_independent)),
        );
    if !kind_of(row).is_some_and(JobKind::is_exclusive) {
        select.and_where(
            Expr::col((other.clone(), job::Column::Kind))
                .is_in(JobKind::names(JobKind::is_exclusive)),
        );
    }
    select
}

/// Marks what a job that waits behind another job of its project has in
/// its `progress` (see the worker's `wait_behind`).
pub const WAITING_STEP: &str = "waiting";

/// A `LIKE` pattern that matches the `progress` of a waiting job.
fn waiting_progress() -> String {
    format!("%\"step\":\"{WAITING_STEP}\"%")
}

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
        .filter(job::Column::Progress.like(waiting_progress()))
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
/// Returns 1, or 0 when the job is no longer `worker`'s.
async fn finish(
    db: &impl ConnectionTrait,
    job_id: &str,
    worker: &str,
    failure: Option<&super::JobError>,
) -> Result<u64, DbErr> {
    let error = failure.map(|e| e.to_string());
    let error = error.as_deref();
    let error_kind = error_kind(failure);
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
        .map(|r| r.rows_affected)
}

/// `jobs.error_kind` of a failure: `invalid_input` when the caller's
/// input was at fault (the waiting request answers 400, not 500).
fn error_kind(failure: Option<&super::JobError>) -> Option<&'static str> {
    match failure {
        Some(e) if e.outcome() == super::Outcome::InvalidInput => {
            Some(super::ERROR_KIND_INVALID_INPUT)
        }
        _ => None,
    }
}

/// Fails the row a job works for (its backup, its restore) when the job
/// ended without its module having ended that row: cancelled before it
/// started, its worker gone on the last attempt, never queued.
pub async fn fail_owned_row(
    db: &impl ConnectionTrait,
    job: &job::Model,
    cause: &str,
) -> Result<(), DbErr> {
    if let Some(update) = owned_row_failure(job, cause) {
        db.execute(&update).await?;
    }
    fail_open_copies(db, job, cause).await
}

/// Fails the copies a job was to make and did not finish (a backup's
/// `copyTo` when the backup job ended early, a copy job that died).
pub async fn fail_open_copies(
    db: &impl ConnectionTrait,
    job: &job::Model,
    cause: &str,
) -> Result<(), DbErr> {
    db.execute(&open_copies_failure(job, cause)).await.map(drop)
}

fn open_copies_failure(job: &job::Model, cause: &str) -> UpdateStatement {
    use crate::entities::backup_copy;
    backup_copy::Entity::update_many()
        .col_expr(backup_copy::Column::Status, Expr::value(STATUS_FAILED))
        .col_expr(backup_copy::Column::Error, Expr::value(cause))
        .filter(backup_copy::Column::JobId.eq(job.id.clone()))
        .filter(backup_copy::Column::Status.is_in([STATUS_PENDING, STATUS_IN_PROGRESS]))
        .into_query()
}

/// The write of [`fail_owned_row`], for a job's end to make (`None` for a
/// kind without a row of its own).
pub fn owned_row_failure(job: &job::Model, cause: &str) -> Option<UpdateStatement> {
    use crate::entities::{backup, restore};
    let open = [STATUS_PENDING, STATUS_IN_PROGRESS];
    match kind_of(job)? {
        JobKind::Backup => Some(
            backup::Entity::update_many()
                .col_expr(backup::Column::Status, Expr::value(STATUS_FAILED))
                .col_expr(backup::Column::Error, Expr::value(cause))
                .filter(backup::Column::JobId.eq(job.id.clone()))
                .filter(backup::Column::Status.is_in(open))
                .into_query(),
        ),
        JobKind::Restore => Some(
            restore::Entity::update_many()
                .col_expr(restore::Column::Status, Expr::value(STATUS_FAILED))
                .col_expr(restore::Column::Error, Expr::value(cause))
                .filter(restore::Column::JobId.eq(job.id.clone()))
                .filter(restore::Column::Status.is_in(open))
                .into_query(),
        ),
        JobKind::Copy => Some(open_copies_failure(job, cause)),
        _ => None,
    }
}

/// Hands a job back for another attempt after `wait`, keeping the cause.
async fn release(
    db: &impl ConnectionTrait,
    job_id: &str,
    worker: &str,
    error: &str,
    wait: std::time::Duration,
) -> Result<u64, DbErr> {
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
        .map(|r| r.rows_affected)
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

/// How a job's attempt ends.
pub enum Ending<'a> {
    /// `completed`, or `failed` with the error. Its secrets go.
    Finish(Option<&'a super::JobError>),
    /// `pending` again after `wait`, keeping the cause.
    Release {
        error: &'a str,
        wait: std::time::Duration,
    },
}

/// What ending a job did.
pub struct Ended {
    /// False when the job was no longer this worker's (taken over after
    /// its heartbeat went stale): nothing was written.
    pub ours: bool,
    /// The project's jobs that waited behind this one and are due now
    /// (to be delivered again).
    pub woken: Vec<String>,
}

/// Ends the attempt, writes its last events (`batch`) and, for a job that
/// finished (not one released for another attempt), its `result` write
/// (see the worker's `Reporter::record_with_end`),
/// and makes the project's waiting jobs due, in one commit: on PostgreSQL
/// one statement, since this is on every job's path. The events and the
/// result are written only if the job was still `worker`'s.
pub async fn end_job(
    db: &DatabaseConnection,
    job: &job::Model,
    worker: &str,
    ending: Ending<'_>,
    batch: &super::events::Batch,
    result: Option<UpdateStatement>,
) -> Result<Ended, DbErr> {
    let result = result.filter(|_| matches!(ending, Ending::Finish(_)));
    if db.get_database_backend() == DbBackend::Postgres {
        return end_job_postgres(db, job, worker, ending, batch, result).await;
    }
    let txn = db.begin().await?;
    let ours = match ending {
        Ending::Finish(failure) => finish(&txn, &job.id, worker, failure).await?,
        Ending::Release { error, wait } => release(&txn, &job.id, worker, error, wait).await?,
    } > 0;
    let mut woken = Vec::new();
    if ours {
        if let Some(result) = &result {
            txn.execute(result).await?;
        }
        super::events::append_sqlite(&txn, txn.get_database_backend(), &job.id, batch).await?;
        if let Some(project) = &job.project_id {
            woken = wake_waiting(&txn, project).await?;
        }
    }
    txn.commit().await?;
    Ok(Ended { ours, woken })
}

async fn end_job_postgres(
    db: &DatabaseConnection,
    job: &job::Model,
    worker: &str,
    ending: Ending<'_>,
    batch: &super::events::Batch,
    result: Option<UpdateStatement>,
) -> Result<Ended, DbErr> {
    let now = now();
    let (status, error, error_kind, run_after) = match ending {
        Ending::Finish(failure) => (
            if failure.is_some() {
                STATUS_FAILED
            } else {
                STATUS_COMPLETED
            },
            failure.map(|e| e.to_string()),
            error_kind(failure),
            None,
        ),
        Ending::Release { error, wait } => (
            STATUS_PENDING,
            Some(error.to_string()),
            None,
            Some(now + chrono::Duration::from_std(wait).expect("small duration")),
        ),
    };
    // `fin` ends the row if it is still ours; the events, the result and
    // the wake-up (`woke`: the rules of `wake_waiting`) hang on it. A
    // released job keeps its secrets and `finished_at`.
    let mut values: Vec<sea_orm::Value> = vec![
        job.id.clone().into(),
        batch.events_json().into(),
        now.into(),
        status.into(),
        error.into(),
        error_kind.into(),
        run_after.into(),
        worker.into(),
        batch.progress.clone().into(),
        batch.warnings.clone().into(),
        waiting_progress().into(),
    ];
    let recorded = match result {
        Some(mut update) => {
            update.and_where(Expr::exists(
                Query::select()
                    .expr(Expr::val(1))
                    .from(Alias::new("fin"))
                    .to_owned(),
            ));
            let built = DbBackend::Postgres.build(&update);
            let sql = shift_placeholders(&built.sql, values.len());
            values.extend(built.values.map(|v| v.0).unwrap_or_default());
            format!("recorded AS ({sql}), ")
        }
        None => String::new(),
    };
    let sql = format!(
        "WITH fin AS (UPDATE jobs SET \
             status = $4, error = $5, error_kind = $6, run_after = $7, \
             finished_at = CASE WHEN $4 = '{STATUS_PENDING}' THEN finished_at ELSE $3 END, \
             secrets_enc = CASE WHEN $4 = '{STATUS_PENDING}' THEN secrets_enc END, \
             worker_id = CASE WHEN $4 = '{STATUS_PENDING}' THEN NULL ELSE worker_id END, \
             progress = COALESCE($9::text, progress), \
             warnings = COALESCE($10::text, warnings) \
             WHERE id = $1 AND worker_id = $8 RETURNING id, project_id), \
         {recorded}{}, \
         woke AS (UPDATE jobs w SET run_after = $3 \
             WHERE w.status = '{STATUS_PENDING}' AND w.id IN ( \
                 SELECT o.id FROM jobs o, fin \
                 WHERE o.project_id = fin.project_id AND o.status = '{STATUS_PENDING}' \
                   AND o.run_after IS NOT NULL AND o.progress LIKE $11 \
                 ORDER BY o.enqueued_at LIMIT 50) \
             RETURNING w.id) \
         SELECT (SELECT COUNT(*) FROM fin), (SELECT string_agg(id, ' ') FROM woke)",
        super::events::insert_events_cte(2, ", fin")
    );
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?
        .ok_or(DbErr::RecordNotUpdated)?;
    let ours: i64 = row.try_get_by_index(0)?;
    let woken: Option<String> = row.try_get_by_index(1)?;
    Ok(Ended {
        ours: ours > 0,
        woken: woken
            .map(|ids| ids.split(' ').map(str::to_string).collect())
            .unwrap_or_default(),
    })
}

/// Writes a new job and the row it works for (its backup, its restore) in
/// one commit; on PostgreSQL in one statement, since this is on every
/// request that starts a job. Returns both as written.
pub async fn insert_with_row<A>(
    db: &DatabaseConnection,
    job: job::ActiveModel,
    row: A,
) -> Result<(job::Model, <A::Entity as EntityTrait>::Model), DbErr>
where
    A: ActiveModelTrait
        + ActiveModelBehavior
        + Send
        + TryIntoModel<<A::Entity as EntityTrait>::Model>,
    <A::Entity as EntityTrait>::Model: IntoActiveModel<A>,
{
    if db.get_database_backend() != DbBackend::Postgres {
        let txn = db.begin().await?;
        let job = job.insert(&txn).await?;
        let row = row.insert(&txn).await?;
        txn.commit().await?;
        return Ok((job, row));
    }
    let job_model = job.clone().try_into_model()?;
    let row_model = row.clone().try_into_model()?;
    let first = job::Entity::insert(job).build(DbBackend::Postgres);
    let second = <A::Entity as EntityTrait>::insert(row).build(DbBackend::Postgres);
    let mut values = first.values.map(|v| v.0).unwrap_or_default();
    let sql = format!(
        "WITH job AS ({}) {}",
        first.sql,
        shift_placeholders(&second.sql, values.len())
    );
    values.extend(second.values.map(|v| v.0).unwrap_or_default());
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
    .await?;
    Ok((job_model, row_model))
}

/// Ends a job that no worker holds (still `pending`): `failed` with
/// `cause`, its secrets dropped; `cancelled` also records that it was
/// asked to stop. `false` when it was no longer pending (a worker took it
/// or it ended meanwhile): then nothing changed.
pub async fn fail_pending(
    db: &impl ConnectionTrait,
    job_id: &str,
    cause: &str,
    cancelled: bool,
) -> Result<bool, DbErr> {
    let mut update = job::Entity::update_many()
        .col_expr(job::Column::Status, Expr::value(STATUS_FAILED))
        .col_expr(job::Column::Error, Expr::value(cause))
        .col_expr(job::Column::FinishedAt, Expr::value(now()))
        .col_expr(job::Column::SecretsEnc, Expr::value(Option::<String>::None));
    if cancelled {
        update = update.col_expr(job::Column::CancelRequested, Expr::value(true));
    }
    let ended = update
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::Status.eq(STATUS_PENDING))
        .exec(db)
        .await?;
    Ok(ended.rows_affected == 1)
}

/// Asks the worker running `job_id` to stop (it looks at every heartbeat).
pub async fn request_cancel(db: &impl ConnectionTrait, job_id: &str) -> Result<(), DbErr> {
    job::Entity::update_many()
        .col_expr(job::Column::CancelRequested, Expr::value(true))
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::Status.eq(STATUS_IN_PROGRESS))
        .exec(db)
        .await?;
    Ok(())
}

/// `$1 … $n` of a PostgreSQL statement as `$(1 + by) … $(n + by)`, for
/// a statement that follows another's parameters. Our statements carry
/// every value as a parameter, so a `$` is always a placeholder.
pub fn shift_placeholders(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&digits),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::shift_placeholders;

    #[test]
    fn placeholders_shift_past_the_first_statement() {
        assert_eq!(
            shift_placeholders("INSERT INTO b (x, y) VALUES ($1, $10) WHERE a = $2", 12),
            "INSERT INTO b (x, y) VALUES ($13, $22) WHERE a = $14"
        );
    }
}
