//! The copy job (3-2-1): a completed backup's artifact streamed from where
//! it is (its primary destination, or a copy when the primary's object is
//! gone) to another destination under the same key, then confirmed there as
//! a backup is: the size the target reports, the SHA-256 of what it gives
//! back, and, on an immutable destination, the lock.
//!
//! Nothing is spooled locally: each chunk the source gives is hashed on a
//! blocking thread while it is written to the target, so the copy needs a
//! chunk or two of memory whatever the artifact's size. A source whose
//! bytes do not hash to the backup's recorded SHA-256 is not copied: the
//! target's upload is aborted before it becomes visible.
//!
//! A backup's `copyTo` runs the same [`copy_to`] inside the backup job,
//! once the primary is confirmed; there a failed copy is a warning, and the
//! backup stays completed.

use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryTrait};
use sha2::Digest;

use super::backup::read_back_sha256;
use crate::JobContext;
use crate::reporter::Reporter;
use supascale_shared::artifact::artifact_of;
use supascale_shared::destinations::{Destination, DestinationError};
use supascale_shared::entities::{backup, backup_copy, job};
use supascale_shared::jobs::params::CopyPayload;
use supascale_shared::jobs::{JobError, STATUS_COMPLETED, STATUS_FAILED, STATUS_IN_PROGRESS};
use supascale_shared::replicas::locate;

