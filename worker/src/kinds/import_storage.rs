//! The `import_storage` job: objects from an uploaded archive into the
//! project's Storage file backend, with the rows that make the Storage API
//! serve them. The archive's layout rules are [`supascale_shared::import::storage`]'s.
//!
//! Order, and why:
//! 1. The project's current `storage.objects` rows are read (an object the
//!    archive replaces keeps its content type; its old version goes).
//! 2. The objects are staged beside the backend's folder (a hard-link copy
//!    of the current tree plus the new files), off the async threads.
//! 3. In one transaction: missing buckets are created and every object's
//!    row is inserted or updated; then the staged tree is swapped in; then
//!    the transaction commits. A failure anywhere puts the files back and
//!    rolls the rows back: the project is as it was.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::Connection;

use super::import;
use crate::JobContext;
use crate::reporter::Reporter;
use supascale_shared::domain::Component;
use supascale_shared::entities::job;
use supascale_shared::import::storage;
use supascale_shared::import::storage::{ExistingObject, StorageObject};
use supascale_shared::jobs::JobError;

pub async fn run(ctx: &JobContext, job: &job::Model, reporter: &Reporter) -> Result<(), JobError> {
    let started = Instant::now();
    reporter
        .step("check", "Checking the upload and the project", 1, 4)
        .await;
    let start = import::start(ctx, job, import::ARCHIVE_FORMATS).await?;
    // Only the storage schema's rows are added to: any Supabase-shaped or
    // not, but never the control plane.
    let (url, _facts) = import::target_database(ctx, job, &start.project, true).await?;
    let (pinned, mut warnings) =
        import::open_target_folder(ctx, job, &start.project, Component::Storage)?;
    let dir = pinned.path();
    let detected = start.detected;
    let mut conn = connect(&url, &start.project.id).await?;
    let existing = existing_objects(&mut conn).await?;

    reporter
        .step("read", "Unpacking the objects beside the project's", 2, 4)
        .await;
    let staged = {
        let (path, dir, job_id, limits) = (
            start.upload.path.clone(),
            dir.clone(),
            job.id.clone(),
            import::limits(
                ctx,
                start.payload.size,
                supascale_shared::disk::STORAGE_AREA,
                &dir,
            )?,
        );
        import::stage_off_thread(reporter, &start.payload.file_name, move |stop| {
            storage::stage_storage(&path, &detected, &dir, &job_id, limits, &existing, stop)
        })
        .await?
    };
    warnings.extend(staged.warnings.iter().cloned());

    reporter
        .step("rows", "Writing the objects' rows", 3, 4)
        .await;
    let lock_timeout = Duration::from_secs(ctx.config.restore_lock_timeout_seconds);
    let mut txn = conn.begin().await.map_err(database_error)?;
    write_rows(&mut txn, &staged.buckets, &staged.objects, lock_timeout)
        .await
        .map_err(database_error)?;
    reporter.step("swap", "Swapping the objects in", 4, 4).await;
    if let Some(warning) = merge_and_commit(txn, staged.ready, &job.id).await? {
        warnings.push(warning);
    }
    let _ = conn.close().await;
    import::finish(
        ctx,
        job,
        reporter,
        serde_json::json!({
            "durationMs": started.elapsed().as_millis() as u64,
            "objects": staged.objects.len(),
            "buckets": staged.buckets,
        }),
        &warnings,
    )
    .await
}

/// Merges the staged `stub` in while the rows' transaction is still open,
/// then commits: a failed commit puts the files back. Returns a warning
/// when the replaced files could not all be removed.
pub async fn merge_and_commit(
    txn: sqlx::Transaction<'_, sqlx::Postgres>,
    ready: supascale_shared::restore::staging::Ready,
    job_id: &str,
) -> Result<Option<String>, JobError> {
    let swapped = ready
        .merge_in()
        .map_err(|e| JobError::Target(format!("cannot swap in the storage files: {e}")))?;
    if let Err(e) = txn.commit().await {
        if let Err(undo) = swapped.roll_back() {
            tracing::error!(job = %job_id, error = %undo, "cannot put the project's storage files back");
        }
        return Err(database_error(e));
    }
    Ok(swapped
        .commit()
        .err()
        .map(|e| format!("The replaced storage files could not all be removed: {e}")))
}

