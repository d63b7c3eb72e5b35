//! The `storage` component: every bucket (with its settings) and every
//! object of the source, fetched through the Storage API into the job's
//! download folder beside the project's `stub`
//! ([`supascale_shared::lift_shift::fetch`]: bounded concurrency, retries,
//! size and MD5 checked), then staged and swapped in with their
//! `storage.objects` rows as a storage import does: rows written in one
//! transaction, the staged tree merged in, the transaction committed; a
//! failure puts the files back and rolls the rows back.
//!
//! The download folder is kept when an attempt fails and may be retried:
//! the next attempt finds what was fetched (right size and eTag) and
//! fetches only the rest. It goes once the job is over.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::Connection;

use super::super::import_storage;
use crate::JobContext;
use crate::reporter::Reporter;
use supascale_shared::domain::Component;
use supascale_shared::entities::{job, project};
use supascale_shared::import::storage::DEFAULT_CACHE_CONTROL;
use supascale_shared::jobs::JobError;
use supascale_shared::lift_shift::cloud_api::{CloudApi, CloudBucket, CloudObject};
use supascale_shared::lift_shift::fetch::{self, FetchOptions, FetchProgress, FetchedObject};
use supascale_shared::lift_shift::stage::{self, Fetched};
use supascale_shared::redact::redact_urls;

/// What the component moved, for `summary.storage`.
pub struct Moved {
    pub buckets: usize,
    pub files: usize,
    pub bytes: u64,
}

/// How often download progress becomes a `step` event.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

pub async fn migrate(
    ctx: &JobContext,
    job: &job::Model,
    reporter: &Reporter,
    api: &CloudApi,
    project: &project::Model,
    buckets: Vec<CloudBucket>,
) -> Result<Moved, JobError> {
    let (pinned, folder_warnings) =
        super::super::import::open_target_folder(ctx, job, project, Component::Storage)?;
    for warning in folder_warnings {
        reporter.warning(&format!("storage: {warning}")).await;
    }
    let dir = pinned.path();
    let fetch_dir = dir.join(stage::fetch_dir_name(&job.id));

    let mut objects: Vec<CloudObject> = Vec::new();
    for (n, bucket) in buckets.iter().enumerate() {
        reporter
            .step(
                "storage",
                &format!("Listing the objects of {}", bucket.id),
                n as u32,
                buckets.len() as u32,
            )
            .await;
        let listed = api
            .objects(&bucket.id)
            .await
            .map_err(|e| super::source_api_error(&e))?;
        objects.extend(listed);
    }

    // What is still to fetch must fit beside the reserve: a source's
    // listing is not allowed to fill the project's disk.
    let listed: u64 = objects.iter().map(|o| o.size).sum();
    let fetched_before = if fetch_dir.exists() {
        supascale_shared::disk::used_bytes(&fetch_dir)
    } else {
        0
    };
    supascale_shared::disk::check_room(
        &dir,
        supascale_shared::disk::STORAGE_AREA,
        listed.saturating_sub(fetched_before),
        ctx.config.disk_reserve_bytes,
    )
    .map_err(JobError::Io)?;
    let outcome = download(ctx, reporter, api, objects, &fetch_dir).await?;
    for failed in &outcome.failed {
        reporter
            .warning(&format!(
                "storage: {}/{} could not be fetched: {}",
                failed.bucket, failed.name, failed.reason
            ))
            .await;
    }
    let mut fetched = outcome.fetched;
    fetched.sort_by(|a, b| {
        (&a.object.bucket, &a.object.name).cmp(&(&b.object.bucket, &b.object.name))
    });

    reporter
        .step("storage", "Writing the objects into the project", 0, 0)
        .await;
    let (url, _facts) = super::super::import::target_database(ctx, job, project, true).await?;
    let mut conn = import_storage::connect(&url, &project.id).await?;
    let staged = {
        let dir = dir.clone();
        let job_id = job.id.clone();
        let list: Vec<Fetched> = fetched
            .iter()
            .map(|f| Fetched {
                bucket: f.object.bucket.clone(),
                name: f.object.name.clone(),
                path: f.path.clone(),
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            stage::stage_fetched(&dir, &job_id, &list, || uuid::Uuid::new_v4().to_string())
        })
        .await
        .map_err(|e| JobError::Internal(e.to_string()))?
        .map_err(supascale_shared::jobs::io_error)?
    };
    for warning in &staged.warnings {
        reporter.warning(warning).await;
    }
    let rows: Vec<(&FetchedObject, &str)> = staged
        .staged
        .iter()
        .map(|(index, version)| (&fetched[*index], version.as_str()))
        .collect();
    let lock_timeout = Duration::from_secs(ctx.config.restore_lock_timeout_seconds);
    let mut txn = conn.begin().await.map_err(import_storage::database_error)?;
    write_rows(&mut txn, &buckets, &rows, lock_timeout)
        .await
        .map_err(import_storage::database_error)?;
    if let Some(warning) = import_storage::merge_and_commit(txn, staged.ready, &job.id).await? {
        reporter.warning(&format!("storage: {warning}")).await;
    }
    let _ = conn.close().await;
    remove_fetch_dir(&fetch_dir);
    Ok(Moved {
        buckets: buckets.len(),
        files: rows.len(),
        bytes: rows.iter().map(|(f, _)| f.size).sum(),
    })
}