/// What a finished copy is.
pub(crate) struct Copied {
    pub size: u64,
    pub sha256: String,
    pub locked_until: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn run(ctx: &JobContext, job: &job::Model, reporter: &Reporter) -> Result<(), JobError> {
    let payload: CopyPayload = supascale_shared::jobs::params::read(job)?;
    let row = backup::Entity::find_by_id(payload.backup_id.clone())
        .one(&ctx.db)
        .await
        .map_err(JobError::from)?
        .ok_or_else(|| JobError::Record("Backup not found".into()))?;
    set_copy(
        ctx,
        &row.id,
        &payload.destination,
        vec![(backup_copy::Column::Status, Expr::value(STATUS_IN_PROGRESS))],
    )
    .await?;
    match copy_to(ctx, job, &row, &payload.destination, reporter, (1, 1)).await {
        Ok(copied) => {
            // Written with the job's end, in its commit.
            reporter.record_with_end(
                copy_update(&row.id, &payload.destination, completed(&copied)).into_query(),
            );
            Ok(())
        }
        Err(e) => {
            if e.will_retry(job) {
                set_copy(
                    ctx,
                    &row.id,
                    &payload.destination,
                    vec![
                        (
                            backup_copy::Column::Status,
                            Expr::value(supascale_shared::jobs::STATUS_PENDING),
                        ),
                        (backup_copy::Column::Error, Expr::value(e.to_string())),
                    ],
                )
                .await?;
            } else {
                reporter.record_with_end(
                    copy_update(&row.id, &payload.destination, failed(&e.to_string())).into_query(),
                );
            }
            Err(e)
        }
    }
}

/// The columns of a completed copy.
pub(crate) fn completed(copied: &Copied) -> Vec<(backup_copy::Column, SimpleExpr)> {
    vec![
        (backup_copy::Column::Status, Expr::value(STATUS_COMPLETED)),
        (backup_copy::Column::Size, Expr::value(copied.size as i64)),
        (
            backup_copy::Column::Sha256,
            Expr::value(copied.sha256.clone()),
        ),
        (
            backup_copy::Column::Error,
            Expr::value(Option::<String>::None),
        ),
        (
            backup_copy::Column::CompletedAt,
            Expr::value(supascale_shared::jobs::now()),
        ),
        (
            backup_copy::Column::LockedUntil,
            Expr::value(copied.locked_until),
        ),
    ]
}

/// The columns of a copy failed for good.
pub(crate) fn failed(cause: &str) -> Vec<(backup_copy::Column, SimpleExpr)> {
    vec![
        (backup_copy::Column::Status, Expr::value(STATUS_FAILED)),
        (backup_copy::Column::Error, Expr::value(cause)),
    ]
}

/// An UPDATE of the copy of `backup_id` on `destination`.
pub(crate) fn copy_update(
    backup_id: &str,
    destination: &str,
    changes: Vec<(backup_copy::Column, SimpleExpr)>,
) -> sea_orm::UpdateMany<backup_copy::Entity> {
    changes.into_iter().fold(
        backup_copy::Entity::update_many()
            .filter(backup_copy::Column::BackupId.eq(backup_id))
            .filter(backup_copy::Column::Destination.eq(destination)),
        |update, (column, value)| update.col_expr(column, value),
    )
}

/// Writes the copy row now.
pub(crate) async fn set_copy(
    ctx: &JobContext,
    backup_id: &str,
    destination: &str,
    changes: Vec<(backup_copy::Column, SimpleExpr)>,
) -> Result<(), JobError> {
    copy_update(backup_id, destination, changes)
        .exec(&ctx.db)
        .await
        .map(drop)
        .map_err(JobError::from)
}

/// Copies `row`'s artifact to the destination `target_name` and confirms
/// it there; `step` is this copy's (current, total) among the job's steps.
pub(crate) async fn copy_to(
    ctx: &JobContext,
    job: &job::Model,
    row: &backup::Model,
    target_name: &str,
    reporter: &Reporter,
    step: (u32, u32),
) -> Result<Copied, JobError> {
    if target_name == row.destination {
        return Err(JobError::Record(format!(
            "the backup is on {target_name} already"
        )));
    }
    if row.status != STATUS_COMPLETED {
        return Err(JobError::Record(format!(
            "the backup is not completed (status: {})",
            row.status
        )));
    }
    let target = ctx
        .destinations
        .get(target_name)
        .map_err(|e| JobError::Configuration(e.to_string()))?
        .clone();
    let source = locate(&ctx.db, &ctx.destinations, row, None)
        .await
        .map_err(super::restore::locate_error)?;
    if let Some(warning) = &source.fallback {
        reporter.warning(warning).await;
    }
    let probe = target.probe().await;
    if let Some(error) = probe.error.as_deref()
        && !probe.writable()
    {
        return Err(JobError::DestinationDown(format!(
            "Destination {target_name} is not usable: {error}"
        )));
    }
    if target.same_place(&source.destination) {
        return Err(JobError::Configuration(format!(
            "destinations {} and {target_name} are the same bucket and prefix; a copy there \
             would be the artifact itself",
            source.name()
        )));
    }
    let (key, _) = artifact_of(row);
    // What an earlier attempt left (a `gcs` write never replaces one): the
    // target holds no replica of this backup, or the copy would not run.
    // Looked for first: a write-only key may not delete, and a versioned
    // bucket would keep a delete marker of nothing.
    if target.stat(&key).await?.is_some() {
        target.delete(&key).await?;
    }
    let message = format!(
        "Copying the artifact from {} to {target_name}",
        source.name()
    );
    reporter.step("copy", &message, step.0, step.1).await;
    let progress = |copied| reporter.bytes("copy", &message, step.0, step.1, copied);
    let sha256 = stream_copy(
        &source.destination,
        &target,
        &key,
        (source.size, row.sha256.as_deref()),
        progress,
        reporter,
    )
    .await?;
    reporter
        .step(
            "copy",
            &format!("Confirming the copy on {target_name}"),
            step.0,
            step.1,
        )
        .await;
    confirm_copy(ctx, &target, &key, source.size, &sha256).await?;
    // A backup deleted while it was copied takes its copy along; a lock
    // would keep an object nobody knows of.
    let still_there = backup::Entity::find_by_id(row.id.clone())
        .one(&ctx.db)
        .await
        .map_err(JobError::from)?
        .is_some();
    if !still_there {
        let _ = target.delete(&key).await;
        return Err(JobError::Record(
            "the backup was deleted while it was copied".into(),
        ));
    }
    let locked_until = match target.lock(&key).await {
        Ok(until) => until,
        Err(e) => {
            let _ = target.delete(&key).await;
            return Err(JobError::Destination(e));
        }
    };
    tracing::info!(job = %job.id, backup = %row.id, from = %source.name(), to = %target_name, bytes = source.size, "backup copied");
    Ok(Copied {
        size: source.size,
        sha256,
        locked_until,
    })
}

/// Streams `key` from `source` to `target`, hashing as it goes; the
/// target's object is visible only if every byte arrived and hashed to
/// `recorded` (the backup's SHA-256). Returns the SHA-256 of what was read.
async fn stream_copy<F, Fut>(
    source: &Destination,
    target: &Destination,
    key: &str,
    (size, recorded): (u64, Option<&str>),
    progress: F,
    reporter: &Reporter,
) -> Result<String, JobError>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    let unsure = |e: String| JobError::DestinationUnsure(format!("reading {}: {e}", source.name()));
    let reader = source.reader(key).await?;
    let mut stream = reader
        .into_bytes_stream(0..size)
        .await
        .map_err(DestinationError::from)?;
    let mut writer = target.writer(key).await?;
    let mut copied = 0u64;
    let mut hasher = sha2::Sha256::new();
    let streamed: Result<(), JobError> = async {
        loop {
            let chunk = tokio::select! {
                chunk = stream.next() => chunk,
                _ = reporter.cancelled() => return Err(JobError::Cancelled),
            };
            let Some(chunk) = chunk else { break };
            let chunk = chunk.map_err(|e| unsure(e.to_string()))?;
            copied += chunk.len() as u64;
            // Hashed on a blocking thread while the target takes it.
            let mut to_hash = std::mem::take(&mut hasher);
            let hashed = chunk.clone();
            let hashing = tokio::task::spawn_blocking(move || {
                to_hash.update(&hashed);
                to_hash
            });
            let (written, hashing) = tokio::join!(writer.write(chunk), hashing);
            written.map_err(|e| JobError::Destination(e.into()))?;
            hasher =
                hashing.map_err(|e| JobError::Internal(format!("hashing the copy failed: {e}")))?;
            progress(copied).await;
        }
        if copied != size {
            return Err(unsure(format!("{copied} bytes came of {size}")));
        }
        Ok(())
    }
    .await;
    let sha256 = hex::encode(hasher.finalize());
    let streamed = streamed.and_then(|()| match recorded {
        Some(recorded) if recorded != sha256 => Err(JobError::Artifact(format!(
            "the artifact on {} is damaged (SHA-256 {sha256}, not the {recorded} recorded); \
             nothing was copied",
            source.name()
        ))),
        _ => Ok(()),
    });
    if let Err(e) = streamed {
        let _ = writer.abort().await;
        return Err(e);
    }
    writer
        .close()
        .await
        .map_err(|e| JobError::Destination(e.into()))?;
    Ok(sha256)
}

/// The target itself confirms the copy: its size, and (unless turned off)
/// the SHA-256 of the bytes it gives back. What it cannot confirm is
/// deleted.
async fn confirm_copy(
    ctx: &JobContext,
    target: &Destination,
    key: &str,
    size: u64,
    sha256: &str,
) -> Result<(), JobError> {
    let stored = target.stat(key).await?;
    let problem = match stored {
        None => Some("the destination does not show the copy".to_string()),
        Some(stored) if stored.size != size => Some(format!(
            "the destination stored {} bytes of {size}",
            stored.size
        )),
        Some(_) if ctx.config.verify_readback => match read_back_sha256(target, key, size).await {
            Ok(back) if back == sha256 => None,
            Ok(back) => Some(format!(
                "the destination gave back other bytes than were copied (SHA-256 {back}, \
                 expected {sha256})"
            )),
            Err(e) => {
                let _ = target.delete(key).await;
                return Err(JobError::from(e));
            }
        },
        Some(_) => None,
    };
    match problem {
        None => Ok(()),
        Some(problem) => {
            let _ = target.delete(key).await;
            Err(JobError::DestinationUnsure(problem))
        }
    }
}
