//! `POST /projects/{id}/import/{database,storage,functions}`: the multipart
//! part `file` streams from the socket into the upload area
//! ([`supascale_shared::uploads`]), never whole into memory, and a job
//! (`import_*`, `jobs/import_*.rs`) does the rest. Like the other
//! job-starting endpoints they wait for the job (or answer 202 with
//! `Prefer: respond-async` / `?async=true`); a job that failed because of
//! the upload (not the format it claims, a hostile archive, a truncated
//! dump) answers 400, any other failure 500.

use bytes::Bytes;
use poem::{FromRequest, Request, RequestBody};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Object, OpenApi,
};
use supascale_shared::api_key::Permission;
use supascale_shared::disk::{DiskGuard, UPLOAD_AREA};
use supascale_shared::entities::{job, project};
use supascale_shared::jobs::JobKind;
use supascale_shared::jobs::{self, params::ImportPayload};
use supascale_shared::restore::plan::{PlanContext, check_target_database};
use supascale_shared::uploads::UploadStore;
use tokio::io::AsyncReadExt;

use super::ApiTags;
use crate::answers::JobRef;
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::start_job::{JobAnswer, NewJob, StartRequest, start_job, wait_for_job};
use crate::state::AppState;

/// The multipart field that carries the file.
const FILE_FIELD: &str = "file";
/// How much of the part is read at a time.
const READ_CHUNK: usize = 1024 * 1024;

/// A `multipart/form-data` body whose part `file` is read as it arrives,
/// and the body's `Content-Length` when the client sent one.
/// poem-openapi's `Upload` would copy the whole part to a temporary file
/// before the handler runs: too late to refuse an unknown project, and a
/// second copy of a dump that may be tens of GB.
pub struct FileUpload(poem::web::Multipart, Option<u64>);

impl<'a> ApiExtractor<'a> for FileUpload {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(_registry: &mut Registry) {}

    fn request_meta() -> Option<MetaRequest> {
        let mut file = MetaSchema::new_with_format("string", "binary");
        file.description = Some("The file to import.");
        let mut form = MetaSchema::new("object");
        form.required = vec![FILE_FIELD];
        form.properties = vec![(FILE_FIELD, MetaSchemaRef::Inline(Box::new(file)))];
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: "multipart/form-data",
                schema: MetaSchemaRef::Inline(Box::new(form)),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let is_multipart = request.content_type().is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("multipart/form-data"))
        });
        if !is_multipart {
            return Err(ApiError::bad_request(
                "Content-Type must be multipart/form-data, with the file in the field \"file\"",
            )
            .into());
        }
        let declared = request
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Only the boundary is read here; the parts are read by the handler.
        <poem::web::Multipart as FromRequest>::from_request(request, body)
            .await
            .map(|multipart| FileUpload(multipart, declared))
            .map_err(|e| ApiError::bad_request(format!("Invalid multipart body: {e}")).into())
    }
}

/// What an import found.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ImportData {
    /// Milliseconds, as the contract shows.
    pub duration: i64,
    /// Problems that did not stop the import.
    pub warnings: Vec<String>,
    /// The job that did it.
    pub job_id: String,
    /// Storage: objects written.
    #[oai(skip_serializing_if_is_none)]
    pub objects: Option<u64>,
    /// Storage: buckets the objects are in.
    #[oai(skip_serializing_if_is_none)]
    pub buckets: Option<Vec<String>>,
    /// Functions: the functions imported.
    #[oai(skip_serializing_if_is_none)]
    pub functions: Option<Vec<String>>,
}

#[derive(Debug, Object)]
pub struct ImportEnvelope {
    pub success: bool,
    pub data: ImportData,
    pub message: String,
}

#[derive(Debug, Object)]
pub struct ImportAccepted {
    pub success: bool,
    pub job: JobRef,
    pub message: String,
}

#[derive(ApiResponse)]
pub enum StartedImport {
    /// The import is complete.
    #[oai(status = 200)]
    Done(Json<ImportEnvelope>),
    /// The import runs on; follow `Location` or the job's events.
    #[oai(status = 202)]
    Accepted(Json<ImportAccepted>, #[oai(header = "Location")] String),
}

/// The contract's words for a completed import of `kind`.
pub fn success_message(kind: &str) -> &'static str {
    match kind.parse() {
        Ok(JobKind::ImportDatabase) => "Database imported successfully",
        Ok(JobKind::ImportStorage) => "Storage files imported successfully",
        _ => "Edge Functions imported successfully",
    }
}

