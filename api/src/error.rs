//! Every error the API answers, in the contract's shape
//! `{"success": false, "error": "…"}`, and the one place that maps a cause
//! to its HTTP status.

use poem::http::StatusCode;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

/// The contract's error body.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    /// What went wrong, in words a user can act on; never a secret.
    pub error: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            success: false,
            error: error.into(),
        }
    }
}

/// Every error status an endpoint may answer, declared once for the
/// OpenAPI document; [`ApiError`] becomes one of these.
#[derive(Debug, ApiResponse)]
pub enum ErrorResponse {
    /// The request is malformed or names something that does not exist.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No API key, or one that is unknown, revoked or expired.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The API key lacks the permission this endpoint needs.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// The resource does not exist (or the key may not see it).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The resource is in a state that does not allow this.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The request body is larger than the configured limit.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The operation failed.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The upload does not fit on the server's disk beside the space it
    /// keeps free (`SUPASCALE_DISK_RESERVE_BYTES`); nothing was kept.
    #[oai(status = 507)]
    InsufficientStorage(Json<ErrorBody>),
    /// A dependency (control-plane database, queue) is unreachable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// What went wrong with a request, by cause. [`ApiError::status`] and its
/// `Display` are the one table of statuses and words; handlers name the
/// cause and never choose a status.
#[derive(Debug)]
pub enum ApiError {
    // 400: the client can fix the request.
    /// A field, parameter or header that is not acceptable; the message
    /// names it and says what is allowed.
    InvalidField(String),
    /// The request names a project that does not exist (or the key may not
    /// see), in its body.
    UnknownProject,
    /// A job ended because of what the client sent (an upload that is not
    /// what it claims, a hostile archive); the job's own words.
    RejectedInput(String),
    /// Restore planning (see `shared::restore::plan`).
    Plan(supascale_shared::restore::plan::PlanError),
    // 401, 403
    /// No API key, or one that is unknown, revoked or expired.
    Unauthenticated(String),
    /// The key may not do this; the message says what it needs.
    NotPermitted(String),
    // 404
    ProjectNotFound,
    BackupNotFound,
    JobNotFound,
    RestoreNotFound,
    ApiKeyNotFound,
    // 409
    /// The thing is in a state that does not allow this (a running backup,
    /// a job already over, an id taken).
    WrongState(String),
    /// The `Idempotency-Key` stands for another request.
    IdempotencyKeyReused,
    /// A concurrent request holds the `Idempotency-Key`.
    IdempotencyKeyInUse,
    // 413, 507
    TooLarge(String),
    /// The server's disk would go below its reserve.
    DiskFull(String),
    // 500
    /// The job ran and failed: `<Kind> failed: <cause>`.
    JobFailed(String),
    /// A fault of ours; the message holds no secret.
    Internal(String),
    // 503
    /// The artifact's destination did not answer.
    DestinationDown,
    /// A dependency (control plane, queue, upload area) did not answer.
    Unavailable(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// The status of each cause: the one place that chooses it.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidField(_) | Self::UnknownProject | Self::RejectedInput(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Plan(e) if e.is_temporary() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Plan(supascale_shared::restore::plan::PlanError::ControlPlane(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::Plan(supascale_shared::restore::plan::PlanError::Sealed(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::Plan(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::NotPermitted(_) => StatusCode::FORBIDDEN,
            Self::ProjectNotFound
            | Self::BackupNotFound
            | Self::JobNotFound
            | Self::RestoreNotFound
            | Self::ApiKeyNotFound => StatusCode::NOT_FOUND,
            Self::WrongState(_) | Self::IdempotencyKeyReused | Self::IdempotencyKeyInUse => {
                StatusCode::CONFLICT
            }
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::JobFailed(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::DestinationDown | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    // Shorthands for the causes that carry their own words.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::InvalidField(message.into())
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::NotPermitted(message.into())
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::WrongState(message.into())
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(message.into())
    }

    fn response(&self) -> ErrorResponse {
        let body = Json(ErrorBody::new(self.to_string()));
        match self.status() {
            StatusCode::BAD_REQUEST => ErrorResponse::BadRequest(body),
            StatusCode::UNAUTHORIZED => ErrorResponse::Unauthorized(body),
            StatusCode::FORBIDDEN => ErrorResponse::Forbidden(body),
            StatusCode::NOT_FOUND => ErrorResponse::NotFound(body),
            StatusCode::CONFLICT => ErrorResponse::Conflict(body),
            StatusCode::PAYLOAD_TOO_LARGE => ErrorResponse::PayloadTooLarge(body),
            StatusCode::INSUFFICIENT_STORAGE => ErrorResponse::InsufficientStorage(body),
            StatusCode::SERVICE_UNAVAILABLE => ErrorResponse::Unavailable(body),
            _ => ErrorResponse::Internal(body),
        }
    }
}

/// The words of each cause.
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidField(m)
            | Self::RejectedInput(m)
            | Self::Unauthenticated(m)
            | Self::NotPermitted(m)
            | Self::WrongState(m)
            | Self::TooLarge(m)
            | Self::DiskFull(m)
            | Self::JobFailed(m)
            | Self::Internal(m)
            | Self::Unavailable(m) => f.write_str(m),
            Self::Plan(e) => write!(f, "{e}"),
            Self::UnknownProject | Self::ProjectNotFound => f.write_str("Project not found"),
            Self::BackupNotFound => f.write_str("Backup not found"),
            Self::JobNotFound => f.write_str("Job not found"),
            Self::RestoreNotFound => f.write_str("Restore not found"),
            Self::ApiKeyNotFound => f.write_str("API key not found"),
            Self::IdempotencyKeyReused => {
                f.write_str("Idempotency-Key was already used for a different request")
            }
            Self::IdempotencyKeyInUse => f.write_str("Idempotency-Key is in use"),
            Self::DestinationDown => f.write_str("The backup's destination does not answer"),
        }
    }
}

