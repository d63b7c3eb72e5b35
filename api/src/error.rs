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
/// OpenAPI document.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "from_bad_request")]
pub enum ApiError {
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

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(Json(ErrorBody::new(message)))
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Unauthorized(Json(ErrorBody::new(message)))
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(Json(ErrorBody::new(message)))
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(Json(ErrorBody::new(message)))
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(Json(ErrorBody::new(message)))
    }
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::PayloadTooLarge(Json(ErrorBody::new(message)))
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(Json(ErrorBody::new(message)))
    }
    pub fn insufficient_storage(message: impl Into<String>) -> Self {
        Self::InsufficientStorage(Json(ErrorBody::new(message)))
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(Json(ErrorBody::new(message)))
    }

    pub fn backup_not_found() -> Self {
        Self::not_found("Backup not found")
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// poem-openapi calls this when a parameter or body does not parse; its
/// message names the parameter or field.
fn from_bad_request(error: poem::Error) -> ApiError {
    match error.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge(Json(ErrorBody::new("Request body is too large")))
        }
        StatusCode::UNAUTHORIZED => match error.to_string().as_str() {
            "" | "unauthorized" | "authorization error" => {
                ApiError::unauthorized("Missing or invalid API key (send it as X-API-Key)")
            }
            message => ApiError::unauthorized(message),
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
/// destination or control plane that did not answer, a 503.
impl From<supascale_shared::restore::plan::PlanError> for ApiError {
    fn from(error: supascale_shared::restore::plan::PlanError) -> Self {
        use supascale_shared::restore::plan::PlanError;
        match error {
            PlanError::ControlPlane(e) => db_error(e),
            PlanError::Sealed(cause) => ApiError::internal(cause),
            e if e.is_temporary() => ApiError::unavailable(e.to_string()),
            e => ApiError::bad_request(e.to_string()),
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
