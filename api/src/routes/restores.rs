//! `POST /backups/{id}/restore`: every check that needs no artifact is
//! answered here, synchronously, before a job exists; the job (worker,
//! `jobs/restore.rs`) repeats them, since the world may change meanwhile.

use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sea_orm::{ActiveValue::Set, EntityTrait};
use supascale_shared::api_key::Permission;
use supascale_shared::artifact::Manifest;
use supascale_shared::entities::{backup, job, project, restore};
use supascale_shared::jobs::restore::{COMPONENTS, RestorePayload};
use supascale_shared::jobs::{self, backup as backup_job};
use supascale_shared::restore::database;

use super::ApiTags;
use super::backups::{JobRef, visible_backup};
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::payload::JsonBody;
use crate::start_job::{
    JobAnswer, NewJob, StartRequest, start_job, wait_for_job, wait_for_own_row,
};
use crate::state::AppState;
use crate::timestamp::Timestamp;

/// What `restoreTypes` may name.
pub const RESTORE_TYPES: &[&str] = &["full", "database", "storage", "functions", "config"];

#[derive(Debug, Default, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreRequest {
    /// `full | database | storage | functions | config`; by default every
    /// component the backup holds (without `config` when restoring into
    /// another project).
    pub restore_types: Option<Vec<String>>,
    /// Override the safety checks that may be overridden: restoring
    /// `config` into another project, roles missing in the target cluster
    /// (objects then owned by the restoring role), other sessions holding
    /// locks on the target database (they are ended).
    pub force_restore: Option<bool>,
    /// Restore into this project instead of the backup's own.
    pub target_project_id: Option<String>,
}

impl RestoreRequest {
    fn fingerprint(&self, backup_id: &str) -> String {
        format!(
            "restore\n{backup_id}\n{:?}\n{}\n{}",
            self.restore_types,
            self.force_restore.unwrap_or(false),
            self.target_project_id.as_deref().unwrap_or("")
        )
    }
}

/// A restore, as the contract shows it.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct RestoreResult {
    pub backup_id: String,
    /// The project restored into.
    pub project_id: String,
    /// `pending | in_progress | completed | failed`
    pub status: String,
    pub restore_types: Vec<String>,
    /// Whole seconds.
    pub duration: Option<i64>,
    pub restored_at: Option<Timestamp>,
    pub warnings: Vec<String>,
}

impl From<restore::Model> for RestoreResult {
    fn from(row: restore::Model) -> Self {
        Self {
            backup_id: row.backup_id,
            project_id: row.project_id,
            status: row.status,
            restore_types: serde_json::from_str(&row.restore_types).unwrap_or_default(),
            duration: row.duration_secs,
            restored_at: row.restored_at.map(Into::into),
            warnings: serde_json::from_str(&row.warnings).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Object)]
pub struct RestoreEnvelope {
    pub success: bool,
    pub restore: RestoreResult,
}

#[derive(Debug, Object)]
pub struct RestoreAccepted {
    pub success: bool,
    pub job: JobRef,
    pub restore: RestoreResult,
}

#[derive(ApiResponse)]
pub enum StartedRestore {
    /// The restore is complete.
    #[oai(status = 200)]
    Done(Json<RestoreEnvelope>),
    /// The restore runs on; follow `Location` or the job's events.
    #[oai(status = 202)]
    Accepted(Json<RestoreAccepted>, #[oai(header = "Location")] String),
}

pub struct RestoresApi;

#[OpenApi(tag = "ApiTags::Backups")]
impl RestoresApi {
    /// Restore backup
    ///
    /// Restores the chosen components of a backup into its project or
    /// (`targetProjectId`) another one, all or nothing: a restore that fails
    /// leaves the target as it was. Checks that need no artifact answer 4xx
    /// at once; problems that do not stop the restore (a grant to a role the
    /// target lacks, a missing extension) come back as `warnings`. Waits for
    /// the restore like `POST /backups` (`Prefer: respond-async` or
    /// `?async=true` for 202 at once).
    #[oai(
        path = "/backups/:id/restore",
        method = "post",
        operation_id = "restoreBackup"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn restore(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
        body: JsonBody<RestoreRequest>,
        /// `respond-async` to get 202 at once.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// The same key (from the same API key) within 24 hours returns
        /// the first request's restore.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// `true` to get 202 at once.
        #[oai(name = "async")]
        run_async: Query<Option<bool>>,
    ) -> ApiResult<StartedRestore> {
        let principal = auth.principal();
        principal.require(Permission::BackupsWrite)?;
        let request = body.0;
        let backup_row = visible_backup(&state, principal, &id.0).await?;
        let start = StartRequest::new(
            principal,
            prefer.0.as_deref(),
            run_async.0,
            idempotency_key.0.as_deref(),
            || request.fingerprint(&backup_row.id),
        )?;
        start_job(&state, start, || async {
            let checked = check(&state, principal, &backup_row, &request).await?;
            let restore_id = format!("restore-{}", uuid::Uuid::now_v7().simple());
            let payload = serde_json::to_value(RestorePayload {
                restore_id: restore_id.clone(),
                force: request.force_restore.unwrap_or(false),
            })
            .unwrap_or_default();
            let job = jobs::store::new_job(
                jobs::JobKind::Restore,
                Some(&checked.target),
                payload,
                state.config.job_attempts,
            );
            let row = restore::ActiveModel {
                id: Set(restore_id),
                backup_id: Set(backup_row.id.clone()),
                project_id: Set(checked.target.clone()),
                restore_types: Set(serde_json::to_string(&checked.types).unwrap_or_default()),
                status: Set(jobs::STATUS_PENDING.into()),
                warnings: Set(
                    serde_json::to_string(&checked.warnings).unwrap_or_else(|_| "[]".into())
                ),
                error: Set(None),
                duration_secs: Set(None),
                job_id: Set(job.id.clone().take()),
                created_at: Set(crate::now()),
                restored_at: Set(None),
            };
            Ok(NewJob::new(job, row))
        })
        .await
    }

