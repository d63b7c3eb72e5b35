//! The read side of backups: `GET /backups` and `GET /backups/{id}`.
//!
//! Lists are ordered newest first by `(created_at, id)`, and an opaque
//! cursor carries the last row's key, so a deep page by cursor costs what the
//! first page costs. `pagination.total` and `stats` read `backup_stats`
//! (kept by triggers), never a count over `backups`.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, Utc};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sea_orm::sea_query::{Expr, ExprTrait, IntoCondition};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use supascale_shared::api_key::Permission;
use supascale_shared::artifact::Compression;
use supascale_shared::artifact::{artifact_key, artifact_of};
use supascale_shared::domain::{BackupType, DestinationName, Status, Vocabulary};
use supascale_shared::entities::{
    backup, backup_copy, backup_stat, backup_total, job, project, restore,
};
use supascale_shared::jobs;

use super::{ApiTags, page_window, parse_list_filter};
use crate::answers::JobRef;
use crate::answers::Message;
use crate::auth::{Auth, Principal};
use crate::error::{ApiError, ApiResult};
use crate::payload::{JsonBody, JsonBytes};
use crate::start_job::{JobAnswer, NewBackup, NewJob, StartRequest, answer_own_row, start_job};
use crate::state::AppState;
use crate::timestamp::Timestamp;
use crate::visible::visible_backup;

pub const DEFAULT_LIMIT: u64 = 50;
pub const MAX_LIMIT: u64 = 500;

/// A backup as the list shows it.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct Backup {
    pub id: String,
    pub project_id: String,
    /// The project's name when the backup was taken.
    pub project_name: String,
    /// `full | database | storage | functions | config`
    #[oai(rename = "type")]
    pub backup_type: String,
    /// `pending | in_progress | completed | failed`
    pub status: String,
    /// `local | s3 | gcs | azure | r2 | minio | backblaze`
    pub destination: String,
    /// Where the artifact is, e.g. `s3://bucket/my-project/…tar.gz`.
    pub path: String,
    /// Artifact size in bytes.
    pub size: i64,
    pub encrypted: bool,
    /// `gzip | zstd`
    pub compression: String,
    /// SHA-256 of the artifact, hex.
    #[oai(skip_serializing_if_is_none)]
    pub sha256: Option<String>,
    /// Whole seconds the backup took.
    #[oai(skip_serializing_if_is_none)]
    pub duration: Option<i64>,
    /// Why a failed backup failed.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
    pub created_at: Timestamp,
    #[oai(skip_serializing_if_is_none)]
    pub completed_at: Option<Timestamp>,
    /// When `POST /backups/{id}/verify` last found every entry intact.
    #[oai(skip_serializing_if_is_none)]
    pub verified_at: Option<Timestamp>,
    /// Why the last verification found the backup unusable.
    #[oai(skip_serializing_if_is_none)]
    pub verify_error: Option<String>,
    /// The destination refuses to delete the artifact before this
    /// (`immutable_days`); until then deleting the backup answers 409.
    #[oai(skip_serializing_if_is_none)]
    pub locked_until: Option<Timestamp>,
    /// Copies of the artifact on other destinations (3-2-1), oldest first.
    pub copies: Vec<BackupCopy>,
}

/// A copy of a backup's artifact on another destination, under the same
/// key (`POST /backups/{id}/copy`, `copyTo`).
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct BackupCopy {
    /// `local | s3 | gcs | azure | r2 | minio | backblaze`
    pub destination: String,
    /// Where the copy is, e.g. `gs://bucket/my-project/…tar.gz`.
    pub path: String,
    /// Bytes copied (the backup's size once completed).
    pub size: i64,
    /// SHA-256 of the copy as its destination gave it back, hex.
    #[oai(skip_serializing_if_is_none)]
    pub sha256: Option<String>,
    /// `pending | in_progress | completed | failed`
    pub status: String,
    /// Why a failed copy failed.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
    pub created_at: Timestamp,
    #[oai(skip_serializing_if_is_none)]
    pub completed_at: Option<Timestamp>,
    /// The copy's destination refuses to delete it before this.
    #[oai(skip_serializing_if_is_none)]
    pub locked_until: Option<Timestamp>,
}

impl From<backup_copy::Model> for BackupCopy {
    fn from(row: backup_copy::Model) -> Self {
        Self {
            destination: row.destination,
            path: row.path,
            size: row.size,
            sha256: row.sha256,
            status: row.status,
            error: row.error,
            created_at: row.created_at.into(),
            completed_at: row.completed_at.map(Into::into),
            locked_until: row.locked_until.map(Into::into),
        }
    }
}

