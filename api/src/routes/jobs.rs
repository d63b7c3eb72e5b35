//! `/jobs`: the record of every long operation, its live events (SSE), and
//! cancellation.
//!
//! The events stream follows `shared::jobs::events`: subscribe to the bus,
//! replay `job_events` after the client's `Last-Event-ID`, then read the
//! table again whenever the bus (or, as a safety net, a one-second timer)
//! says there may be more. The stream ends after `complete` or `error`.

use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::BoxStream;
use poem::web::sse::Event;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::{Value, json};
use supascale_shared::api_key::Permission;
use supascale_shared::domain::{Status, Vocabulary};
use supascale_shared::entities::{backup, job, job_event, restore};
use supascale_shared::jobs::{self, events};

use super::backups::{Backup, BackupEnvelope};
use super::{ApiTags, page_window, parse_list_filter};
use crate::answers::{events_url, job_url};
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::start_job::OwnTable;
use crate::start_job::end_without_worker;
use crate::state::AppState;
use crate::timestamp::Timestamp;
use crate::visible::visible_job;

/// Keep-alive comments on an idle events stream (proxies drop silent
/// connections).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A stream reads the table at least this often, in case a wake-up was lost.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// The step a job is at (or waits in).
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct JobProgress {
    /// `database | storage | functions | config | verify | waiting | attempt | …`
    pub step: String,
    pub message: String,
    pub current: u32,
    pub total: u32,
    #[oai(skip_serializing_if_is_none)]
    pub bytes_done: Option<u64>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct Job {
    pub id: String,
    /// `backup | restore | import_database | import_storage | import_functions | lift_shift`
    pub kind: String,
    #[oai(skip_serializing_if_is_none)]
    pub project_id: Option<String>,
    /// `pending | in_progress | completed | failed`
    pub status: String,
    /// Attempts so far, and the limit.
    pub attempt: i32,
    pub max_attempts: i32,
    // No doc comment: it would make the field an `allOf`, which
    // openapi-python-client turns into a duplicate model.
    #[oai(skip_serializing_if_is_none)]
    pub progress: Option<JobProgress>,
    pub warnings: Vec<String>,
    /// Why the job failed (or why its last attempt failed).
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
    /// A cancel was asked for and the job is stopping.
    pub cancel_requested: bool,
    /// The worker that holds the job.
    #[oai(skip_serializing_if_is_none)]
    pub worker_id: Option<String>,
    pub enqueued_at: Timestamp,
    #[oai(skip_serializing_if_is_none)]
    pub started_at: Option<Timestamp>,
    #[oai(skip_serializing_if_is_none)]
    pub finished_at: Option<Timestamp>,
    #[oai(skip_serializing_if_is_none)]
    pub heartbeat_at: Option<Timestamp>,
    /// Milliseconds from start to end.
    #[oai(skip_serializing_if_is_none)]
    pub duration_ms: Option<i64>,
    /// The job's live events (SSE).
    pub events_url: String,
}

impl From<job::Model> for Job {
    fn from(row: job::Model) -> Self {
        let duration_ms = match (row.started_at, row.finished_at) {
            (Some(start), Some(end)) => Some((end - start).num_milliseconds()),
            _ => None,
        };
        let progress = row.progress.as_deref().and_then(|p| {
            let p: Value = serde_json::from_str(p).ok()?;
            Some(JobProgress {
                step: p["step"].as_str()?.to_string(),
                message: p["message"].as_str().unwrap_or_default().to_string(),
                current: p["current"].as_u64().unwrap_or(0) as u32,
                total: p["total"].as_u64().unwrap_or(0) as u32,
                bytes_done: p["bytesDone"].as_u64(),
            })
        });
        Self {
            events_url: events_url(&row.id),
            id: row.id,
            kind: row.kind,
            project_id: row.project_id,
            status: row.status,
            attempt: row.attempt,
            max_attempts: row.max_attempts,
            progress,
            warnings: serde_json::from_str(&row.warnings).unwrap_or_default(),
            error: row.error,
            cancel_requested: row.cancel_requested,
            worker_id: row.worker_id,
            enqueued_at: row.enqueued_at.into(),
            started_at: row.started_at.map(Into::into),
            finished_at: row.finished_at.map(Into::into),
            heartbeat_at: row.heartbeat_at.map(Into::into),
            duration_ms,
        }
    }
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct JobPagination {
    /// Jobs matching the filters, over all pages.
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
    pub has_more: bool,
}

#[derive(Debug, Object)]
pub struct JobList {
    pub success: bool,
    pub jobs: Vec<Job>,
    pub pagination: JobPagination,
}

#[derive(Debug, Object)]
pub struct JobEnvelope {
    pub success: bool,
    pub job: Job,
}

/// One event as the stream sends it: `event:` is its name, `id:` its
/// sequence number, `data:` one line of JSON.
#[derive(Debug, Clone, Object)]
pub struct JobEvent {
    /// Sequence number within the job, from 1 (the SSE `id`).
    pub id: i64,
    /// `start | step | warning | complete | error`
    pub event: String,
    /// `start`: `{message, jobId, kind, projectId, attempt, maxAttempts}`;
    /// `step`: `{step, status, message, current, total, bytesDone?}`;
    /// `warning`: `{message}`; `complete`: the body the creating endpoint
    /// answers when it waits, plus `durationMs`; `error`:
    /// `{success: false, error, durationMs}`.
    pub data: Value,
}

#[derive(ApiResponse)]
pub enum CancelAnswer {
    /// The job has stopped (`failed` with `Cancelled`).
    #[oai(status = 200)]
    Stopped(Json<JobEnvelope>),
    /// The job is stopping; follow its events.
    #[oai(status = 202)]
    Stopping(Json<JobEnvelope>, #[oai(header = "Location")] String),
}

pub struct JobsApi;

#[OpenApi(tag = "ApiTags::Jobs")]
impl JobsApi {
    /// List jobs
    ///
    /// Newest first. `status`, `kind` and `projectId` each take one value or
    /// a comma-separated list.
    #[oai(path = "/jobs", method = "get", operation_id = "listJobs")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        status: Query<Option<String>>,
        kind: Query<Option<String>>,
        #[oai(name = "projectId")] project_id: Query<Option<String>>,
        /// 1 to 500, default 50.
        limit: Query<Option<i64>>,
        offset: Query<Option<i64>>,
    ) -> ApiResult<Json<JobList>> {
        let principal = auth.principal();
        principal.require(Permission::BackupsRead)?;
        let (limit, offset) = page_window(limit.0, offset.0, 50, 500)?;
        let statuses = parse_list_filter(
            "status",
            status.0.as_deref(),
            Some(&<Status as Vocabulary>::names()),
        )?;
        let kinds = parse_list_filter(
            "kind",
            kind.0.as_deref(),
            Some(&jobs::JobKind::names(|_| true)),
        )?;
        let projects = parse_list_filter("projectId", project_id.0.as_deref(), None)?;
        let mut query = job::Entity::find();
        if let Some(statuses) = statuses {
            query = query.filter(job::Column::Status.is_in(statuses));
        }
        if let Some(kinds) = kinds {
            query = query.filter(job::Column::Kind.is_in(kinds));
        }
        if let Some(projects) = projects {
            query = query.filter(job::Column::ProjectId.is_in(projects));
        }
        if let Some(allowed) = &principal.project_ids {
            query = query.filter(job::Column::ProjectId.is_in(allowed.clone()));
        }
        let total = query.clone().count(&state.db).await?;
        let rows = query
            .order_by_desc(job::Column::EnqueuedAt)
            .order_by_desc(job::Column::Id)
            .offset(offset)
            .limit(limit)
            .all(&state.db)
            .await?;
        Ok(Json(JobList {
            success: true,
            pagination: JobPagination {
                total,
                limit,
                offset,
                has_more: offset + (rows.len() as u64) < total,
            },
            jobs: rows.into_iter().map(Into::into).collect(),
        }))
    }

    /// Get a job
    #[oai(path = "/jobs/:id", method = "get", operation_id = "getJob")]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
    ) -> ApiResult<Json<Job>> {
        let principal = auth.principal();
        principal.require(Permission::BackupsRead)?;
        Ok(Json(visible_job(&state, principal, &id.0).await?.into()))
    }

    /// Stream a job's events (SSE)
    ///
    /// `start`, `step`, `warning`, then `complete` or `error`, each with an
    /// `id`; reconnect with `Last-Event-ID` (or `?after=`) to resume without
    /// loss or repeats. A job that is already over answers its events at
    /// once, ending with the final one. Keep-alive comments every 15 s.
    #[oai(
        path = "/jobs/:id/events",
        method = "get",
        operation_id = "streamJobEvents"
    )]
    async fn events(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
        /// Resume after this event (sent by SSE clients on reconnect).
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<String>>,
        /// Resume after this event (for clients that cannot set headers).
        after: Query<Option<i64>>,
    ) -> ApiResult<EventStream<BoxStream<'static, JobEvent>>> {
        let principal = auth.principal();
        principal.require(Permission::BackupsRead)?;
        let row = visible_job(&state, principal, &id.0).await?;
        let after = match (last_event_id.0.as_deref().map(str::trim), after.0) {
            (Some(raw), _) if !raw.is_empty() => raw.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "Last-Event-ID must be an event id from this stream, not {raw:?}"
                ))
            })?,
            (_, Some(n)) => n,
            _ => 0,
        };
        Ok(job_events((*state).clone(), row.id, after.max(0)))
    }

    /// Cancel a job
    ///
    /// A pending job ends at once; a running one is stopped by its worker
    /// (its child processes ended, partial output removed) within seconds.
    /// Either ends `failed` with the error `Cancelled`. A job that is
    /// already over answers 409.
    #[oai(path = "/jobs/:id/cancel", method = "post", operation_id = "cancelJob")]
    async fn cancel(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
    ) -> ApiResult<CancelAnswer> {
        let principal = auth.principal();
        principal.require(Permission::BackupsWrite)?;
        let row = visible_job(&state, principal, &id.0).await?;
        if crate::start_job::is_over(&row.status) {
            return Err(ApiError::conflict(format!("Job is already {}", row.status)));
        }
        // A pending job: no worker holds it, so the API ends it.
        if jobs::store::fail_pending(&state.db, &row.id, "Cancelled", true).await? {
            end_without_worker(&state, &row, "Cancelled").await;
            tracing::info!(job = %row.id, "pending job cancelled");
        } else {
            jobs::store::request_cancel(&state.db, &row.id).await?;
            tracing::info!(job = %row.id, "cancel requested for a running job");
        }
        // A running job stops within seconds: answer with the outcome when
        // it comes soon enough.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let row = job::Entity::find_by_id(row.id.clone())
                .one(&state.db)
                .await?
                .ok_or(ApiError::JobNotFound)?;
            if crate::start_job::is_over(&row.status) {
                return Ok(CancelAnswer::Stopped(Json(JobEnvelope {
                    success: true,
                    job: row.into(),
                })));
            }
            if std::time::Instant::now() >= deadline {
                let url = job_url(&row.id);
                return Ok(CancelAnswer::Stopping(
                    Json(JobEnvelope {
                        success: true,
                        job: row.into(),
                    }),
                    url,
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A job's events after `after` as an SSE answer: live until the final
/// one, with keep-alive comments.
pub fn job_events(
    state: AppState,
    job_id: String,
    after: i64,
) -> EventStream<BoxStream<'static, JobEvent>> {
    EventStream::new(event_stream(state, job_id, after))
        .keep_alive(KEEP_ALIVE)
        .to_event(|e: JobEvent| {
            Event::message(e.data.to_string())
                .event_type(e.event)
                .id(e.id.to_string())
        })
}

/// The `complete` body of a migration: `{success, duration, warnings,
/// summary}` as the contract shows it, from what the job recorded.
fn lift_shift_body(row: &job::Model) -> Value {
    let result: Value = row
        .result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    let duration = Job::from(row.clone()).duration_ms.unwrap_or(0);
    json!({
        "success": true,
        "duration": duration,
        "warnings": serde_json::from_str::<Value>(&row.warnings).unwrap_or_else(|_| json!([])),
        "summary": result.get("summary").cloned().unwrap_or_else(|| json!({})),
        "jobId": row.id,
    })
}

/// The body the creating endpoint answers for a completed job, which the
/// `complete` event carries too.
pub async fn completed_body(state: &AppState, row: &job::Model) -> ApiResult<Value> {
    use jobs::JobKind;
    match row.kind.parse::<JobKind>() {
        Ok(JobKind::Backup) => {
            let backup = own_row::<backup::ActiveModel>(state, row).await?;
            Ok(BackupEnvelope {
                success: true,
                backup: Backup::read(state, backup).await?,
            }
            .to_json()
            .unwrap_or(Value::Null))
        }
        Ok(JobKind::Copy) => {
            let copy =
                own_row::<supascale_shared::entities::backup_copy::ActiveModel>(state, row).await?;
            let backup = backup::Entity::find_by_id(copy.backup_id)
                .one(&state.db)
                .await?
                .ok_or(ApiError::BackupNotFound)?;
            Ok(BackupEnvelope {
                success: true,
                backup: Backup::read(state, backup).await?,
            }
            .to_json()
            .unwrap_or(Value::Null))
        }
        Ok(kind) if kind.is_import() => Ok(super::imports::completed_envelope(row)
            .to_json()
            .unwrap_or(Value::Null)),
        Ok(JobKind::Restore) => {
            let restore = own_row::<restore::ActiveModel>(state, row).await?;
            Ok(super::restores::RestoreEnvelope {
                success: true,
                restore: restore.into(),
            }
            .to_json()
            .unwrap_or(Value::Null))
        }
        Ok(JobKind::LiftShift) => Ok(lift_shift_body(row)),
        _ => Ok(json!({ "success": true })),
    }
}

async fn own_row<R: OwnTable>(state: &AppState, job: &job::Model) -> ApiResult<R::Model> {
    R::find_for_job(&state.db, &job.id).await?.ok_or(R::MISSING)
}

struct Cursor {
    state: AppState,
    job_id: String,
    after: i64,
    wake: tokio::sync::broadcast::Receiver<String>,
    ready: VecDeque<JobEvent>,
    done: bool,
}

/// The job's events after `after`, live, until the final one.
fn event_stream(state: AppState, job_id: String, after: i64) -> BoxStream<'static, JobEvent> {
    use futures::StreamExt;
    // Subscribed before the first read: nothing appended in between is missed.
    let wake = state.events.subscribe();
    let cursor = Cursor {
        state,
        job_id,
        after,
        wake,
        ready: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(event) = c.ready.pop_front() {
                if events::is_final(&event.event) {
                    c.done = true;
                    c.ready.clear();
                }
                return Some((event, c));
            }
            if c.done {
                return None;
            }
            match c.read().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!(job = %c.job_id, error = ?e, "cannot read job events"),
            }
            c.wait().await;
        }
    })
    .boxed()
}

