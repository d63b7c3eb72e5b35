//! The Backups API (`supascale-api`): validates, authorises, writes rows and
//! answers from them. It never runs a job itself; in the embedded default the
//! same process also hosts the worker loop.

pub mod answers;
pub mod auth;
pub mod error;
mod hyper_errors;
pub mod idempotency;
pub mod key_cache;
pub mod list_cache;
pub mod metrics;
pub mod payload;
pub mod principal;
pub mod routes;
pub mod server;
pub mod start_job;
pub mod state;
pub mod timestamp;
pub mod visible;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use poem::endpoint::make_sync;
use poem::http::{HeaderValue, StatusCode};
use poem::{Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Request, Response, Route, get};
use poem_openapi::OpenApiService;
use supascale_shared::Config;
use tracing::Instrument;

use crate::routes::backups::BackupsApi;
use crate::routes::imports::ImportsApi;
use crate::routes::lift_shift::LiftShiftApi;
use crate::routes::restores::RestoresApi;
use crate::routes::{
    api_keys::ApiKeysApi, destinations::DestinationsApi, download::DownloadApi, jobs::JobsApi,
    projects::ProjectsApi,
};
use crate::state::AppState;

pub const API_PREFIX: &str = "/api/v1";

/// The current time as the control plane stores it (whole microseconds, so
/// that a time read back compares equal to the one written on every backend).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

type Apis = (
    BackupsApi,
    RestoresApi,
    ImportsApi,
    LiftShiftApi,
    DownloadApi,
    ProjectsApi,
    ApiKeysApi,
    JobsApi,
    DestinationsApi,
);

pub fn openapi_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            BackupsApi,
            RestoresApi,
            ImportsApi,
            LiftShiftApi,
            DownloadApi,
            ProjectsApi,
            ApiKeysApi,
            JobsApi,
            DestinationsApi,
        ),
        "Supascale Backups API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Back up, restore, import and migrate self-hosted Supabase projects. \
         Authenticate with `X-API-Key: <key>` (or `Authorization: Bearer <key>`). \
         Every error answers `{\"success\": false, \"error\": \"…\"}`.",
    )
    .server(API_PREFIX)
}

/// The OpenAPI document, as committed in `openapi.yaml`.
pub fn spec_yaml() -> String {
    openapi_service().spec_yaml()
}

/// The whole HTTP application.
pub fn app(state: AppState) -> impl Endpoint {
    let service = openapi_service();
    let ui = service.swagger_ui();
    let spec = service.spec_yaml();
    let max_body = state.config.max_body_bytes as usize;
    let max_upload = state.config.max_upload_bytes;
    let body_stall = Duration::from_secs(state.config.http_body_timeout_seconds);
    Route::new()
        .at(
            "/api/v1/openapi.yaml",
            make_sync(move |_| {
                Response::builder()
                    .content_type("application/yaml")
                    .body(spec.clone())
            }),
        )
        .nest(
            API_PREFIX,
            service.around(move |ep, req| limit_body(ep, req, max_body, max_upload)),
        )
        .nest("/docs", ui)
        .at("/healthz", get(routes::ops::healthz))
        .at("/readyz", get(routes::ops::readyz))
        .at("/metrics", get(metrics::metrics))
        .around(check_request)
        .around(move |ep, req| server::limit_body_stalls(ep, req, body_stall))
        .with(metrics::Track::default())
        .data(state)
        .catch_all_error(|error: poem::Error| async move {
            if error.is_from_response() {
                // An `ApiError` already in the contract's shape.
                error.into_response()
            } else {
                error::error_response(error.status(), &error.to_string())
            }
        })
        .around(log_request)
}