impl Backup {
    /// The backup as shown, with its copies.
    pub fn with_copies(row: backup::Model, copies: Vec<backup_copy::Model>) -> Self {
        Self {
            copies: copies.into_iter().map(BackupCopy::from).collect(),
            ..Self::from(row)
        }
    }

    /// The backup `row` as shown, its copies read.
    pub async fn read(state: &AppState, row: backup::Model) -> ApiResult<Self> {
        let copies = shown_copies(state, &row.id).await?;
        Ok(Self {
            copies,
            ..row.into()
        })
    }
}

/// The copies of the backup `backup_id`, as a backup shows them.
async fn shown_copies(state: &AppState, backup_id: &str) -> ApiResult<Vec<BackupCopy>> {
    Ok(supascale_shared::replicas::copies_of(&state.db, backup_id)
        .await?
        .into_iter()
        .map(BackupCopy::from)
        .collect())
}

/// The copies of the backups `ids`, by backup, in one query.
async fn copies_by_backup(
    state: &AppState,
    ids: Vec<String>,
) -> ApiResult<HashMap<String, Vec<backup_copy::Model>>> {
    let mut by_backup: HashMap<String, Vec<backup_copy::Model>> = HashMap::new();
    if ids.is_empty() {
        return Ok(by_backup);
    }
    let rows = backup_copy::Entity::find()
        .filter(backup_copy::Column::BackupId.is_in(ids))
        .order_by_asc(backup_copy::Column::CreatedAt)
        .order_by_asc(backup_copy::Column::Destination)
        .all(&state.db)
        .await?;
    for row in rows {
        by_backup
            .entry(row.backup_id.clone())
            .or_default()
            .push(row);
    }
    Ok(by_backup)
}

impl From<backup::Model> for Backup {
    fn from(row: backup::Model) -> Self {
        Self {
            id: row.id,
            project_id: row.project_id,
            project_name: row.project_name,
            backup_type: row.backup_type,
            status: row.status,
            destination: row.destination,
            path: row.path,
            size: row.size,
            encrypted: row.encrypted,
            compression: row.compression,
            sha256: row.sha256,
            duration: row.duration_secs,
            error: row.error,
            created_at: row.created_at.into(),
            completed_at: row.completed_at.map(Into::into),
            verified_at: row.verified_at.map(Into::into),
            verify_error: row.verify_error,
            locked_until: row.locked_until.map(Into::into),
            copies: Vec::new(),
        }
    }
}

/// One restore of a backup.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct RestoreRecord {
    pub restored_at: Timestamp,
    /// Whole seconds the restore took.
    pub duration: i64,
    /// The project restored into.
    pub project_id: String,
    pub restore_types: Vec<String>,
    pub warnings: Vec<String>,
}

/// A backup with its restore history.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct BackupDetails {
    #[oai(flatten)]
    pub backup: Backup,
    pub restore_history: Vec<RestoreRecord>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct Pagination {
    /// Backups matching the filters, over all pages.
    pub total: i64,
    pub limit: u64,
    pub offset: u64,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Object)]