    /// Verify backup
    ///
    /// Reads the artifact back from its destination and checks it the way a
    /// restore would (every entry's SHA-256 against the manifest, and that
    /// `pg_restore -l` reads the dump), touching no project. Records
    /// `verifiedAt`, or `verifyError`, on the backup. Waits like
    /// `POST /backups` (`?async=true` for 202 at once).
    #[oai(
        path = "/backups/:id/verify",
        method = "post",
        operation_id = "verifyBackup"
    )]
    async fn verify(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
        /// `respond-async` to get 202 at once.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// `true` to get 202 at once.
        #[oai(name = "async")]
        run_async: Query<Option<bool>>,
    ) -> ApiResult<StartedVerify> {
        let principal = auth.principal();
        principal.require(Permission::BackupsRead)?;
        let backup_row = visible_backup(&state, principal, &id.0).await?;
        let start = StartRequest::new(
            principal,
            prefer.0.as_deref(),
            run_async.0,
            None,
            String::new,
        )?;
        start_job(&state, start, || async {
            if backup_row.status != jobs::STATUS_COMPLETED {
                return Err(ApiError::bad_request(format!(
                    "Backup {} is not completed (status: {}); there is nothing to verify yet",
                    backup_row.id, backup_row.status
                )));
            }
            let payload = serde_json::to_value(jobs::verify::VerifyPayload {
                backup_id: backup_row.id.clone(),
            })
            .unwrap_or_default();
            // The project is the backup's, so that only keys that may see
            // the backup see its verification; it waits for none of the
            // project's jobs (`JobKind::is_independent`).
            let job = jobs::store::new_job(
                jobs::JobKind::Verify,
                Some(&backup_row.project_id),
                payload,
                state.config.job_attempts,
            );
            Ok(NewJob::new(job, ()))
        })
        .await
    }
}

impl JobAnswer for StartedVerify {
    type Row = ();

