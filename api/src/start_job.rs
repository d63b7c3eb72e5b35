//! The one way a request starts a job: backups, restores, verifications and
//! every import go through [`start_job`].
//!
//! 1. The `Idempotency-Key` (if any) is looked up first: a key that already
//!    stands for a job answers with that job, whatever else the request says.
//! 2. The route's `prepare` runs its checks (4xx, nothing written) and builds
//!    the job row and the row of its own the job works for.
//! 3. Both are written in one commit (`jobs::store`); the job row is the
//!    record, so it exists before the queue entry.
//! 4. The job is pushed; a queue that cannot take it fails the job at once
//!    (503).
//! 5. The route's [`JobAnswer`] answers: the outcome once the job is over
//!    (waiting up to `SUPASCALE_JOB_WAIT_SECONDS` unless the client asked
//!    for `Prefer: respond-async` / `?async=true`), else 202.

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    TransactionTrait,
};
use supascale_shared::entities::{backup, backup_copy, job, restore};
use supascale_shared::jobs::{self, events};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::idempotency::Idempotency;
use crate::state::AppState;

/// How the client asked for the job: answered at once or waited for, and
/// the key that makes a retry safe.
pub struct StartRequest {
    pub wants_async: bool,
    pub idempotency: Option<Idempotency>,
}

impl StartRequest {
    /// From the request's `Prefer` header, `?async=` and `Idempotency-Key`;
    /// `fingerprint` says what the request asks for, defaults applied (the
    /// same key with another request is a 409).
    pub fn new(
        principal: &Principal,
        prefer: Option<&str>,
        run_async: Option<bool>,
        idempotency_key: Option<&str>,
        fingerprint: impl FnOnce() -> String,
    ) -> ApiResult<Self> {
        let idempotency = idempotency_key
            .map(|key| Idempotency::new(principal, key, &fingerprint()))
            .transpose()?;
        Ok(Self {
            wants_async: wants_async(prefer, run_async),
            idempotency,
        })
    }
}

/// Whether a job-starting request asked for 202 at once
/// (`Prefer: respond-async`, RFC 7240, or `?async=true`).
pub fn wants_async(prefer: Option<&str>, run_async: Option<bool>) -> bool {
    run_async.unwrap_or(false)
        || prefer.is_some_and(|p| {
            p.split(',')
                .any(|v| v.trim().eq_ignore_ascii_case("respond-async"))
        })
}

/// A job ready to be written, with the row of its own it works for.
pub struct NewJob<R> {
    pub job: job::ActiveModel,
    pub row: R,
    /// What to undo when the rows are not written (an upload already
    /// received for the job).
    pub undo: Option<BoxFuture<'static, ()>>,
}

impl<R> NewJob<R> {
    pub fn new(job: job::ActiveModel, row: R) -> Self {
        Self {
            job,
            row,
            undo: None,
        }
    }
}

/// The row a kind of job works for, written in the job's commit: a backup,
/// a restore, or nothing (`()`: verifications and imports keep their
/// outcome on the job row).
pub trait OwnRow: Send {
    type Model: Send;
    fn insert_with(
        self,
        db: &DatabaseConnection,
        job: job::ActiveModel,
    ) -> impl Future<Output = Result<(job::Model, Self::Model), DbErr>> + Send;
}

/// An own row that is a table of its own, found by its job and carrying
/// its own status.
pub trait OwnTable: OwnRow {
    /// The 404 when the row is gone.
    const MISSING: ApiError;
    fn find_for_job(
        db: &DatabaseConnection,
        job_id: &str,
    ) -> impl Future<Output = Result<Option<Self::Model>, DbErr>> + Send;
    fn status(row: &Self::Model) -> &str;
    /// Why it failed, when it did.
    fn error(row: &Self::Model) -> Option<&str>;
}

