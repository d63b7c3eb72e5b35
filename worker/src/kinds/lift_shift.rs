//! The `lift_shift` job: a Supabase Cloud project migrated into a
//! registered self-hosted one, component by component in the contract's
//! order — `database` ([`database`]), `storage` ([`storage`]), `auth`
//! ([`auth`]) — then the warning about Edge Functions, which a
//! service-role key cannot read.
//!
//! Before anything of the target is touched, the source is tried: the
//! service-role key against the Storage API and, when `database` is asked,
//! a session on the source database. A wrong password, a rejected key or
//! a host without a route ends the job within seconds, naming which
//! ([`JobError::Source`], not retried).
//!
//! The credentials come sealed in the job row (`jobs.secrets_enc`, opened
//! with the master key here and nowhere else); they reach the tools only
//! through their environment, and no message carries them.

pub mod auth;
pub mod database;
pub mod storage;

use std::time::Instant;

use sea_orm::EntityTrait;
use serde_json::{Value, json};

use crate::JobContext;
use crate::reporter::Reporter;
use supascale_shared::entities::{job, project};
use supascale_shared::jobs::JobError;
use supascale_shared::jobs::params::{LiftShiftPayload, LiftShiftSecrets};
use supascale_shared::lift_shift::cloud_api::{CloudApi, CloudError};
use supascale_shared::lift_shift::source;

/// The contract's `start` event, plus the job's own fields.
pub async fn start_event(ctx: &JobContext, job: &job::Model) -> Value {
    let payload: Option<LiftShiftPayload> = serde_json::from_str(&job.payload).ok();
    let name = match &job.project_id {
        Some(id) => project::Entity::find_by_id(id.clone())
            .one(&ctx.db)
            .await
            .ok()
            .flatten()
            .map(|p| p.name),
        None => None,
    };
    json!({
        "message": "Starting Lift & Shift migration...",
        "components": payload.map(|p| p.components).unwrap_or_default(),
        "targetProject": {
            "id": job.project_id,
            "name": name.unwrap_or_default(),
        },
        "jobId": job.id,
        "kind": job.kind,
        "projectId": job.project_id,
        "attempt": job.attempt,
        "maxAttempts": job.max_attempts,
    })
}

pub async fn run(ctx: &JobContext, job: &job::Model, reporter: &Reporter) -> Result<(), JobError> {
    let outcome = migrate(ctx, job, reporter).await;
    // A job that will not run again leaves no download folder behind,
    // before its end is written (a client that sees the end finds nothing
    // of it left). One that will be retried keeps it to resume from.
    if let Err(e) = &outcome
        && (!e.will_retry(job) || reporter.is_cancelled())
    {
        remove_downloads(ctx, job).await;
    }
    outcome
}

async fn migrate(ctx: &JobContext, job: &job::Model, reporter: &Reporter) -> Result<(), JobError> {
    let started = Instant::now();
    let payload: LiftShiftPayload = supascale_shared::jobs::params::read(job)?;
    let secrets = open_secrets(ctx, job)?;
    let project_id = job
        .project_id
        .clone()
        .ok_or_else(|| JobError::Record("the migration names no project".into()))?;
    let project = project::Entity::find_by_id(project_id)
        .one(&ctx.db)
        .await
        .map_err(JobError::from)?
        .ok_or_else(|| JobError::Record("Project not found".into()))?;
    let wants = |c: &str| payload.components.iter().any(|w| w == c);
    let api = CloudApi::new(&payload.source_url, &secrets.service_role_key);

    reporter
        .step("connect", "Connecting to the source project", 0, 0)
        .await;
    let buckets = api.buckets().await.map_err(|e| source_api_error(&e))?;
    let source_db = if wants("database") {
        let source_db = source_database(&payload, &secrets)?;
        let session = database::connect(&source_db).await?;
        Some((source_db, session))
    } else {
        None
    };
    if reporter.is_cancelled() {
        return Err(JobError::Cancelled);
    }

    let mut summary = serde_json::Map::new();
    if let Some((source_db, session)) = source_db {
        let (url, facts) = super::import::target_database(ctx, job, &project, false).await?;
        let moved = cancellable(
            reporter,
            database::migrate(ctx, job, reporter, (&source_db, session), &url, &facts),
        )
        .await?;
        summary.insert(
            "database".into(),
            json!({ "tables": moved.tables, "size": moved.bytes }),
        );
    }
    if wants("storage") {
        let moved = cancellable(
            reporter,
            storage::migrate(ctx, job, reporter, &api, &project, buckets),
        )
        .await?;
        summary.insert(
            "storage".into(),
            json!({ "buckets": moved.buckets, "files": moved.files, "size": moved.bytes }),
        );
    }
    if wants("auth") {
        let providers = auth::detect(reporter, &api, wants("database")).await?;
        summary.insert("auth".into(), json!({ "providers": providers }));
    }
    reporter
        .warning(&format!(
            "functions: Edge Functions cannot be read with a service-role key; download them \
             with `supabase functions download` and bring them with POST \
             /api/v1/projects/{}/import/functions",
            project.id
        ))
        .await;
    let result = json!({
        "summary": Value::Object(summary),
        "durationMs": started.elapsed().as_millis() as u64,
    });
    supascale_shared::jobs::store::set_result(&ctx.db, &job.id, &result)
        .await
        .map_err(JobError::from)
}