    /// What the verification found once it is over, else 202. A
    /// verification that could not run is a 500; one that ran and found
    /// the backup damaged is a 200 with `valid: false`.
    async fn answer(
        state: &AppState,
        job_row: &job::Model,
        run_async: bool,
        _known: Option<()>,
    ) -> ApiResult<Self> {
        let job = wait_for_job(state, job_row, run_async).await?;
        match job.status.as_str() {
            jobs::STATUS_COMPLETED => {
                let payload: jobs::verify::VerifyPayload = serde_json::from_str(&job.payload)
                    .map_err(|_| ApiError::internal("The verification's job has no backup"))?;
                let row = backup::Entity::find_by_id(payload.backup_id)
                    .one(&state.db)
                    .await?
                    .ok_or_else(ApiError::backup_not_found)?;
                Ok(StartedVerify::Done(Json(VerifyEnvelope {
                    success: true,
                    verification: Verification {
                        backup_id: row.id,
                        valid: row.verify_error.is_none(),
                        verified_at: row.verified_at.map(Into::into),
                        error: row.verify_error,
                    },
                })))
            }
            jobs::STATUS_FAILED => Err(ApiError::internal(format!(
                "Verification failed: {}",
                job.error.as_deref().unwrap_or("unknown cause")
            ))),
            status => Ok(StartedVerify::Accepted(
                Json(VerifyAccepted {
                    success: true,
                    job: super::jobs::job_ref(&job, status),
                }),
                super::jobs::job_url(&job.id),
            )),
        }
    }
}

/// What a verification found.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Verification {
    pub backup_id: String,
    /// Every entry matched the manifest and `pg_restore -l` read the dump.
    pub valid: bool,
    /// When the backup was last found whole.
    pub verified_at: Option<Timestamp>,
    /// What is wrong with it, when it is not valid.
    pub error: Option<String>,
}

#[derive(Debug, Object)]
pub struct VerifyEnvelope {
    pub success: bool,
    pub verification: Verification,
}

#[derive(Debug, Object)]
pub struct VerifyAccepted {
    pub success: bool,
    pub job: JobRef,
}