impl poem::IntoResponse for ApiError {
    fn into_response(self) -> poem::Response {
        self.response().into_response()
    }
}

impl From<ApiError> for poem::Error {
    fn from(error: ApiError) -> Self {
        error.response().into()
    }
}

/// For the OpenAPI document, an [`ApiError`] is any of [`ErrorResponse`].
impl ApiResponse for ApiError {
    const BAD_REQUEST_HANDLER: bool = true;

    fn meta() -> poem_openapi::registry::MetaResponses {
        ErrorResponse::meta()
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        ErrorResponse::register(registry)
    }

    fn from_parse_request_error(error: poem::Error) -> Self {
        from_bad_request(error)
    }
}

/// poem-openapi calls this when a parameter or body does not parse; its
/// message names the parameter or field.
fn from_bad_request(error: poem::Error) -> ApiError {
    match error.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge("Request body is too large".into()),
        StatusCode::UNAUTHORIZED => match error.to_string().as_str() {
            "" | "unauthorized" | "authorization error" => ApiError::Unauthenticated(
                "Missing or invalid API key (send it as X-API-Key)".into(),
            ),
            message => ApiError::Unauthenticated(message.into()),
        },
        _ => ApiError::bad_request(describe_parse_error(&error.to_string())),
    }
}

/// poem-openapi's messages are precise but read like a compiler's; keep
/// their substance (which field, what was expected).
pub fn describe_parse_error(message: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("parse request payload error: ") {
        return format!("Invalid request body: {rest}");
    }
    if let Some(rest) = message.strip_prefix("failed to parse parameter ") {
        return format!("Invalid parameter {rest}");
    }
    message.to_string()
}

/// Turns a database error into a 503 or 500 without leaking a connection
/// string, and logs the detail.
pub fn db_error(error: sea_orm::DbErr) -> ApiError {
    let detail = supascale_shared::redact::redact_urls(&error.to_string());
    tracing::error!(error = %detail, "control-plane database error");
    match error {
        sea_orm::DbErr::ConnectionAcquire(_) | sea_orm::DbErr::Conn(_) => {
            ApiError::unavailable("Control-plane database is unavailable")
        }
        _ => ApiError::internal("Internal error while reading the control plane"),
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(error: sea_orm::DbErr) -> Self {
        db_error(error)
    }
}

/// A restore that cannot be planned: what the client can fix is a 400; a
/// destination that did not answer, a 503; the control plane, as
/// [`db_error`] says.
impl From<supascale_shared::restore::plan::PlanError> for ApiError {
    fn from(error: supascale_shared::restore::plan::PlanError) -> Self {
        match error {
            supascale_shared::restore::plan::PlanError::ControlPlane(e) => db_error(e),
            e => ApiError::Plan(e),
        }
    }
}

/// The body of any error poem answers outside an endpoint (unknown route,
/// wrong method, authentication) in the contract's shape.
pub fn error_response(status: StatusCode, message: &str) -> poem::Response {
    let message = match status {
        StatusCode::NOT_FOUND => "Not found".to_string(),
        StatusCode::METHOD_NOT_ALLOWED => "Method not allowed".to_string(),
        StatusCode::UNAUTHORIZED
            if message.is_empty()
                || message == "unauthorized"
                || message == "authorization error" =>
        {
            "Missing or invalid API key (send it as X-API-Key)".to_string()
        }
        StatusCode::PAYLOAD_TOO_LARGE if message.is_empty() => {
            "Request body is too large".to_string()
        }
        _ if status.is_server_error() => "Internal error".to_string(),
        _ => describe_parse_error(message),
    };
    poem::Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(error_json(&message))
}

/// `{"success": false, "error": message}` as JSON text.
pub fn error_json(message: &str) -> String {
    serde_json::json!({"success": false, "error": message}).to_string()
}