impl OwnRow for () {
    type Model = ();
    async fn insert_with(
        self,
        db: &DatabaseConnection,
        job: job::ActiveModel,
    ) -> Result<(job::Model, ()), DbErr> {
        Ok((job.insert(db).await?, ()))
    }
}

impl OwnRow for backup::ActiveModel {
    type Model = backup::Model;
    async fn insert_with(
        self,
        db: &DatabaseConnection,
        job: job::ActiveModel,
    ) -> Result<(job::Model, backup::Model), DbErr> {
        jobs::store::insert_with_row(db, job, self).await
    }
}

impl OwnTable for backup::ActiveModel {
    const MISSING: ApiError = ApiError::BackupNotFound;
    async fn find_for_job(
        db: &DatabaseConnection,
        job_id: &str,
    ) -> Result<Option<backup::Model>, DbErr> {
        backup::Entity::find()
            .filter(backup::Column::JobId.eq(job_id))
            .one(db)
            .await
    }
    fn status(row: &backup::Model) -> &str {
        &row.status
    }
    fn error(row: &backup::Model) -> Option<&str> {
        row.error.as_deref()
    }
}

/// A new backup with the copies its job makes once it is stored
/// (`copyTo`), all written in the job's commit.
pub struct NewBackup {
    pub backup: backup::ActiveModel,
    pub copies: Vec<backup_copy::ActiveModel>,
}

impl OwnRow for NewBackup {
    type Model = backup::Model;
    async fn insert_with(
        self,
        db: &DatabaseConnection,
        job: job::ActiveModel,
    ) -> Result<(job::Model, backup::Model), DbErr> {
        if self.copies.is_empty() {
            return self.backup.insert_with(db, job).await;
        }
        let txn = db.begin().await?;
        let job = job.insert(&txn).await?;
        let backup = self.backup.insert(&txn).await?;
        backup_copy::Entity::insert_many(self.copies)
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok((job, backup))
    }
}

impl OwnTable for NewBackup {
    const MISSING: ApiError = ApiError::BackupNotFound;
    async fn find_for_job(
        db: &DatabaseConnection,
        job_id: &str,
    ) -> Result<Option<backup::Model>, DbErr> {
        backup::ActiveModel::find_for_job(db, job_id).await
    }
    fn status(row: &backup::Model) -> &str {
        backup::ActiveModel::status(row)
    }
    fn error(row: &backup::Model) -> Option<&str> {
        backup::ActiveModel::error(row)
    }
}

/// A copy job's own row: the copy it makes.
impl OwnRow for backup_copy::ActiveModel {
    type Model = backup_copy::Model;
    async fn insert_with(
        self,
        db: &DatabaseConnection,
        job: job::ActiveModel,
    ) -> Result<(job::Model, backup_copy::Model), DbErr> {
        jobs::store::insert_with_row(db, job, self).await
    }
}

impl OwnTable for backup_copy::ActiveModel {
    const MISSING: ApiError = ApiError::BackupNotFound;
    async fn find_for_job(
        db: &DatabaseConnection,
        job_id: &str,
    ) -> Result<Option<backup_copy::Model>, DbErr> {
        backup_copy::Entity::find()
            .filter(backup_copy::Column::JobId.eq(job_id))
            .one(db)
            .await
    }
    fn status(row: &backup_copy::Model) -> &str {
        &row.status
    }
    fn error(row: &backup_copy::Model) -> Option<&str> {
        row.error.as_deref()
    }
}

impl OwnTable for restore::ActiveModel {
    const MISSING: ApiError = ApiError::RestoreNotFound;
    async fn find_for_job(
        db: &DatabaseConnection,
        job_id: &str,
    ) -> Result<Option<restore::Model>, DbErr> {
        restore::Entity::find()
            .filter(restore::Column::JobId.eq(job_id))
            .one(db)
            .await
    }
    fn status(row: &restore::Model) -> &str {
        &row.status
    }
    fn error(row: &restore::Model) -> Option<&str> {
        row.error.as_deref()
    }
}

