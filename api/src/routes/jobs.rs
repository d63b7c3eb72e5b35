//! `/jobs/{id}`: the record of a job (the events stream arrives with the
//! rest of the job pipeline).

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use sea_orm::EntityTrait;
use supascale_shared::api_key::Permission;
use supascale_shared::entities::job;

use super::ApiTags;
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::timestamp::Timestamp;

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct Job {
    pub id: String,
    /// `backup` (more kinds arrive with restores and imports).
    pub kind: String,
    #[oai(skip_serializing_if_is_none)]
    pub project_id: Option<String>,
    /// `pending | in_progress | completed | failed`
    pub status: String,
    /// Attempts so far, and the limit.
    pub attempt: i32,
    pub max_attempts: i32,
    /// Why the job failed (or why its last attempt failed).
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
    pub enqueued_at: Timestamp,
    #[oai(skip_serializing_if_is_none)]
    pub started_at: Option<Timestamp>,
    #[oai(skip_serializing_if_is_none)]
    pub finished_at: Option<Timestamp>,
    /// Milliseconds from start to end.
    #[oai(skip_serializing_if_is_none)]
    pub duration_ms: Option<i64>,
}

impl From<job::Model> for Job {
    fn from(row: job::Model) -> Self {
        let duration_ms = match (row.started_at, row.finished_at) {
            (Some(start), Some(end)) => Some((end - start).num_milliseconds()),
            _ => None,
        };
        Self {
            id: row.id,
            kind: row.kind,
            project_id: row.project_id,
            status: row.status,
            attempt: row.attempt,
            max_attempts: row.max_attempts,
            error: row.error,
            enqueued_at: row.enqueued_at.into(),
            started_at: row.started_at.map(Into::into),
            finished_at: row.finished_at.map(Into::into),
            duration_ms,
        }
    }
}

pub struct JobsApi;

#[OpenApi(tag = "ApiTags::Jobs")]
impl JobsApi {
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
        let row = job::Entity::find_by_id(id.0)
            .one(&state.db)
            .await?
            .filter(|j| j.project_id.as_deref().is_none_or(|p| principal.may_see(p)))
            .ok_or_else(|| ApiError::not_found("Job not found"))?;
        Ok(Json(row.into()))
    }
}