pub struct DestinationStats {
    pub count: i64,
    /// Bytes.
    pub size: i64,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct BackupStats {
    pub total_backups: i64,
    /// Bytes.
    pub total_size: i64,
    pub by_destination: BTreeMap<String, DestinationStats>,
}

#[derive(Debug, Clone, Object)]
pub struct BackupList {
    pub backups: Vec<Backup>,
    pub pagination: Pagination,
    #[oai(skip_serializing_if_is_none)]
    pub stats: Option<BackupStats>,
}

pub struct BackupsApi;

#[OpenApi(tag = "ApiTags::Backups")]
impl BackupsApi {
    /// List backups
    ///
    /// Newest first. `projectId`, `status` and `destination` each take one
    /// value or a comma-separated list. Page with `limit`/`offset`, or with
    /// `cursor` (from `pagination.nextCursor`), which stays fast at any depth.
    #[oai(path = "/backups", method = "get", operation_id = "listBackups")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Filter by project (comma-separated for several).
        #[oai(name = "projectId")]
        project_id: Query<Option<String>>,
        /// Filter by status (comma-separated for several).
        status: Query<Option<String>>,
        /// Filter by destination (comma-separated for several).
        destination: Query<Option<String>>,
        /// Results per page (1 to 500, default 50).
        limit: Query<Option<i64>>,
        /// Rows to skip (default 0).
        offset: Query<Option<i64>>,
        /// The `pagination.nextCursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Include totals by destination.
        stats: Query<Option<bool>>,
    ) -> ApiResult<JsonBytes<BackupList>> {
        let principal = auth.principal();
        principal.require(Permission::BackupsRead)?;
        let (limit, offset) = page_window(limit.0, offset.0, DEFAULT_LIMIT, MAX_LIMIT)?;
        let cursor_param = cursor.0;
        let cursor = cursor_param.as_deref().map(Cursor::decode).transpose()?;
        let with_stats = stats.0.unwrap_or(false);
        let filters = Filters {
            projects: scoped_projects(
                principal,
                parse_list_filter("projectId", project_id.0.as_deref(), None)?,
            ),
            statuses: parse_list_filter("status", status.0.as_deref(), Some(&Status::names()))?,
            destinations: parse_list_filter(
                "destination",
                destination.0.as_deref(),
                Some(&DestinationName::names()),
            )?,
        };

        let cache_key = format!(
            "{:?}|{:?}|{:?}|{limit}|{offset}|{:?}|{with_stats}",
            filters.projects, filters.statuses, filters.destinations, cursor_param
        );
        if let Some(page) = state.list_cache.get(&cache_key) {
            return Ok(JsonBytes::cached(page));
        }
        let generation = state.list_cache.generation();

        let mut query = backup::Entity::find().filter(filters.condition(
            backup::Column::ProjectId,
            backup::Column::Status,
            backup::Column::Destination,
        ));
        if let Some(cursor) = &cursor {
            query = query.filter(
                Expr::tuple([
                    Expr::col(backup::Column::CreatedAt),
                    Expr::col(backup::Column::Id),
                ])
                .lt(Expr::tuple([
                    Expr::val(cursor.created_at),
                    Expr::val(cursor.id.clone()),
                ])),
            );
        }
        // The page and the totals are independent reads: run them together.
        let (rows, by_destination) = tokio::join!(
            query
                .order_by_desc(backup::Column::CreatedAt)
                .order_by_desc(backup::Column::Id)
                .offset(offset)
                .limit(limit + 1)
                .all(&state.db),
            stats_by_destination(&state, &filters)
        );
        let (mut rows, by_destination) = (rows?, by_destination?);
        let next_cursor = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| {
                Cursor {
                    created_at: r.created_at,
                    id: r.id.clone(),
                }
                .encode()
            })
        } else {
            None
        };

        let total: i64 = by_destination.values().map(|s| s.count).sum();
        let stats = with_stats.then(|| BackupStats {
            total_backups: total,
            total_size: by_destination.values().map(|s| s.size).sum(),
            by_destination,
        });
        let mut copies =
            copies_by_backup(&state, rows.iter().map(|r| r.id.clone()).collect()).await?;
        let page = BackupList {
            backups: rows
                .into_iter()
                .map(|row| {
                    let copies = copies.remove(&row.id).unwrap_or_default();
                    Backup::with_copies(row, copies)
                })
                .collect(),
            pagination: Pagination {
                total,
                limit,
                offset,
                next_cursor,
            },
            stats,
        };
        let page = JsonBytes::new(&page);
        if let Some(generation) = generation {
            state.list_cache.put(cache_key, generation, page.body());
        }
        Ok(page)
    }

    /// Get backup details
    ///
    /// The backup with its restore history.
    #[oai(path = "/backups/:id", method = "get", operation_id = "getBackup")]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
    ) -> ApiResult<Json<BackupDetails>> {
        let principal = auth.principal();
        principal.require(Permission::BackupsRead)?;
        let row = visible_backup(&state, principal, &id.0).await?;
        let history = restore::Entity::find()
            .filter(restore::Column::BackupId.eq(row.id.clone()))
            .filter(restore::Column::Status.eq(supascale_shared::jobs::STATUS_COMPLETED))
            .order_by_asc(restore::Column::CreatedAt)
            .all(&state.db)
            .await?
            .into_iter()
            .filter_map(|r| {
                Some(RestoreRecord {
                    restored_at: r.restored_at?.into(),
                    duration: r.duration_secs.unwrap_or(0),
                    project_id: r.project_id,
                    restore_types: serde_json::from_str(&r.restore_types).unwrap_or_default(),
                    warnings: serde_json::from_str(&r.warnings).unwrap_or_default(),
                })
            })
            .collect();
        Ok(Json(BackupDetails {
            backup: Backup::read(&state, row).await?,
            restore_history: history,
        }))
    }

    /// Create backup
    ///
    /// Runs the backup as a job. By default the answer waits for it (up to
    /// `SUPASCALE_JOB_WAIT_SECONDS`, 55 s); with `Prefer: respond-async` or
    /// `?async=true`, or when the wait runs out, it answers 202 at once with
    /// the job and its events stream. A failed backup answers 500
    /// `Backup failed: <cause>`. The same `Idempotency-Key` within 24 hours
    /// answers with the first request's backup instead of starting another.
    #[oai(path = "/backups", method = "post", operation_id = "createBackup")]
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        body: JsonBody<CreateBackup>,
        /// `respond-async` to get 202 at once.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// Makes a retried request safe: the same key (from the same API
        /// key) within 24 hours returns the first request's job.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// `true` to get 202 at once.
        #[oai(name = "async")]
        run_async: Query<Option<bool>>,
    ) -> ApiResult<CreatedBackup> {
        let principal = auth.principal();
        principal.require(Permission::BackupsWrite)?;
        let request = body.0;
        let start = StartRequest::new(
            principal,
            prefer.0.as_deref(),
            run_async.0,
            idempotency_key.0.as_deref(),
            || request.fingerprint(),
        )?;
        start_job(&state, start, || async {
            let (row, job) = new_backup_rows(&state, principal, request).await?;
            Ok(NewJob::new(job, row))
        })
        .await
    }

    /// Delete backup
    ///
    /// Removes the artifact and its copies, then the record. A running
    /// backup, or one being copied, cannot be deleted (409); nor can one
    /// whose artifact or a copy is locked (`immutable_days`): the 409 names
    /// the date it unlocks.
    #[oai(
        path = "/backups/:id",
        method = "delete",
        operation_id = "deleteBackup"
    )]
    async fn delete(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
    ) -> ApiResult<Json<Message>> {
        let principal = auth.principal();
        principal.require(Permission::BackupsWrite)?;
        let row = visible_backup(&state, principal, &id.0).await?;
        if matches!(
            row.status.as_str(),
            jobs::STATUS_PENDING | jobs::STATUS_IN_PROGRESS
        ) {
            return Err(ApiError::conflict(
                "Backup is running; it can be deleted once it ends",
            ));
        }
        let copies = supascale_shared::replicas::copies_of(&state.db, &row.id).await?;
        if let Some(copy) = being_made(&state, &copies).await? {
            return Err(ApiError::conflict(format!(
                "Backup is being copied to {}; it can be deleted once that ends",
                copy.destination
            )));
        }
        // Before any object is touched: on a versioned, locked bucket a
        // delete "succeeds" by hiding the object, which would be a lie. A
        // few minutes' margin for a clock ahead of the store's.
        let now = crate::now() - chrono::Duration::minutes(5);
        let locked = std::iter::once((row.destination.as_str(), row.locked_until))
            .chain(
                copies
                    .iter()
                    .map(|c| (c.destination.as_str(), c.locked_until)),
            )
            .filter_map(|(name, until)| until.filter(|u| *u > now).map(|u| (u, name)))
            .max();
        if let Some((until, name)) = locked {
            return Err(ApiError::conflict(format!(
                "Backup is immutable until {}: destination {name} keeps it locked until then \
                 (immutable_days); it can be deleted after that",
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )));
        }
        let (key, _) = artifact_of(&row);
        // The copies first, each row going with its object: the primary,
        // deleted last, keeps the record worth retrying if a copy's
        // destination does not answer, and no row names a deleted object.
        for copy in &copies {
            delete_replica(&state, &row.id, &copy.destination, &key).await?;
            backup_copy::Entity::delete_by_id((row.id.clone(), copy.destination.clone()))
                .exec(&state.db)
                .await?;
        }
        delete_replica(&state, &row.id, &row.destination, &key).await?;
        let txn = state.db.begin().await?;
        restore::Entity::delete_many()
            .filter(restore::Column::BackupId.eq(row.id.clone()))
            .exec(&txn)
            .await?;
        backup::Entity::delete_by_id(row.id.clone())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        tracing::info!(backup = %row.id, copies = copies.len(), "backup deleted");
        Ok(Json(Message {
            success: true,
            message: "Backup deleted".into(),
        }))
    }

    /// Copy backup
    ///
    /// Copies a completed backup's artifact to another destination (3-2-1),
    /// streamed from where it is and checked there as a backup is (size,
    /// then the SHA-256 of what the destination gives back); the copy is
    /// listed in the backup's `copies`. Restores and downloads fall back to
    /// a copy when the primary's object is missing, and take one with
    /// `?destination=`. Waits like `POST /backups` (`?async=true` for 202 at
    /// once). A failed copy answers 500 `Copy failed: <cause>`.
    #[oai(
        path = "/backups/:id/copy",
        method = "post",
        operation_id = "copyBackup"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn copy(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
        body: JsonBody<CopyRequest>,
        /// `respond-async` to get 202 at once.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// The same key (from the same API key) within 24 hours returns
        /// the first request's copy.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// `true` to get 202 at once.
        #[oai(name = "async")]
        run_async: Query<Option<bool>>,
    ) -> ApiResult<StartedCopy> {
        let principal = auth.principal();
        principal.require(Permission::BackupsWrite)?;
        let request = body.0;
        let row = visible_backup(&state, principal, &id.0).await?;
        let start = StartRequest::new(
            principal,
            prefer.0.as_deref(),
            run_async.0,
            idempotency_key.0.as_deref(),
            || format!("copy\n{}\n{}", row.id, request.destination),
        )?;
        start_job(&state, start, || async {
            let copy = new_copy_job(&state, &row, &request.destination).await?;
            Ok(copy)
        })
        .await
    }
}