impl OwnRow for restore::ActiveModel {
    type Model = restore::Model;
    async fn insert_with(
        self,
        db: &DatabaseConnection,
        job: job::ActiveModel,
    ) -> Result<(job::Model, restore::Model), DbErr> {
        jobs::store::insert_with_row(db, job, self).await
    }
}

/// What an endpoint that starts a job answers.
pub trait JobAnswer: Sized {
    /// The row of its own the job works for.
    type Row: OwnRow;
    /// The answer for `job`: its outcome once over (see [`wait_for_row`]),
    /// else 202. `known` is the own row as this request wrote it (the first
    /// look needs no read); `None` for a job an earlier request started.
    fn answer(
        state: &AppState,
        job: &job::Model,
        run_async: bool,
        known: Option<<Self::Row as OwnRow>::Model>,
    ) -> impl Future<Output = ApiResult<Self>> + Send;
}

/// Starts a job (see the module): `prepare` checks the request and builds
/// the rows; it runs only when the idempotency key stands for no job yet.
pub async fn start_job<A, F, Fut>(
    state: &AppState,
    request: StartRequest,
    prepare: F,
) -> ApiResult<A>
where
    A: JobAnswer,
    F: FnOnce() -> Fut,
    Fut: Future<Output = ApiResult<NewJob<A::Row>>>,
{
    let StartRequest {
        wants_async,
        idempotency,
    } = request;
    if let Some(idempotency) = &idempotency
        && let Some(first) = idempotency.find(&state.db).await?
    {
        return A::answer(state, &first, wants_async, None).await;
    }
    let NewJob { mut job, row, undo } = prepare().await?;
    if let Some(idempotency) = &idempotency {
        idempotency.stamp(&mut job);
    }
    let (job, known) = match row.insert_with(&state.db, job).await {
        Ok(written) => written,
        Err(e) => {
            if let Some(undo) = undo {
                undo.await;
            }
            if let Some(idempotency) = &idempotency
                && crate::idempotency::is_conflict(&e)
            {
                // A concurrent request with the same key won: answer with
                // its job.
                let first = idempotency
                    .find(&state.db)
                    .await?
                    .ok_or(ApiError::IdempotencyKeyInUse)?;
                return A::answer(state, &first, wants_async, None).await;
            }
            return Err(e.into());
        }
    };
    enqueue(state, &job).await?;
    A::answer(state, &job, wants_async, Some(known)).await
}

/// Pushes a job whose rows are written. If the queue cannot take it, the
/// job and its own row fail at once (nothing would ever run them) and the
/// request answers 503 `<Kind> failed: the job queue is unavailable`.
async fn enqueue(state: &AppState, job: &job::Model) -> ApiResult<()> {
    let Err(e) = state.queue.push(&job.id).await else {
        return Ok(());
    };
    tracing::error!(job = %job.id, error = %e, "cannot queue the job");
    let cause = "the job queue is unavailable";
    if matches!(
        jobs::store::fail_pending(&state.db, &job.id, cause, false).await,
        Ok(true)
    ) {
        end_without_worker(state, job, cause).await;
    }
    Err(ApiError::unavailable(format!(
        "{}: {cause}",
        jobs::failure_prefix(&job.kind)
    )))
}

/// Whether a job (or its own row) is over.
pub fn is_over(status: &str) -> bool {
    status == jobs::STATUS_COMPLETED || status == jobs::STATUS_FAILED
}