#[derive(ApiResponse)]
pub enum StartedVerify {
    /// The verification is over (`valid` says how it went).
    #[oai(status = 200)]
    Done(Json<VerifyEnvelope>),
    /// It runs on; follow `Location` or the job's events.
    #[oai(status = 202)]
    Accepted(Json<VerifyAccepted>, #[oai(header = "Location")] String),
}

/// What the checks decided.
struct Checked {
    target: String,
    types: Vec<String>,
    warnings: Vec<String>,
}

/// The safety checks that need no artifact, each a clear 4xx.
async fn check(
    state: &AppState,
    principal: &crate::auth::Principal,
    backup_row: &backup::Model,
    request: &RestoreRequest,
) -> ApiResult<Checked> {
    let force = request.force_restore.unwrap_or(false);
    if backup_row.status != jobs::STATUS_COMPLETED {
        return Err(ApiError::bad_request(format!(
            "Backup {} is not completed (status: {}); only a completed backup can be restored",
            backup_row.id, backup_row.status
        )));
    }
    let target_id = request
        .target_project_id
        .clone()
        .unwrap_or_else(|| backup_row.project_id.clone());
    let target = project::Entity::find_by_id(target_id.clone())
        .one(&state.db)
        .await?
        .filter(|p| principal.may_see(&p.id))
        .ok_or_else(|| ApiError::bad_request("Project not found"))?;
    let cross_project = target.id != backup_row.project_id;
    let held: Vec<String> = backup_row
        .manifest
        .as_deref()
        .and_then(|m| serde_json::from_str::<Manifest>(m).ok())
        .map(|m| m.meta.components)
        .unwrap_or_else(|| {
            backup_job::components(&backup_row.backup_type)
                .iter()
                .map(|c| c.to_string())
                .collect()
        });
    let mut warnings = Vec::new();
    let asked = request.restore_types.clone().unwrap_or_default();
    if let Some(bad) = asked.iter().find(|t| !RESTORE_TYPES.contains(&t.as_str())) {
        return Err(ApiError::bad_request(format!(
            "restoreTypes: {bad:?} is not one of {}",
            RESTORE_TYPES.join(", ")
        )));
    }
    let everything = asked.is_empty() || asked.iter().any(|t| t == "full");
    let mut types: Vec<String> = if everything {
        COMPONENTS
            .iter()
            .filter(|c| held.iter().any(|h| h == *c))
            .map(|c| c.to_string())
            .collect()
    } else {
        let missing: Vec<&str> = COMPONENTS
            .iter()
            .copied()
            .filter(|c| asked.iter().any(|a| a == c) && !held.iter().any(|h| h == c))
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::bad_request(format!(
                "Backup does not contain: {}",
                missing.join(", ")
            )));
        }
        COMPONENTS
            .iter()
            .filter(|c| asked.iter().any(|a| a == *c))
            .map(|c| c.to_string())
            .collect()
    };
    if cross_project && types.iter().any(|t| t == "config") && !force {
        if everything {
            types.retain(|t| t != "config");
            warnings.push(format!(
                "Config was not restored: it carries project {}'s secrets (JWT secret, keys, \
                 passwords) and would replace {}'s; ask for it with restoreTypes [\"config\"] \
                 and forceRestore: true",
                backup_row.project_id, target.id
            ));
        } else {
            return Err(ApiError::bad_request(format!(
                "Restoring config into another project replaces {}'s secrets (JWT secret, \
                 keys, passwords) with {}'s; set forceRestore: true to do it",
                target.id, backup_row.project_id
            )));
        }
    }
    if types.is_empty() {
        return Err(ApiError::bad_request("Nothing to restore"));
    }
    let destination = state
        .destinations
        .get(&backup_row.destination)
        .map_err(|e| ApiError::bad_request(format!("Backup artifact cannot be reached: {e}")))?;
    let (key, _) = backup_job::artifact_of(backup_row);
    let recorded = backup_row.size.max(0) as u64;
    match destination.stat(&key).await {
        Ok(Some(stored)) if stored.size == recorded => {}
        Ok(Some(stored)) => {
            return Err(ApiError::bad_request(format!(
                "Backup artifact on {} has {} bytes, not the {recorded} recorded; it cannot be \
                 restored",
                backup_row.destination, stored.size
            )));
        }
        Ok(None) => {
            return Err(ApiError::bad_request(format!(
                "Backup artifact is missing from destination {}",
                backup_row.destination
            )));
        }
        Err(e) => {
            return Err(ApiError::unavailable(format!(
                "Backup artifact cannot be checked on {}: {e}",
                backup_row.destination
            )));
        }
    }
    if backup_row.encrypted
        && state
            .config
            .identities()
            .map(|i| i.is_empty())
            .unwrap_or(true)
    {
        return Err(ApiError::bad_request(
            "Backup is encrypted and no decryption key is configured",
        ));
    }
    if types.iter().any(|t| t == "database") {
        let url = state
            .master_key
            .decrypt(&target.database_url_enc)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let facts = database::target_facts(&url).await.map_err(|cause| {
            ApiError::bad_request(format!("Project {} is not running: {cause}", target.id))
        })?;
        if let Some(missing) = database::missing_privilege(&facts) {
            return Err(ApiError::bad_request(format!(
                "Project {}: {missing}",
                target.id
            )));
        }
        if let Some(problem) = database::identity_problem(&facts, force) {
            return Err(ApiError::bad_request(format!(
                "Project {}: {problem}",
                target.id
            )));
        }
        let backup_major = backup_row
            .manifest
            .as_deref()
            .and_then(|m| serde_json::from_str::<Manifest>(m).ok())
            .and_then(|m| m.meta.postgres_version)
            .as_deref()
            .and_then(database::major_of_version);
        if let Some(major) = backup_major
            && major > facts.major
        {
            return Err(ApiError::bad_request(format!(
                "Backup is of PostgreSQL {major}, newer than project {}'s PostgreSQL {}; \
                 restore it into a project of PostgreSQL {major} or later",
                target.id, facts.version
            )));
        }
    }
    Ok(Checked {
        target: target.id,
        types,
        warnings,
    })
}

impl JobAnswer for StartedRestore {
    type Row = restore::ActiveModel;

    /// The restore once it is over, else 202 with the job. A failed restore
    /// is a 500 `Restore failed: <cause>`.
    async fn answer(
        state: &AppState,
        job_row: &job::Model,
        run_async: bool,
        known: Option<restore::Model>,
    ) -> ApiResult<Self> {
        let row = wait_for_own_row::<Self::Row>(state, job_row, run_async, known).await?;
        match row.status.as_str() {
            jobs::STATUS_COMPLETED => Ok(StartedRestore::Done(Json(RestoreEnvelope {
                success: true,
                restore: row.into(),
            }))),
            jobs::STATUS_FAILED => {
                let cause = row.error.unwrap_or_else(|| "unknown cause".into());
                Err(ApiError::internal(format!("Restore failed: {cause}")))
            }
            status => Ok(StartedRestore::Accepted(
                Json(RestoreAccepted {
                    success: true,
                    job: super::jobs::job_ref(job_row, status),
                    restore: row.into(),
                }),
                super::jobs::job_url(&job_row.id),
            )),
        }
    }
}