pub async fn connect(url: &str, project_id: &str) -> Result<sqlx::PgConnection, JobError> {
    tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(url))
        .await
        .map_err(|_| JobError::Target(format!("Project {project_id} is not running: no answer")))?
        .map_err(|e| {
            JobError::Target(format!(
                "Project {project_id} is not running: {}",
                supascale_shared::redact::redact_urls(&e.to_string())
            ))
        })
}

pub fn database_error(e: sqlx::Error) -> JobError {
    JobError::Target(format!(
        "the storage rows could not be written (nothing was changed): {}",
        supascale_shared::redact::redact_urls(&e.to_string())
    ))
}

/// The project's objects, by (bucket, name).
async fn existing_objects(
    conn: &mut sqlx::PgConnection,
) -> Result<HashMap<(String, String), ExistingObject>, JobError> {
    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT bucket_id, name, version, metadata->>'mimetype', metadata->>'cacheControl' \
         FROM storage.objects WHERE bucket_id IS NOT NULL",
    )
    .fetch_all(conn)
    .await
    .map_err(|e| {
        JobError::Target(format!(
            "the project's storage.objects cannot be read (is it a Supabase database?): {e}"
        ))
    })?;
    Ok(rows
        .into_iter()
        .map(|(bucket, name, version, mimetype, cache_control)| {
            (
                (bucket, name),
                ExistingObject {
                    version,
                    mimetype,
                    cache_control,
                },
            )
        })
        .collect())
}

/// The lock timeout for the rows' transaction: a project whose tables are
/// held fails the write after it instead of waiting.
pub async fn set_lock_timeout(
    txn: &mut sqlx::PgConnection,
    lock_timeout: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{}ms'",
        lock_timeout.as_millis()
    )))
    .execute(txn)
    .await
    .map(|_| ())
}

/// The columns the project's `storage.<table>` has (older images lack some).
pub async fn storage_columns(
    txn: &mut sqlx::PgConnection,
    table: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = 'storage' AND table_name = $1",
    )
    .bind(table)
    .fetch_all(txn)
    .await
}

/// What an object row's upsert changes, given `storage.objects`' columns.
pub fn object_update(columns: &[String]) -> &'static str {
    if columns.iter().any(|c| c == "updated_at") {
        "version = EXCLUDED.version, metadata = EXCLUDED.metadata, updated_at = now()"
    } else {
        "version = EXCLUDED.version, metadata = EXCLUDED.metadata"
    }
}

/// Buckets first (objects reference them), then one upsert per object,
/// with the metadata the Storage API itself records.
async fn write_rows(
    txn: &mut sqlx::PgConnection,
    buckets: &[String],
    objects: &[StorageObject],
    lock_timeout: Duration,
) -> Result<(), sqlx::Error> {
    set_lock_timeout(txn, lock_timeout).await?;
    let update = object_update(&storage_columns(txn, "objects").await?);
    for bucket in buckets {
        sqlx::query(
            "INSERT INTO storage.buckets (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING",
        )
        .bind(bucket)
        .execute(&mut *txn)
        .await?;
    }
    let statement = format!(
        "INSERT INTO storage.objects (bucket_id, name, version, metadata) \
         VALUES ($1, $2, $3, $4::jsonb) \
         ON CONFLICT (bucket_id, name) DO UPDATE SET {update}"
    );
    for object in objects {
        let last_modified: chrono::DateTime<chrono::Utc> = object.last_modified.into();
        let metadata = serde_json::json!({
            "eTag": object.etag,
            "size": object.size,
            "mimetype": object.mimetype,
            "cacheControl": object.cache_control,
            "lastModified": last_modified.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "contentLength": object.size,
            "httpStatusCode": 200,
        });
        sqlx::query(sqlx::AssertSqlSafe(statement.as_str()))
            .bind(&object.bucket)
            .bind(&object.name)
            .bind(&object.version)
            .bind(metadata.to_string())
            .execute(&mut *txn)
            .await?;
    }
    Ok(())
}