/// The body a completed import answers (and its `complete` event carries).
pub fn completed_envelope(row: &job::Model) -> ImportEnvelope {
    let result: serde_json::Value = row
        .result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    let duration = match (row.started_at, row.finished_at) {
        (Some(start), Some(end)) => (end - start).num_milliseconds(),
        _ => result["durationMs"].as_i64().unwrap_or(0),
    };
    let strings = |v: &serde_json::Value| -> Option<Vec<String>> {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
    };
    ImportEnvelope {
        success: true,
        data: ImportData {
            duration,
            warnings: strings(&result["warnings"]).unwrap_or_default(),
            job_id: row.id.clone(),
            objects: result["objects"].as_u64(),
            buckets: strings(&result["buckets"]),
            functions: strings(&result["functions"]),
        },
        message: success_message(&row.kind).to_string(),
    }
}

pub struct ImportsApi;

#[OpenApi(tag = "ApiTags::Projects")]
impl ImportsApi {
    /// Import database dump
    ///
    /// Loads a `pg_dump` file into the project's database, all or nothing.
    /// The format is read from the content: custom format (`pg_dump -Fc`,
    /// through `pg_restore`), plain SQL (through `psql`, as it is), or
    /// either gzip-compressed. A custom-format dump with definitions
    /// replaces the schemas it defines (the rest stays); a data-only dump
    /// replaces the rows of the tables it fills. The project must be
    /// running. Waits like `POST /backups` (`?async=true` for 202 at once).
    #[oai(
        path = "/projects/:id/import/database",
        method = "post",
        operation_id = "importDatabase"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn import_database(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
        file: FileUpload,
        /// `respond-async` to get 202 at once.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// The same key (from the same API key) within 24 hours returns
        /// the first request's import of this project, without reading the
        /// file again.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// `true` to get 202 at once.
        #[oai(name = "async")]
        run_async: Query<Option<bool>>,
        /// `true` to load into a database that does not look like a
        /// Supabase project's (no `auth` and `storage` schemas, yet tables
        /// in it); never into Supascale's own control plane.
        #[oai(name = "forceRestore")]
        force_restore: Query<Option<bool>>,
    ) -> ApiResult<StartedImport> {
        let request = Started {
            prefer: prefer.0,
            run_async: run_async.0,
            idempotency_key: idempotency_key.0,
            force: force_restore.0.unwrap_or(false),
        };
        start_import(&state, &auth, JobKind::ImportDatabase, &id.0, file, request).await
    }

    /// Import storage files
    ///
    /// Puts the objects of a `.zip` or `.tar.gz` archive into the project's
    /// Storage (file backend): `<bucket>/<key>` files (optionally under one
    /// top folder), or a copy of `volumes/storage` kept as it is. Each
    /// object gets its file, its `user.supabase.*` attributes and its
    /// `storage.objects` row; missing buckets are created. Objects already
    /// there with the same key are replaced, others stay. Waits like
    /// `POST /backups`.
    #[oai(
        path = "/projects/:id/import/storage",
        method = "post",
        operation_id = "importStorage"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn import_storage(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
        file: FileUpload,
        /// `respond-async` to get 202 at once.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// The same key (from the same API key) within 24 hours returns
        /// the first request's import of this project, without reading the
        /// file again.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// `true` to get 202 at once.
        #[oai(name = "async")]
        run_async: Query<Option<bool>>,
    ) -> ApiResult<StartedImport> {
        let request = Started {
            prefer: prefer.0,
            run_async: run_async.0,
            idempotency_key: idempotency_key.0,
            force: false,
        };
        start_import(&state, &auth, JobKind::ImportStorage, &id.0, file, request).await
    }