/// Fetches `objects` into `fetch_dir`, reporting files and bytes at most
/// once a second.
async fn download(
    ctx: &JobContext,
    reporter: &Reporter,
    api: &CloudApi,
    objects: Vec<CloudObject>,
    fetch_dir: &Path,
) -> Result<fetch::FetchOutcome, JobError> {
    let options = FetchOptions {
        concurrency: ctx.config.lift_shift_concurrency,
        ..FetchOptions::default()
    };
    let latest: Mutex<Option<FetchProgress>> = Mutex::new(None);
    let note = |p: FetchProgress| {
        *latest.lock().expect("progress lock") = Some(p);
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let fetching = fetch::fetch_all(api, objects, fetch_dir, &options, &note, &stop);
    tokio::pin!(fetching);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let outcome = loop {
        tokio::select! {
            outcome = &mut fetching => break outcome,
            _ = tick.tick() => {
                let seen = latest.lock().expect("progress lock").take();
                if let Some(p) = seen {
                    report(reporter, p).await;
                }
            }
        }
    };
    let outcome = outcome.map_err(|e| {
        if e.is_key_rejected() {
            JobError::Source(e.to_string())
        } else if e.is_out_of_space() {
            JobError::Target(format!("storage: {e}"))
        } else {
            JobError::Target(format!("storage: {}", redact_urls(&e.to_string())))
        }
    })?;
    let files = (outcome.fetched.len() + outcome.failed.len()) as u64;
    let bytes = outcome.fetched.iter().map(|f| f.size).sum();
    report(
        reporter,
        FetchProgress {
            files_done: files,
            files_total: files,
            bytes_done: bytes,
            bytes_total: bytes,
        },
    )
    .await;
    Ok(outcome)
}

async fn report(reporter: &Reporter, p: FetchProgress) {
    reporter
        .step_with_bytes(
            "storage",
            &format!(
                "Downloading files ({} of {} MB)",
                p.bytes_done / 1_000_000,
                p.bytes_total / 1_000_000
            ),
            p.files_done.min(u32::MAX as u64) as u32,
            p.files_total.min(u32::MAX as u64) as u32,
            p.bytes_done,
        )
        .await;
}

/// Removes the job's download folder (the job is over, or it is swapped in).
pub fn remove_fetch_dir(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(folder = %path.display(), error = %e, "cannot remove a migration's download folder");
    }
}

/// Rows written by one statement.
const ROWS_PER_STATEMENT: usize = 1000;

