//! `JsonBody<T>`: a JSON request body that documents itself like
//! poem-openapi's `Json<T>` but parses with serde, so that an error names
//! the field (`id: invalid type: integer, expected a string`) and unknown
//! fields are refused instead of silently ignored (a mistyped
//! `forceRestore` must not pass unnoticed).

use poem::http::StatusCode;
use poem::{FromRequest, Request, RequestBody};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;

pub struct JsonBody<T>(pub T);

const CONTENT_TYPE: &str = "application/json; charset=utf-8";

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn bad_request(message: String) -> poem::Error {
    poem::Error::from_string(message, StatusCode::BAD_REQUEST)
}

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        is_json(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + DeserializeOwned + Send> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        if data.iter().all(u8::is_ascii_whitespace) {
            return Err(bad_request(
                "Invalid request body: a JSON object is required".into(),
            ));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&data);
        serde_path_to_error::deserialize(&mut deserializer)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path == "." || path.is_empty() {
                    bad_request(format!("Invalid request body: {inner}"))
                } else {
                    bad_request(format!("Invalid request body: {path}: {inner}"))
                }
            })
    }
}

impl<'a, T: Type + DeserializeOwned + Send> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: CONTENT_TYPE,
                schema: <Self as Payload>::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        match request.content_type() {
            Some(content_type) if is_json(content_type) => {
                <Self as ParsePayload>::from_request(request, body).await
            }
            Some(other) => Err(bad_request(format!(
                "Content-Type must be application/json, not {other}"
            ))),
            None => Err(bad_request("Content-Type must be application/json".into())),
        }
    }
}

/// A JSON response serialised ahead of time (e.g. a cached page), documented
/// with the schema of `T`.
pub struct JsonBytes<T> {
    body: bytes::Bytes,
    _schema: std::marker::PhantomData<fn() -> T>,
}

impl<T: poem_openapi::types::ToJSON> JsonBytes<T> {
    pub fn new(value: &T) -> Self {
        let json = value.to_json().unwrap_or(serde_json::Value::Null);
        Self {
            body: serde_json::to_vec(&json)
                .expect("a JSON value serialises")
                .into(),
            _schema: std::marker::PhantomData,
        }
    }
}

impl<T> JsonBytes<T> {
    /// A body kept from an earlier [`JsonBytes::new`] of the same `T`
    /// (the backup list cache keeps bytes, not values).
    pub fn cached(body: bytes::Bytes) -> Self {
        Self {
            body,
            _schema: std::marker::PhantomData,
        }
    }

    pub fn body(&self) -> bytes::Bytes {
        self.body.clone()
    }
}

impl<T> Clone for JsonBytes<T> {
    fn clone(&self) -> Self {
        Self {
            body: self.body.clone(),
            _schema: std::marker::PhantomData,
        }
    }
}

impl<T: Send> poem::IntoResponse for JsonBytes<T> {
    fn into_response(self) -> poem::Response {
        poem::Response::builder()
            .content_type(CONTENT_TYPE)
            .body(self.body)
    }
}

impl<T: Type + Send> poem_openapi::ApiResponse for JsonBytes<T> {
    fn meta() -> poem_openapi::registry::MetaResponses {
        poem_openapi::registry::MetaResponses {
            responses: vec![poem_openapi::registry::MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: CONTENT_TYPE,
                    schema: T::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}