    /// Import Edge Functions
    ///
    /// Puts the function folders of a `.zip` or `.tar.gz` archive (at its
    /// root, or under one top folder such as `functions/`) into the
    /// project's functions folder. Each needs an `index.ts` or `index.js`;
    /// `_shared/` is kept. Functions of the same name are replaced, the
    /// project's others stay. Waits like `POST /backups`.
    #[oai(
        path = "/projects/:id/import/functions",
        method = "post",
        operation_id = "importFunctions"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn import_functions(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
        file: FileUpload,
        /// `respond-async` to get 202 at once.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// The same key (from the same API key) within 24 hours returns
        /// the first request's import of this project, without reading the
        /// file again.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// `true` to get 202 at once.
        #[oai(name = "async")]
        run_async: Query<Option<bool>>,
    ) -> ApiResult<StartedImport> {
        let request = Started {
            prefer: prefer.0,
            run_async: run_async.0,
            idempotency_key: idempotency_key.0,
            force: false,
        };
        start_import(
            &state,
            &auth,
            JobKind::ImportFunctions,
            &id.0,
            file,
            request,
        )
        .await
    }
}

/// How the caller wants a started import answered.
struct Started {
    prefer: Option<String>,
    run_async: Option<bool>,
    idempotency_key: Option<String>,
    /// `forceRestore` (database imports).
    force: bool,
}

/// Checks the request, streams the file to the upload area, writes the job
/// and answers (see [`start_job`]).
async fn start_import(
    state: &AppState,
    auth: &Auth,
    kind: JobKind,
    project_id: &str,
    file: FileUpload,
    request: Started,
) -> ApiResult<StartedImport> {
    let principal = auth.principal();
    principal.require(Permission::BackupsWrite)?;
    let project = crate::visible::visible_project(state, principal, project_id).await?;
    // The key stands for "this import into this project": the file is not
    // read (hashing it would mean receiving it again).
    let start = StartRequest::new(
        principal,
        request.prefer.as_deref(),
        request.run_async,
        request.idempotency_key.as_deref(),
        || format!("{kind}\n{}", project.id),
    )?;
    start_job(state, start, || async {
        if matches!(kind, JobKind::ImportDatabase | JobKind::ImportStorage) {
            check_target(state, &project, kind, request.force).await?;
        }
        let store =
            UploadStore::new(&state.config, &state.destinations).map_err(ApiError::internal)?;
        let mut job = jobs::store::new_job(
            kind,
            Some(&project.id),
            serde_json::Value::Null,
            state.config.job_attempts,
        );
        let job_id = job.id.clone().unwrap();
        let (file_name, size) = receive(state, &store, &job_id, file).await?;
        job.payload = sea_orm::ActiveValue::Set(
            serde_json::to_string(&ImportPayload {
                file_name,
                size,
                force: request.force,
            })
            .unwrap_or_default(),
        );
        let mut new = NewJob::new(job, ());
        new.undo = Some(Box::pin(async move {
            let _ = store.remove(&job_id).await;
        }));
        Ok(new)
    })
    .await
}

/// Database and storage imports both write rows into the project's
/// database: refused at once when it does not answer, lacks a privilege or
/// does not look like the project's, before the upload is read. A storage
/// import only adds rows to the storage schema: only the control plane is
/// refused for it.
async fn check_target(
    state: &AppState,
    project: &project::Model,
    kind: JobKind,
    force: bool,
) -> ApiResult<()> {
    let ctx = PlanContext {
        db: &state.db,
        config: &state.config,
        destinations: &state.destinations,
        master_key: &state.master_key,
    };
    let force = force || kind == JobKind::ImportStorage;
    Ok(check_target_database(&ctx, project, force, None).await?)
}