/// The first copy still being made: pending or in progress, and its job
/// not over (a copy whose job ended without saying so is not waited for).
async fn being_made<'a>(
    state: &AppState,
    copies: &'a [backup_copy::Model],
) -> ApiResult<Option<&'a backup_copy::Model>> {
    for copy in copies.iter().filter(|c| {
        matches!(
            c.status.as_str(),
            jobs::STATUS_PENDING | jobs::STATUS_IN_PROGRESS
        )
    }) {
        let Some(job_id) = &copy.job_id else { continue };
        let running = job::Entity::find_by_id(job_id.clone())
            .one(&state.db)
            .await?
            .is_some_and(|j| !crate::start_job::is_over(&j.status));
        if running {
            return Ok(Some(copy));
        }
    }
    Ok(None)
}

/// Removes the object `key` from the destination `name`; a destination no
/// longer configured is skipped (nothing can reach it), one that does not
/// answer is a 503 and nothing more is deleted.
async fn delete_replica(state: &AppState, backup_id: &str, name: &str, key: &str) -> ApiResult<()> {
    let destination = match state.destinations.get(name) {
        Ok(destination) => destination,
        Err(e) => {
            tracing::warn!(backup = %backup_id, error = %e, "destination gone; forgetting its object");
            return Ok(());
        }
    };
    match destination.stat(key).await {
        Ok(Some(_)) => destination.delete(key).await.map_err(|e| {
            tracing::error!(backup = %backup_id, destination = %name, error = %e, "cannot delete the artifact");
            ApiError::DestinationDown
        }),
        Ok(None) => {
            tracing::warn!(backup = %backup_id, destination = %name, "the artifact was already gone");
            Ok(())
        }
        Err(e) => {
            tracing::error!(backup = %backup_id, destination = %name, error = %e, "cannot reach the destination");
            Err(ApiError::DestinationDown)
        }
    }
}

