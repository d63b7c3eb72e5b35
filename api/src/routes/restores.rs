//! `POST /backups/{id}/restore`: every check that needs no artifact is
//! answered here, synchronously, before a job exists; the job (worker,
//! `worker/src/kinds/restore.rs`) repeats them, since the world may change meanwhile.

use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sea_orm::{ActiveValue::Set, EntityTrait};
use supascale_shared::api_key::Permission;
use supascale_shared::entities::{backup, job, restore};
use supascale_shared::jobs;
use supascale_shared::jobs::params::{RestorePayload, VerifyPayload};
use supascale_shared::restore::plan::{self, PlanContext, plan_restore};

use super::ApiTags;
use crate::answers::JobRef;
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::payload::JsonBody;
use crate::start_job::{JobAnswer, NewJob, StartRequest, answer_own_row, start_job, wait_for_job};
use crate::state::AppState;
use crate::timestamp::Timestamp;
use crate::visible::visible_backup;

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
    fn fingerprint(&self, backup_id: &str, destination: Option<&str>) -> String {
        format!(
            "restore\n{backup_id}\n{:?}\n{}\n{}\n{}",
            self.restore_types,
            self.force_restore.unwrap_or(false),
            self.target_project_id.as_deref().unwrap_or(""),
            destination.unwrap_or("")
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
    /// `?async=true` for 202 at once). The artifact is read from the
    /// backup's destination, or from a copy when the primary's object is
    /// missing, has the wrong size or cannot be reached (with a warning);
    /// `?destination=` reads that replica and no other.
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
        /// Read the artifact from this destination (the backup's own or a
        /// copy's), with no fallback.
        destination: Query<Option<String>>,
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
            || request.fingerprint(&backup_row.id, destination.0.as_deref()),
        )?;
        start_job(&state, start, || async {
            let ctx = PlanContext {
                db: &state.db,
                config: &state.config,
                destinations: &state.destinations,
                master_key: &state.master_key,
            };
            let wanted = plan::RestoreRequest {
                restore_types: request.restore_types.clone().unwrap_or_default(),
                force: request.force_restore.unwrap_or(false),
                target_project_id: request.target_project_id.clone(),
                destination: destination.0.clone(),
            };
            let checked =
                plan_restore(&ctx, &backup_row, &wanted, |p| principal.may_see(p)).await?;
            let restore_id = format!("restore-{}", uuid::Uuid::now_v7().simple());
            let payload = serde_json::to_value(RestorePayload {
                restore_id: restore_id.clone(),
                force: request.force_restore.unwrap_or(false),
                destination: destination.0.clone(),
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
            let payload = serde_json::to_value(VerifyPayload {
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
                let payload: VerifyPayload = serde_json::from_str(&job.payload)
                    .map_err(|_| ApiError::internal("The verification's job has no backup"))?;
                let row = backup::Entity::find_by_id(payload.backup_id)
                    .one(&state.db)
                    .await?
                    .ok_or(ApiError::BackupNotFound)?;
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
            jobs::STATUS_FAILED => Err(ApiError::JobFailed(format!(
                "Verification failed: {}",
                job.error.as_deref().unwrap_or("unknown cause")
            ))),
            status => Ok(StartedVerify::Accepted(
                Json(VerifyAccepted {
                    success: true,
                    job: crate::answers::job_ref(&job, status),
                }),
                crate::answers::job_url(&job.id),
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
        answer_own_row::<Self::Row, _>(
            state,
            job_row,
            run_async,
            known,
            "Restore failed",
            |row| {
                StartedRestore::Done(Json(RestoreEnvelope {
                    success: true,
                    restore: row.into(),
                }))
            },
            |job, row, url| {
                StartedRestore::Accepted(
                    Json(RestoreAccepted {
                        success: true,
                        job,
                        restore: row.into(),
                    }),
                    url,
                )
            },
        )
        .await
    }
}