/// Streams the part `file` into the upload area under `job_id`; returns
/// its name and size. Other parts are skipped. Nothing stays behind when
/// it fails. A local upload area keeps the disk reserve free: a body whose
/// `Content-Length` would not fit is refused before it is read, and one
/// that fills the disk while it streams is stopped; both answer 507.
async fn receive(
    state: &AppState,
    store: &UploadStore,
    job_id: &str,
    file: FileUpload,
) -> ApiResult<(String, u64)> {
    let FileUpload(mut multipart, declared) = file;
    let limit = state.config.max_upload_bytes;
    let reserve = state.config.disk_reserve_bytes;
    let mut disk = store
        .local_root()
        .map(|root| DiskGuard::new(&root, UPLOAD_AREA, reserve));
    if let (Some(guard), Some(declared)) = (&mut disk, declared) {
        guard
            .expect(declared)
            .map_err(|e| upload_area_error(&e, store))?;
    }
    let bad = |e: poem::error::ParseMultipartError| {
        ApiError::bad_request(format!("Invalid multipart body: {e}"))
    };
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        if field.name() != Some(FILE_FIELD) {
            // Read past it: the parser cannot skip a part unread.
            let mut rest = field.into_async_read();
            tokio::io::copy(&mut rest, &mut tokio::io::sink())
                .await
                .map_err(|e| ApiError::bad_request(format!("Invalid multipart body: {e}")))?;
            continue;
        }
        let file_name = field
            .file_name()
            .map(str::to_string)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "upload".into());
        let mut reader = field.into_async_read();
        let mut writer = store
            .writer(job_id)
            .await
            .map_err(|e| ApiError::unavailable(format!("Upload area unavailable: {e}")))?;
        let mut size: u64 = 0;
        let mut buffer = vec![0u8; READ_CHUNK];
        let copied: ApiResult<()> = async {
            loop {
                let n = reader
                    .read(&mut buffer)
                    .await
                    .map_err(|e| ApiError::bad_request(format!("The upload ended early: {e}")))?;
                if n == 0 {
                    return Ok(());
                }
                size += n as u64;
                if size > limit {
                    return Err(ApiError::TooLarge(format!(
                        "The file is larger than the limit of {limit} bytes \
                         (SUPASCALE_MAX_UPLOAD_BYTES)"
                    )));
                }
                writer
                    .write(Bytes::copy_from_slice(&buffer[..n]))
                    .await
                    .map_err(|e| upload_area_error(&e, store))?;
                if let Some(guard) = &mut disk {
                    guard
                        .wrote(n as u64)
                        .map_err(|e| upload_area_error(&e, store))?;
                }
            }
        }
        .await;
        if let Err(e) = copied {
            let _ = writer.abort().await;
            return Err(e);
        }
        if size == 0 {
            let _ = writer.abort().await;
            return Err(ApiError::bad_request(format!("{file_name} is empty")));
        }
        if let Err(e) = writer.close().await {
            let _ = writer.abort().await;
            return Err(upload_area_error(&e, store));
        }
        return Ok((file_name, size));
    }
    Err(ApiError::bad_request(
        "No file: send it as the multipart field \"file\" (curl -F \"file=@dump.sql\")",
    ))
}

/// 507 with the disk message when `e` (or what it wraps) is a full disk,
/// else 503.
fn upload_area_error(e: &(dyn std::error::Error + 'static), store: &UploadStore) -> ApiError {
    if let Some(io) = supascale_shared::disk::out_of_space_in(e) {
        let root = store.local_root().unwrap_or_default();
        return ApiError::DiskFull(supascale_shared::disk::out_of_space_message(
            io,
            UPLOAD_AREA,
            &root,
        ));
    }
    ApiError::unavailable(format!("Upload area unavailable: {e}"))
}

impl JobAnswer for StartedImport {
    type Row = ();

    /// The import once it is over, else 202 with the job. A job that failed
    /// because of the upload answers 400, any other failure 500.
    async fn answer(
        state: &AppState,
        job_row: &job::Model,
        run_async: bool,
        _known: Option<()>,
    ) -> ApiResult<Self> {
        let row = wait_for_job(state, job_row, run_async).await?;
        match row.status.as_str() {
            jobs::STATUS_COMPLETED => Ok(StartedImport::Done(Json(completed_envelope(&row)))),
            jobs::STATUS_FAILED => {
                let cause = row.error.clone().unwrap_or_else(|| "unknown cause".into());
                if row.error_kind.as_deref() == Some(jobs::ERROR_KIND_INVALID_INPUT) {
                    Err(ApiError::RejectedInput(cause))
                } else {
                    Err(ApiError::JobFailed(format!(
                        "{}: {cause}",
                        jobs::failure_prefix(&row.kind)
                    )))
                }
            }
            status => Ok(StartedImport::Accepted(
                Json(ImportAccepted {
                    success: true,
                    job: crate::answers::job_ref(job_row, status),
                    message: "Import started".into(),
                }),
                crate::answers::job_url(&job_row.id),
            )),
        }
    }
}