/// `POST /backups/{id}/copy`.
#[derive(Debug, Object, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    /// Where the copy goes: `local | s3 | gcs | azure | r2 | minio |
    /// backblaze`, a configured destination other than the backup's own.
    pub destination: String,
}

/// The copy job and its row, or the 4xx that says why not.
async fn new_copy_job(
    state: &AppState,
    row: &backup::Model,
    word: &str,
) -> ApiResult<NewJob<backup_copy::ActiveModel>> {
    if row.status != jobs::STATUS_COMPLETED {
        return Err(ApiError::bad_request(format!(
            "Backup {} is not completed (status: {}); only a completed backup can be copied",
            row.id, row.status
        )));
    }
    let name = DestinationName::parse(word).map_err(ApiError::InvalidField)?;
    let name = name.as_str();
    let target = state
        .destinations
        .get(name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if name == row.destination {
        return Err(ApiError::bad_request(format!(
            "destination: the backup is on {name} already; a copy goes elsewhere"
        )));
    }
    let existing = backup_copy::Entity::find_by_id((row.id.clone(), name.to_string()))
        .one(&state.db)
        .await?;
    let running = being_made(state, existing.as_slice()).await?.is_some();
    match existing.as_ref().map(|c| c.status.as_str()) {
        Some(jobs::STATUS_PENDING | jobs::STATUS_IN_PROGRESS) if running => {
            return Err(ApiError::conflict(format!(
                "Backup {} is being copied to {name} already",
                row.id
            )));
        }
        Some(jobs::STATUS_COMPLETED) => {
            return Err(ApiError::conflict(format!(
                "Backup {} already has a copy on {name}",
                row.id
            )));
        }
        // A failed copy, or one whose job ended without saying so, is made
        // again.
        Some(_) => {
            backup_copy::Entity::delete_by_id((row.id.clone(), name.to_string()))
                .exec(&state.db)
                .await?;
        }
        None => {}
    }
    let (key, _) = artifact_of(row);
    let payload = serde_json::to_value(supascale_shared::jobs::params::CopyPayload {
        backup_id: row.id.clone(),
        destination: name.to_string(),
    })
    .unwrap_or_default();
    // The backup's project, so that only keys that may see the backup see
    // the copy; it waits for none of the project's jobs.
    let job = jobs::store::new_job(
        jobs::JobKind::Copy,
        Some(&row.project_id),
        payload,
        state.config.job_attempts,
    );
    let mut copy = new_copy_row(&row.id, name, target.url_for(&key), &job, crate::now());
    // An earlier attempt's lock holds whatever this one does: the locked
    // version is still in the bucket.
    copy.locked_until = Set(existing.and_then(|c| c.locked_until));
    Ok(NewJob::new(job, copy))
}

#[derive(ApiResponse)]
pub enum StartedCopy {
    /// The copy is made; the backup lists it in `copies`.
    #[oai(status = 200)]
    Done(Json<BackupEnvelope>),
    /// It runs on; follow `Location` or the job's events.
    #[oai(status = 202)]
    Accepted(Json<BackupAccepted>, #[oai(header = "Location")] String),
}

impl JobAnswer for StartedCopy {
    type Row = backup_copy::ActiveModel;

    /// The backup with its copies once the copy is over, else 202. A
    /// failed copy is a 500 `Copy failed: <cause>`.
    async fn answer(
        state: &AppState,
        job_row: &job::Model,
        run_async: bool,
        known: Option<backup_copy::Model>,
    ) -> ApiResult<Self> {
        let (backup_id, running) = answer_own_row::<Self::Row, _>(
            state,
            job_row,
            run_async,
            known,
            "Copy failed",
            |copy| (copy.backup_id, None),
            |job, copy, url| (copy.backup_id, Some((job, url))),
        )
        .await?;
        let row = backup::Entity::find_by_id(backup_id)
            .one(&state.db)
            .await?
            .ok_or(ApiError::BackupNotFound)?;
        let backup = Backup::read(state, row).await?;
        Ok(match running {
            None => StartedCopy::Done(Json(BackupEnvelope {
                success: true,
                backup,
            })),
            Some((job, url)) => StartedCopy::Accepted(
                Json(BackupAccepted {
                    success: true,
                    job,
                    backup,
                }),
                url,
            ),
        })
    }
}

/// The projects a query may cover: the requested ones, limited to what the
/// key may see.
fn scoped_projects(principal: &Principal, requested: Option<Vec<String>>) -> Option<Vec<String>> {
    match (&principal.project_ids, requested) {
        (None, requested) => requested,
        (Some(allowed), None) => Some(allowed.clone()),
        (Some(allowed), Some(requested)) => Some(
            requested
                .into_iter()
                .filter(|p| allowed.contains(p))
                .collect(),
        ),
    }
}

struct Filters {
    projects: Option<Vec<String>>,
    statuses: Option<Vec<String>>,
    destinations: Option<Vec<String>>,
}

impl Filters {
    fn condition<C: ColumnTrait>(&self, project: C, status: C, destination: C) -> Condition {
        let mut condition = Condition::all();
        for (column, values) in [
            (project, &self.projects),
            (status, &self.statuses),
            (destination, &self.destinations),
        ] {
            if let Some(values) = values {
                condition = condition.add(column.is_in(values.clone()).into_condition());
            }
        }
        condition
    }
}

/// Counts and bytes per destination for the filters, from the summary
/// tables: `backup_totals` (a few dozen rows) unless the query names
/// projects, `backup_stats` (those projects' rows, by primary key) if it does.
async fn stats_by_destination(
    state: &AppState,
    filters: &Filters,
) -> ApiResult<BTreeMap<String, DestinationStats>> {
    let rows: Vec<(String, i64, i64)> = if filters.projects.is_some() {
        backup_stat::Entity::find()
            .select_only()
            .column(backup_stat::Column::Destination)
            .column_as(backup_stat::Column::Count.sum().cast_as("BIGINT"), "count")
            .column_as(backup_stat::Column::Size.sum().cast_as("BIGINT"), "size")
            .filter(filters.condition(
                backup_stat::Column::ProjectId,
                backup_stat::Column::Status,
                backup_stat::Column::Destination,
            ))
            .group_by(backup_stat::Column::Destination)
            .into_tuple()
            .all(&state.db)
            .await?
    } else {
        let mut condition = Condition::all();
        if let Some(statuses) = &filters.statuses {
            condition = condition.add(backup_total::Column::Status.is_in(statuses.clone()));
        }
        if let Some(destinations) = &filters.destinations {
            condition =
                condition.add(backup_total::Column::Destination.is_in(destinations.clone()));
        }
        backup_total::Entity::find()
            .select_only()
            .column(backup_total::Column::Destination)
            .column_as(backup_total::Column::Count.sum().cast_as("BIGINT"), "count")
            .column_as(backup_total::Column::Size.sum().cast_as("BIGINT"), "size")
            .filter(condition)
            .group_by(backup_total::Column::Destination)
            .into_tuple()
            .all(&state.db)
            .await?
    };
    Ok(rows
        .into_iter()
        .filter(|(_, count, _)| *count > 0)
        .map(|(destination, count, size)| (destination, DestinationStats { count, size }))
        .collect())
}

/// The key of the last row of a page, opaque to clients.
struct Cursor {
    created_at: DateTime<Utc>,
    id: String,
}

impl Cursor {
    fn encode(&self) -> String {
        B64.encode(format!(
            "{}|{}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    fn decode(raw: &str) -> ApiResult<Self> {
        let invalid = || ApiError::bad_request("cursor is not a cursor this API returned");
        let text = B64
            .decode(raw.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(invalid)?;
        let (micros, id) = text.split_once('|').ok_or_else(invalid)?;
        let created_at = micros
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(invalid)?;
        Ok(Self {
            created_at,
            id: id.to_string(),
        })
    }
}

/// `POST /backups`.
#[derive(Debug, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBackup {
    pub project_id: String,
    /// `full` (default) `| database | storage | functions | config`
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub backup_type: Option<String>,
    /// `local` (default) `| s3 | gcs | azure | r2 | minio | backblaze`
    pub destination: Option<String>,
    /// Encrypt the artifact for the configured recipients (default false).
    pub encrypt: Option<bool>,
    /// `gzip` (default) `| zstd`
    pub compression: Option<String>,
    /// Other destinations to copy the artifact to once it is stored (as
    /// `POST /backups/{id}/copy` does), in the same job. A copy that fails
    /// is a warning and a failed entry in `copies`; the backup completes.
    pub copy_to: Option<Vec<String>>,
}

#[derive(Debug, Object)]
pub struct BackupEnvelope {
    pub success: bool,
    pub backup: Backup,
}

#[derive(Debug, Object)]
pub struct BackupAccepted {
    pub success: bool,
    pub job: JobRef,
    pub backup: Backup,
}

impl CreateBackup {
    /// What the request asks for, defaults applied: the same key with a
    /// different request is refused.
    fn fingerprint(&self) -> String {
        format!(
            "backup\n{}\n{}\n{}\n{}\n{}\n{}",
            self.project_id,
            self.backup_type.as_deref().unwrap_or("full"),
            self.destination.as_deref().unwrap_or("local"),
            self.encrypt.unwrap_or(false),
            self.compression.as_deref().unwrap_or("gzip"),
            self.copy_to.as_deref().unwrap_or_default().join(","),
        )
    }
}

#[derive(ApiResponse)]
pub enum CreatedBackup {
    /// The backup is complete.
    #[oai(status = 200)]
    Done(Json<BackupEnvelope>),
    /// The backup runs on (asked for with `Prefer: respond-async` or
    /// `?async=true`, or it outlasted the wait); follow `Location`.
    #[oai(status = 202)]
    Accepted(Json<BackupAccepted>, #[oai(header = "Location")] String),
}

impl JobAnswer for CreatedBackup {
    type Row = NewBackup;

    /// The backup once it is over, else 202 with the job. A failed backup
    /// is a 500 `Backup failed: <cause>`.
    async fn answer(
        state: &AppState,
        job_row: &job::Model,
        run_async: bool,
        known: Option<backup::Model>,
    ) -> ApiResult<Self> {
        let mut answer = answer_own_row::<Self::Row, _>(
            state,
            job_row,
            run_async,
            known,
            "Backup failed",
            |row| {
                CreatedBackup::Done(Json(BackupEnvelope {
                    success: true,
                    backup: row.into(),
                }))
            },
            |job, row, url| {
                CreatedBackup::Accepted(
                    Json(BackupAccepted {
                        success: true,
                        job,
                        backup: row.into(),
                    }),
                    url,
                )
            },
        )
        .await?;
        let backup = match &mut answer {
            CreatedBackup::Done(Json(done)) => &mut done.backup,
            CreatedBackup::Accepted(Json(accepted), _) => &mut accepted.backup,
        };
        backup.copies = shown_copies(state, &backup.id).await?;
        Ok(answer)
    }
}

/// Turns the request into rows, or the contract's 400s.
async fn new_backup_rows(
    state: &AppState,
    principal: &Principal,
    input: CreateBackup,
) -> ApiResult<(NewBackup, job::ActiveModel)> {
    let project = project::Entity::find_by_id(input.project_id.clone())
        .one(&state.db)
        .await?
        .filter(|p| principal.may_see(&p.id))
        .ok_or(ApiError::UnknownProject)?;
    let backup_type = match input.backup_type.as_deref() {
        Some(word) => BackupType::parse(word).map_err(ApiError::InvalidField)?,
        None => BackupType::Full,
    };
    let destination_name = match input.destination.as_deref() {
        Some(word) => DestinationName::parse(word).map_err(ApiError::InvalidField)?,
        None => DestinationName::Local,
    };
    let destination = state
        .destinations
        .get(destination_name.as_str())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let encrypt = input.encrypt.unwrap_or(false);
    if encrypt
        && state
            .config
            .recipients()
            .map(|r| r.is_empty())
            .unwrap_or(true)
    {
        return Err(ApiError::bad_request(
            "encrypt: no encryption recipients are configured \
             (set SUPASCALE_ENCRYPTION_RECIPIENTS to age public keys)",
        ));
    }
    let copy_to = copy_targets(state, destination_name.as_str(), input.copy_to.as_deref())?;
    let compression_name = input.compression.unwrap_or_else(|| "gzip".into());
    let compression = Compression::parse(&compression_name).ok_or_else(|| {
        ApiError::bad_request(format!(
            "compression must be gzip or zstd, not {compression_name:?}"
        ))
    })?;
    let id = format!("backup-{}", uuid::Uuid::now_v7().simple());
    let created_at = crate::now();
    let key = artifact_key(
        &project.id,
        &id,
        backup_type.as_str(),
        created_at,
        compression,
    );
    let job = jobs::store::new_job(
        jobs::JobKind::Backup,
        Some(&project.id),
        serde_json::to_value(jobs::params::BackupPayload {
            backup_id: id.clone(),
            copy_to: copy_to.iter().map(|(name, _)| name.clone()).collect(),
        })
        .unwrap_or_default(),
        state.config.job_attempts,
    );
    let copies = copy_to
        .iter()
        .map(|(name, target)| new_copy_row(&id, name, target.url_for(&key), &job, created_at))
        .collect();
    let row = backup::ActiveModel {
        id: Set(id),
        project_id: Set(project.id.clone()),
        project_name: Set(project.name.clone()),
        backup_type: Set(backup_type.to_string()),
        status: Set(jobs::STATUS_PENDING.into()),
        destination: Set(destination_name.to_string()),
        path: Set(destination.url_for(&key)),
        size: Set(0),
        encrypted: Set(encrypt),
        compression: Set(compression_name),
        sha256: Set(None),
        duration_secs: Set(None),
        error: Set(None),
        manifest: Set(None),
        job_id: Set(Some(job.id.clone().unwrap())),
        created_at: Set(created_at),
        completed_at: Set(None),
        verified_at: Set(None),
        verify_error: Set(None),
        locked_until: Set(None),
    };
    Ok((
        NewBackup {
            backup: row,
            copies,
        },
        job,
    ))
}

/// `copyTo`, checked: each a configured destination, none the backup's own,
/// none twice.
fn copy_targets<'a>(
    state: &'a AppState,
    primary: &str,
    names: Option<&[String]>,
) -> ApiResult<Vec<(String, &'a supascale_shared::destinations::Destination)>> {
    let mut targets: Vec<(String, &supascale_shared::destinations::Destination)> = Vec::new();
    for word in names.unwrap_or_default() {
        let name = DestinationName::parse(word)
            .map_err(|e| ApiError::bad_request(format!("copyTo: {e}")))?;
        let name = name.as_str();
        if name == primary {
            return Err(ApiError::bad_request(format!(
                "copyTo: {name} is the backup's own destination; a copy goes elsewhere"
            )));
        }
        if targets.iter().any(|(n, _)| n == name) {
            return Err(ApiError::bad_request(format!(
                "copyTo: {name} is named twice"
            )));
        }
        let destination = state
            .destinations
            .get(name)
            .map_err(|e| ApiError::bad_request(format!("copyTo: {e}")))?;
        targets.push((name.to_string(), destination));
    }
    Ok(targets)
}

/// A copy row, pending, for `job` to fill.
fn new_copy_row(
    backup_id: &str,
    destination: &str,
    path: String,
    job: &job::ActiveModel,
    created_at: chrono::DateTime<Utc>,
) -> backup_copy::ActiveModel {
    backup_copy::ActiveModel {
        backup_id: Set(backup_id.to_string()),
        destination: Set(destination.to_string()),
        path: Set(path),
        size: Set(0),
        sha256: Set(None),
        status: Set(jobs::STATUS_PENDING.into()),
        error: Set(None),
        job_id: Set(job.id.clone().take()),
        created_at: Set(created_at),
        completed_at: Set(None),
        locked_until: Set(None),
    }
}