/// The longest request target (path and query) served; a longer one is
/// 414. Proxies commonly stop at 8 KiB too; hyper itself refuses 64 KiB
/// before any of our code runs (answered in the error shape all the same,
/// see `hyper_errors`).
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Refuses, in the error shape, what no route can serve: a request
/// target over [`MAX_URI_BYTES`] (414), a path that does not decode to
/// UTF-8 (400), a malformed `Idempotency-Key` (400).
async fn check_request<E: Endpoint>(endpoint: Arc<E>, request: Request) -> poem::Result<Response> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if target > MAX_URI_BYTES {
        let mut response = error::error_response(
            StatusCode::URI_TOO_LONG,
            &format!("The request URI is {target} bytes long; the limit is {MAX_URI_BYTES}"),
        );
        response.headers_mut().insert(
            poem::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
        return Ok(response);
    }
    if std::str::from_utf8(&percent_decode(request.uri().path())).is_err() {
        return Ok(error::error_response(
            StatusCode::BAD_REQUEST,
            "Invalid path: its percent-encoded bytes are not UTF-8",
        ));
    }
    for value in request.headers().get_all("idempotency-key") {
        if let Err(e) = idempotency::check_key(value.as_bytes()) {
            return Ok(e.into_response());
        }
    }
    endpoint
        .call(request)
        .await
        .map(IntoResponse::into_response)
}

/// `%XX` sequences as the bytes they stand for (a `%` not followed by two
/// hex digits stays as it is).
fn percent_decode(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    decoded
}

/// Refuses a body over `max` bytes with 413 before a handler reads it:
/// by `Content-Length` when the client sends one, by reading at most
/// `max + 1` bytes of a chunked body otherwise.
async fn limit_body<E: Endpoint>(
    endpoint: Arc<E>,
    mut request: Request,
    max: usize,
    max_upload: u64,
) -> poem::Result<Response> {
    // The unread rest of the body makes the connection unusable: tell the
    // client not to reuse it.
    let too_large = || {
        let mut response = error::error_response(StatusCode::PAYLOAD_TOO_LARGE, "");
        response.headers_mut().insert(
            poem::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
        response
    };
    let declared = request
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Uploads stream to the upload area, which counts a chunked body itself.
    let is_upload = request.method() == poem::http::Method::POST
        && ["/import/database", "/import/storage", "/import/functions"]
            .iter()
            .any(|p| request.uri().path().ends_with(p));
    if is_upload {
        if declared.is_some_and(|length| length > max_upload) {
            let mut response = error::error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "The file is larger than the limit of {max_upload} bytes \
                     (SUPASCALE_MAX_UPLOAD_BYTES)"
                ),
            );
            response.headers_mut().insert(
                poem::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
            return Ok(response);
        }
        return endpoint
            .call(request)
            .await
            .map(IntoResponse::into_response);
    }
    match declared {
        Some(length) if length > max as u64 => return Ok(too_large()),
        Some(_) => {}
        None if request
            .headers()
            .contains_key(poem::http::header::TRANSFER_ENCODING) =>
        {
            use tokio::io::AsyncReadExt;
            let mut buffer = Vec::new();
            request
                .take_body()
                .into_async_read()
                .take(max as u64 + 1)
                .read_to_end(&mut buffer)
                .await
                .map_err(|e| poem::Error::from_string(e.to_string(), StatusCode::BAD_REQUEST))?;
            if buffer.len() > max {
                return Ok(too_large());
            }
            request.set_body(buffer);
        }
        None => {}
    }
    endpoint
        .call(request)
        .await
        .map(IntoResponse::into_response)
}

