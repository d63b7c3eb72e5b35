//! What a key may see: a project, backup or job outside its restriction
//! is not there for it (404, the same answer as for one that does not exist).

use sea_orm::EntityTrait;
use supascale_shared::entities::{backup, job, project};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// A project the key may see, or `404 Project not found`.
pub async fn visible_project(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> ApiResult<project::Model> {
    project::Entity::find_by_id(id.to_string())
        .one(&state.db)
        .await?
        .filter(|p| principal.may_see(&p.id))
        .ok_or(ApiError::ProjectNotFound)
}

/// A backup the key may see, or `404 Backup not found` (also for backups of
/// projects outside the key's restriction: they are not there for it).
pub async fn visible_backup(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> ApiResult<backup::Model> {
    backup::Entity::find_by_id(id.to_string())
        .one(&state.db)
        .await?
        .filter(|b| principal.may_see(&b.project_id))
        .ok_or(ApiError::BackupNotFound)
}

/// A job the key may see, or 404 `Job not found`.
pub async fn visible_job(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> ApiResult<job::Model> {
    job::Entity::find_by_id(id.to_string())
        .one(&state.db)
        .await?
        .filter(|j| j.project_id.as_deref().is_none_or(|p| principal.may_see(p)))
        .ok_or(ApiError::JobNotFound)
}