/// Reads a job's own row (`load` says whether it is over) until the job is
/// over or, unless `run_async`, the configured wait has passed; the event
/// bus says when to look again, a timer covers a lost wake-up.
pub async fn wait_for_row<T, F, Fut>(
    state: &AppState,
    job_id: &str,
    run_async: bool,
    mut load: F,
) -> ApiResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ApiResult<(T, bool)>>,
{
    let deadline = std::time::Instant::now()
        + Duration::from_secs(if run_async {
            0
        } else {
            state.config.job_wait_seconds
        });
    let mut wake = state.events.subscribe();
    loop {
        let (row, over) = load().await?;
        if over || std::time::Instant::now() >= deadline {
            return Ok(row);
        }
        let news = async {
            loop {
                match wake.recv().await {
                    Ok(id) if id != job_id => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await
                    }
                    _ => return,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(250), news).await;
    }
}

/// [`wait_for_row`] for a job whose outcome is on the job row itself
/// (verifications, imports).
pub async fn wait_for_job(
    state: &AppState,
    job_row: &job::Model,
    run_async: bool,
) -> ApiResult<job::Model> {
    wait_for_row(state, &job_row.id, run_async, || async {
        let row = job::Entity::find_by_id(job_row.id.clone())
            .one(&state.db)
            .await?
            .ok_or(ApiError::JobNotFound)?;
        let over = is_over(&row.status);
        Ok((row, over))
    })
    .await
}

/// [`wait_for_row`] for a job whose outcome is on its own row (a backup, a
/// restore); `known` is that row as this request wrote it.
pub async fn wait_for_own_row<R: OwnTable>(
    state: &AppState,
    job_row: &job::Model,
    run_async: bool,
    mut known: Option<R::Model>,
) -> ApiResult<R::Model> {
    wait_for_row(state, &job_row.id, run_async, || {
        let known = known.take();
        async move {
            let row = match known {
                Some(row) => row,
                None => R::find_for_job(&state.db, &job_row.id)
                    .await?
                    .ok_or(R::MISSING)?,
            };
            let over = is_over(R::status(&row));
            Ok((row, over))
        }
    })
    .await
}

/// The answer of a job whose outcome is its own row: `done` once it
/// completed, 500 `<failed>: <cause>` once it failed, else `accepted`
/// (202) with the job's reference and `Location`.
pub async fn answer_own_row<R: OwnTable, A>(
    state: &AppState,
    job_row: &job::Model,
    run_async: bool,
    known: Option<R::Model>,
    failed: &str,
    done: impl FnOnce(R::Model) -> A,
    accepted: impl FnOnce(crate::answers::JobRef, R::Model, String) -> A,
) -> ApiResult<A> {
    let row = wait_for_own_row::<R>(state, job_row, run_async, known).await?;
    match R::status(&row) {
        jobs::STATUS_COMPLETED => Ok(done(row)),
        jobs::STATUS_FAILED => Err(ApiError::JobFailed(format!(
            "{failed}: {}",
            R::error(&row).unwrap_or("unknown cause")
        ))),
        status => {
            let job = crate::answers::job_ref(job_row, status);
            Ok(accepted(job, row, crate::answers::job_url(&job_row.id)))
        }
    }
}

/// For a job that ended without a worker (cancelled while pending, never
/// queued): fails its kind's own row, records the `error` event, and wakes
/// the jobs that waited behind it.
pub async fn end_without_worker(state: &AppState, row: &job::Model, cause: &str) {
    if let Err(e) = jobs::store::fail_owned_row(&state.db, row, cause).await {
        tracing::error!(job = %row.id, error = %e, "cannot fail the job's own row");
    }
    let duration_ms = row
        .started_at
        .map(|at| (crate::now() - at).num_milliseconds())
        .unwrap_or(0);
    let data = events::failure(&row.kind, cause, duration_ms);
    let appended = events::append(
        &state.db,
        &state.events,
        &row.id,
        events::ERROR,
        data,
        None,
        events::Durability::Durable,
    )
    .await;
    if let Err(e) = appended {
        tracing::error!(job = %row.id, error = %e, "cannot record the job's end");
    }
    if let Some(project) = &row.project_id {
        jobs::queue::redeliver_waiting(&state.db, &state.queue, project).await;
    }
}