/// Removes the download folder of a migration that will not run again (a
/// completed one has swapped it in and removed it already; one lost with
/// its worker on its last attempt is left to the reconciler).
async fn remove_downloads(ctx: &JobContext, job: &job::Model) {
    let Some(project_id) = &job.project_id else {
        return;
    };
    let Ok(Some(project)) = project::Entity::find_by_id(project_id.clone())
        .one(&ctx.db)
        .await
    else {
        return;
    };
    let rules = supascale_shared::project_folders::FolderRules::from_config(&ctx.config);
    let Ok(folders) = rules.pin(&project, Default::default()) else {
        return;
    };
    if let Some(dir) = folders.storage {
        let path = dir
            .path()
            .join(supascale_shared::lift_shift::stage::fetch_dir_name(&job.id));
        storage::remove_fetch_dir(&path);
    }
}

/// Runs `work` until it ends or the job is cancelled (then it is dropped:
/// its child processes die with it and open transactions roll back).
async fn cancellable<T>(
    reporter: &Reporter,
    work: impl std::future::Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    tokio::select! {
        outcome = work => outcome,
        _ = reporter.cancelled() => Err(JobError::Cancelled),
    }
}

fn open_secrets(ctx: &JobContext, job: &job::Model) -> Result<LiftShiftSecrets, JobError> {
    let sealed = job.secrets_enc.as_deref().ok_or_else(|| {
        JobError::Record(
            "the migration's credentials are gone (they are wiped when a job ends); start it \
             again"
                .into(),
        )
    })?;
    let text = ctx
        .master_key
        .decrypt(sealed)
        .map_err(|e| JobError::Configuration(format!("the migration's credentials: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|_| JobError::Record("the migration's credentials do not parse".into()))
}

/// The source database as the tools reach it.
fn source_database(
    payload: &LiftShiftPayload,
    secrets: &LiftShiftSecrets,
) -> Result<database::Source, JobError> {
    let api = source::parse_source_url(&payload.source_url).map_err(JobError::Record)?;
    // The same checks as the request's, giving the same password-less URL.
    let checked = source::source_database(
        &api,
        (!payload.database_derived).then_some(payload.database_url.as_str()),
    )
    .map_err(JobError::Record)?;
    let mut url = url::Url::parse(&checked.url)
        .map_err(|_| JobError::Record("the payload's database URL does not parse".into()))?;
    url.set_password(Some(&secrets.database_password))
        .map_err(|_| JobError::Record("the payload's database URL takes no password".into()))?;
    Ok(database::Source {
        url: url.to_string(),
        shown: format!("{}:{}", checked.target.host, checked.target.port),
        hint: source::unreachable_hint(&checked, &api),
        address: checked.url,
        password: secrets.database_password.clone(),
    })
}

/// The Storage or Auth API's refusal in the job's words.
pub fn source_api_error(e: &CloudError) -> JobError {
    if e.is_temporary() {
        JobError::Source(format!("The source project's API failed: {e}"))
    } else {
        JobError::Source(e.to_string())
    }
}