/// An object's `storage.objects.metadata`: the listing's, with what was
/// checked on the fetched bytes, as the Storage API records it.
fn object_metadata(fetched: &FetchedObject) -> serde_json::Value {
    let object = &fetched.object;
    let mut metadata = match &object.metadata {
        serde_json::Value::Object(m) => serde_json::Value::Object(m.clone()),
        _ => serde_json::json!({}),
    };
    metadata["eTag"] = serde_json::json!(format!("\"{}\"", fetched.md5));
    metadata["size"] = serde_json::json!(fetched.size);
    metadata["contentLength"] = serde_json::json!(fetched.size);
    if metadata.get("mimetype").is_none() {
        metadata["mimetype"] = serde_json::json!(
            object
                .mimetype
                .clone()
                .unwrap_or_else(|| fetch::DEFAULT_CONTENT_TYPE.into())
        );
    }
    if metadata.get("cacheControl").is_none() {
        metadata["cacheControl"] = serde_json::json!(
            object
                .cache_control
                .clone()
                .unwrap_or_else(|| DEFAULT_CACHE_CONTROL.into())
        );
    }
    metadata["httpStatusCode"] = serde_json::json!(200);
    metadata
}

/// Buckets with their settings, then each object's row with the metadata
/// the Storage API records (an existing row keeps its id and owner).
async fn write_rows(
    txn: &mut sqlx::PgConnection,
    buckets: &[CloudBucket],
    objects: &[(&FetchedObject, &str)],
    lock_timeout: Duration,
) -> Result<(), sqlx::Error> {
    import_storage::set_lock_timeout(txn, lock_timeout).await?;
    let bucket_columns = import_storage::storage_columns(txn, "buckets").await?;
    let has = |c: &str| bucket_columns.iter().any(|have| have == c);
    for bucket in buckets {
        let mut names = vec!["id", "name", "public"];
        let mut updates = vec!["public = EXCLUDED.public"];
        if has("file_size_limit") {
            names.push("file_size_limit");
            updates.push("file_size_limit = EXCLUDED.file_size_limit");
        }
        if has("allowed_mime_types") {
            names.push("allowed_mime_types");
            updates.push("allowed_mime_types = EXCLUDED.allowed_mime_types");
        }
        let values: Vec<String> = (1..=names.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "INSERT INTO storage.buckets ({}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}",
            names.join(", "),
            values.join(", "),
            updates.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&bucket.id)
            .bind(&bucket.name)
            .bind(bucket.public);
        if has("file_size_limit") {
            query = query.bind(bucket.file_size_limit.map(|n| n as i64));
        }
        if has("allowed_mime_types") {
            query = query.bind(bucket.allowed_mime_types.clone());
        }
        query.execute(&mut *txn).await?;
    }
    let update =
        import_storage::object_update(&import_storage::storage_columns(txn, "objects").await?);
    // One statement per thousand rows (arrays unnested): 10,000 single-row
    // INSERTs took 2.4 s of a 9.7 s migration (bench-lift-shift).
    let statement = format!(
        "INSERT INTO storage.objects (bucket_id, name, version, metadata) \
         SELECT b, n, v, m::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
              AS r(b, n, v, m) \
         ON CONFLICT (bucket_id, name) DO UPDATE SET {update}"
    );
    for batch in objects.chunks(ROWS_PER_STATEMENT) {
        let mut columns: [Vec<String>; 4] = Default::default();
        for (fetched, version) in batch {
            let object = &fetched.object;
            columns[0].push(object.bucket.clone());
            columns[1].push(object.name.clone());
            columns[2].push(version.to_string());
            columns[3].push(object_metadata(fetched).to_string());
        }
        let [buckets, names, versions, metadata] = columns;
        sqlx::query(sqlx::AssertSqlSafe(statement.as_str()))
            .bind(buckets)
            .bind(names)
            .bind(versions)
            .bind(metadata)
            .execute(&mut *txn)
            .await?;
    }
    Ok(())
}