impl Cursor {
    /// Reads what the table has after `after`; `true` when it found events.
    async fn read(&mut self) -> ApiResult<bool> {
        let rows = events::since(&self.state.db, &self.job_id, self.after).await?;
        if rows.is_empty() {
            return self.synthesize_end().await;
        }
        for row in rows {
            self.after = row.seq;
            let event = self.render(row).await?;
            self.ready.push_back(event);
        }
        Ok(true)
    }

    async fn render(&self, row: job_event::Model) -> ApiResult<JobEvent> {
        let mut data: Value = serde_json::from_str(&row.data).unwrap_or(Value::Null);
        if row.event == events::COMPLETE {
            let job = job::Entity::find_by_id(self.job_id.clone())
                .one(&self.state.db)
                .await?
                .ok_or(ApiError::JobNotFound)?;
            let mut body = completed_body(&self.state, &job).await?;
            if let (Some(body), Some(ms)) = (body.as_object_mut(), data.get("durationMs")) {
                body.insert("durationMs".into(), ms.clone());
            }
            data = body;
        }
        Ok(JobEvent {
            id: row.seq,
            event: row.event,
            data,
        })
    }

    /// A job that is over but whose final event was never written (its
    /// worker died between the two): the row says how it ended.
    async fn synthesize_end(&mut self) -> ApiResult<bool> {
        let Some(job) = job::Entity::find_by_id(self.job_id.clone())
            .one(&self.state.db)
            .await?
        else {
            return Ok(false);
        };
        let settled = job
            .finished_at
            .is_some_and(|at| crate::now() - at > chrono::Duration::seconds(2));
        if !crate::start_job::is_over(&job.status) || !settled {
            return Ok(false);
        }
        let final_written = job_event::Entity::find()
            .filter(job_event::Column::JobId.eq(self.job_id.clone()))
            .filter(job_event::Column::Event.is_in([events::COMPLETE, events::ERROR]))
            .count(&self.state.db)
            .await?
            > 0;
        if final_written {
            // Sent before this client's `Last-Event-ID`: nothing more to say.
            self.done = true;
            return Ok(false);
        }
        let duration_ms = Job::from(job.clone()).duration_ms.unwrap_or(0);
        let (event, data) = if job.status == jobs::STATUS_COMPLETED {
            let mut body = completed_body(&self.state, &job).await?;
            body["durationMs"] = json!(duration_ms);
            (events::COMPLETE, body)
        } else {
            let cause = job.error.clone().unwrap_or_else(|| "unknown cause".into());
            (
                events::ERROR,
                events::failure(&job.kind, &cause, duration_ms),
            )
        };
        self.ready.push_back(JobEvent {
            id: self.after + 1,
            event: event.into(),
            data,
        });
        Ok(true)
    }

    /// Until the bus mentions this job, or [`SAFETY_POLL`] passes.
    async fn wait(&mut self) {
        let timer = tokio::time::sleep(SAFETY_POLL);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                message = self.wake.recv() => match message {
                    // An empty id: the bus reconnected; read again.
                    Ok(id) if id == self.job_id || id.is_empty() => return,
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        (&mut timer).await;
                        return;
                    }
                },
                _ = &mut timer => return,
            }
        }
    }
}