/// One log line per request, with a request id (taken from `X-Request-Id`
/// when the caller sends one) that every line inside the request carries
/// and the response echoes. The query string is not logged.
async fn log_request<E: Endpoint>(endpoint: Arc<E>, request: Request) -> poem::Result<Response> {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let span = tracing::info_span!("request", request_id = %request_id);
    let started = Instant::now();
    async move {
        let mut response = match endpoint.call(request).await {
            Ok(r) => r.into_response(),
            Err(e) if e.is_from_response() => e.into_response(),
            Err(e) => error::error_response(e.status(), &e.to_string()),
        };
        let status = response.status();
        let elapsed_ms = (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
        if status.is_server_error() {
            tracing::warn!(%method, %path, status = status.as_u16(), elapsed_ms, "request failed");
        } else {
            tracing::info!(%method, %path, status = status.as_u16(), elapsed_ms, "request");
        }
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        Ok(response)
    }
    .instrument(span)
    .await
}

/// Starts the API: control plane, keys, listener; serves until SIGTERM or
/// Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let destinations = supascale_shared::destinations::Destinations::from_config(
        &config.destinations,
        &config.data_dir,
    )?;
    // A wrong upload location fails at start, not at the first import.
    supascale_shared::uploads::UploadStore::new(&config, &destinations)
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let (db, master_key) = supascale_shared::open_control_plane(&config).await?;
    let redis = match &config.redis_url {
        None => None,
        Some(url) => {
            let client = redis::Client::open(url.expose())
                .context("SUPASCALE_REDIS_URL is not a valid Redis URL")?;
            let manager = tokio::time::timeout(
                Duration::from_secs(10),
                redis::aio::ConnectionManager::new(client),
            )
            .await
            .map_err(|_| anyhow::anyhow!("SUPASCALE_REDIS_URL: Redis did not answer within 10 s"))?
            .map_err(|e| {
                anyhow::anyhow!(
                    "SUPASCALE_REDIS_URL: cannot connect to Redis: {}",
                    supascale_shared::redact::redact_urls(&e.to_string())
                )
            })?;
            Some(manager)
        }
    };
    let queue = supascale_shared::jobs::JobQueue::open(&config, config.workers.max(1)).await?;
    let events = supascale_shared::jobs::events::EventBus::open(&config).await?;
    tokio::spawn(events.clone().listen());
    let new_admin_key =
        auth::bootstrap_keys(&db, config.bootstrap_api_key.as_ref().map(|k| k.expose())).await?;

    let addr = config.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("SUPASCALE_LISTEN: cannot listen on {addr}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    // stdout, not the log: this is what the operator reads once.
    println!("Supascale Backups API listening on http://{local}");
    println!(
        "  deployment: {:?}, API docs: http://{local}/docs",
        config.deployment()
    );
    if let Some(key) = new_admin_key {
        println!("  admin API key (shown once, store it now): {key}");
        println!("  try: curl -H 'X-API-Key: {key}' http://{local}/api/v1/backups");
    }
    tracing::info!(%local, deployment = ?config.deployment(), "listening");

    let list_cache = Arc::new(list_cache::ListCache::default());
    if config.list_cache && config.deployment() == supascale_shared::Deployment::ScaleOut {
        let cache = list_cache.clone();
        let url = config.database_url();
        tokio::spawn(async move { cache.listen(url).await });
    }
    // One signal for the server and the in-process workers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let workers = if config.workers > 0 {
        let ctx = std::sync::Arc::new(supascale_worker::JobContext {
            db: db.clone(),
            destinations: destinations.clone(),
            master_key: master_key.clone(),
            config: Arc::new(config.clone()),
            events: events.clone(),
            queue: queue.clone(),
            worker_id: supascale_worker::worker_id(),
        });
        let run = supascale_worker::run(ctx, config.workers, stopped(stop_rx.clone()));
        Some(tokio::spawn(run))
    } else {
        None
    };
    let state = AppState {
        db,
        master_key,
        config: Arc::new(config),
        redis,
        keys: Arc::new(key_cache::KeyCache::default()),
        destinations: Arc::new(destinations),
        queue,
        events,
        list_cache,
    };
    let limits = server::Limits::from_config(&state.config);
    server::serve(
        listener,
        app(state).into_endpoint(),
        limits,
        stopped(stop_rx),
        Duration::from_secs(30),
    )
    .await?;
    if let Some(workers) = workers {
        workers.await??;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
