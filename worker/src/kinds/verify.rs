//! The verify job: a backup's artifact read back from its destination and
//! checked the way a restore would read it (every entry's SHA-256 against
//! the manifest, in one streaming pass) plus `pg_restore -l` on its dump,
//! without touching any project.
//!
//! A backup found damaged is a result, not a failure of the job: the row
//! records why (`verify_error`) and the job completes. The job fails only
//! when it cannot look (destination unreachable, no decryption key).

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::restore::{Artifact, check_artifact};
use crate::JobContext;
use crate::reporter::Reporter;
use supascale_shared::artifact::Manifest;
use supascale_shared::artifact::artifact_of;
use supascale_shared::entities::{backup, job};
use supascale_shared::jobs::JobError;

use supascale_shared::jobs::io_error;
use supascale_shared::jobs::params::VerifyPayload;
use supascale_shared::pgtools;
use supascale_shared::pgtools::child;
use supascale_shared::replicas::{LocateError, Problem};
use supascale_shared::restore::database::major_of_version;

pub async fn run(ctx: &JobContext, job: &job::Model, reporter: &Reporter) -> Result<(), JobError> {
    let payload: VerifyPayload = supascale_shared::jobs::params::read(job)?;
    let row = backup::Entity::find_by_id(payload.backup_id.clone())
        .one(&ctx.db)
        .await
        .map_err(JobError::from)?
        .ok_or_else(|| JobError::Record("Backup not found".into()))?;
    let verdict = match check(ctx, job, &row, reporter).await {
        Ok(()) => None,
        Err(Damage::Found(cause)) => Some(cause),
        Err(Damage::CannotLook(e)) => return Err(e),
    };
    let mut update = backup::Entity::update_many()
        .filter(backup::Column::Id.eq(row.id.clone()))
        .col_expr(backup::Column::VerifyError, Expr::value(verdict.clone()));
    if verdict.is_none() {
        update = update.col_expr(
            backup::Column::VerifiedAt,
            Expr::value(supascale_shared::jobs::store::now()),
        );
    }
    update.exec(&ctx.db).await.map_err(JobError::from)?;
    if let Some(cause) = verdict {
        reporter
            .warning(&format!("The backup is damaged: {cause}"))
            .await;
    }
    Ok(())
}

enum Damage {
    /// The artifact is not what the backup says it is.
    Found(String),
    /// The check itself could not run.
    CannotLook(JobError),
}

async fn check(
    ctx: &JobContext,
    job: &job::Model,
    row: &backup::Model,
    reporter: &Reporter,
) -> Result<(), Damage> {
    let manifest: Manifest = row
        .manifest
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or_else(|| Damage::Found("the backup has no manifest".into()))?;
    let (_, compression) = artifact_of(row);
    reporter
        .step("stat", "Looking for the artifact", 1, 3)
        .await;
    // The primary, as restores read it; what is wrong with it is damage,
    // a destination that does not answer is not.
    let located =
        supascale_shared::replicas::locate(&ctx.db, &ctx.destinations, row, Some(&row.destination))
            .await
            .map_err(|e| match e {
                LocateError::Unusable {
                    problem: Problem::Missing | Problem::WrongSize { .. },
                    ..
                } => Damage::Found(e.to_string()),
                e => Damage::CannotLook(super::restore::locate_error(e)),
            })?;
    let (destination, key, recorded) = (located.destination, located.key, located.size);
    let identities = if row.encrypted {
        let identities = ctx
            .config
            .identities()
            .map_err(|e| Damage::CannotLook(JobError::Configuration(e.to_string())))?;
        if identities.is_empty() {
            return Err(Damage::CannotLook(JobError::Configuration(
                "Backup is encrypted and no decryption key is configured".into(),
            )));
        }
        identities
    } else {
        Vec::new()
    };
    reporter
        .step(
            "read",
            "Reading the artifact and checking every entry",
            2,
            3,
        )
        .await;
    let spool_dir = ctx.config.data_dir.join("tmp");
    supascale_shared::private_fs::create_dir_all(&spool_dir)
        .map_err(|e| Damage::CannotLook(io_error(e)))?;
    let artifact = Artifact {
        destination,
        key,
        size: recorded,
        compression,
        encrypted: row.encrypted,
        identities,
    };
    let spool = spool_dir.join(format!("{}.verify.dump", job.id));
    let reserve = ctx.config.disk_reserve_bytes;
    let checked = check_artifact(artifact, &manifest, spool, &job.id, reserve, reporter)
        .await
        .map_err(|e| match e {
            // What the pass finds wrong with the bytes is damage; a cancel
            // or a lost destination is not.
            JobError::Artifact(cause) => Damage::Found(cause),
            other => Damage::CannotLook(other),
        })?;
    if let Some(dump) = &checked.dump {
        reporter
            .step(
                "database",
                "Listing the database dump (pg_restore -l)",
                3,
                3,
            )
            .await;
        let major = manifest
            .meta
            .postgres_version
            .as_deref()
            .and_then(major_of_version)
            .unwrap_or(0);
        let pg_restore =
            pgtools::tool_for("pg_restore", major, ctx.config.postgres_bin_dirs.as_deref())
                .await
                .map_err(|e| Damage::CannotLook(JobError::Tool(e)))?;
        let listed = child::command(
            pg_restore.path.to_str().unwrap_or("pg_restore"),
            &job.id,
            None,
        )
        .arg("-l")
        .arg(&dump.path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .map_err(|e| Damage::CannotLook(JobError::Tool(format!("cannot run pg_restore: {e}"))))?;
        if !listed.status.success() {
            return Err(Damage::Found(format!(
                "pg_restore cannot read the database dump: {}",
                String::from_utf8_lossy(&listed.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )));
        }
    }
    tracing::info!(job = %job.id, backup = %row.id, files = checked.files, "backup verified");
    Ok(())
}
