//! `/api-keys`: create (the key is shown once), list (never the key), revoke.
//! Admin only, and only with a key that is not limited to projects.

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, QueryOrder};
use supascale_shared::api_key::{self, Permission};
use supascale_shared::domain;
use supascale_shared::entities::api_key as api_key_row;

use super::ApiTags;
use crate::answers::Message;
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::payload::JsonBody;
use crate::state::AppState;
use crate::timestamp::Timestamp;

#[derive(Debug, Object, serde::Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApiKey {
    pub name: String,
    /// Any of `backups:read`, `backups:write`, `projects:read`,
    /// `projects:write`, `admin` (which implies all).
    pub permissions: Vec<String>,
    /// Limit the key to these projects: it sees nothing of others.
    pub project_ids: Option<Vec<String>>,
    /// When the key stops working.
    pub expires_at: Option<Timestamp>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ApiKeyInfo {
    pub id: String,
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub permissions: Vec<String>,
    #[oai(skip_serializing_if_is_none)]
    pub project_ids: Option<Vec<String>>,
    #[oai(skip_serializing_if_is_none)]
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    #[oai(skip_serializing_if_is_none)]
    pub revoked_at: Option<Timestamp>,
}

impl From<api_key_row::Model> for ApiKeyInfo {
    fn from(row: api_key_row::Model) -> Self {
        Self {
            id: row.id,
            name: row.name,
            prefix: row.key_prefix,
            permissions: serde_json::from_str(&row.permissions).unwrap_or_default(),
            project_ids: row
                .project_ids
                .as_deref()
                .and_then(|ids| serde_json::from_str(ids).ok()),
            expires_at: row.expires_at.map(Into::into),
            created_at: row.created_at.into(),
            revoked_at: row.revoked_at.map(Into::into),
        }
    }
}

#[derive(Debug, Object)]
pub struct CreatedApiKey {
    #[oai(flatten)]
    pub info: ApiKeyInfo,
    /// The key itself. It is shown this once and cannot be recovered.
    pub key: String,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CreatedApiKeyEnvelope {
    pub success: bool,
    pub api_key: CreatedApiKey,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyInfo>,
}

#[derive(ApiResponse)]
pub enum ApiKeyCreated {
    /// The key is created; `apiKey.key` is shown only now.
    #[oai(status = 201)]
    Created(Json<CreatedApiKeyEnvelope>),
}

pub struct ApiKeysApi;

#[OpenApi(tag = "ApiTags::ApiKeys")]
impl ApiKeysApi {
    /// Create an API key
    #[oai(path = "/api-keys", method = "post", operation_id = "createApiKey")]
    async fn create(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        body: JsonBody<CreateApiKey>,
    ) -> ApiResult<ApiKeyCreated> {
        auth.principal().require_unrestricted_admin()?;
        let input = body.0;
        let name = input.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ApiError::bad_request("name must be 1 to 200 characters"));
        }
        if input.permissions.is_empty() {
            return Err(ApiError::bad_request(
                "permissions must name at least one permission",
            ));
        }
        let mut permissions = Vec::new();
        for name in &input.permissions {
            let permission = Permission::parse(name).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "permissions: {name:?} is not one of {}",
                    Permission::ALL.map(Permission::as_str).join(", ")
                ))
            })?;
            if !permissions.contains(&permission) {
                permissions.push(permission);
            }
        }
        if let Some(ids) = &input.project_ids {
            if ids.is_empty() {
                return Err(ApiError::bad_request(
                    "projectIds must name at least one project (omit it for all projects)",
                ));
            }
            if let Some(bad) = ids.iter().find(|id| !domain::valid_project_id(id)) {
                return Err(ApiError::bad_request(format!(
                    "projectIds: {bad:?} is not a project id"
                )));
            }
        }
        if let Some(at) = input.expires_at
            && at.0 <= chrono::Utc::now()
        {
            return Err(ApiError::bad_request("expiresAt must be in the future"));
        }
        let key = api_key::generate();
        let row = crate::auth::insert_key(
            &state.db,
            name,
            &key,
            &permissions,
            input.project_ids.as_deref(),
            input.expires_at.map(|t| t.0),
        )
        .await?;
        tracing::info!(key_id = %row.id, "API key created");
        Ok(ApiKeyCreated::Created(Json(CreatedApiKeyEnvelope {
            success: true,
            api_key: CreatedApiKey {
                info: row.into(),
                key,
            },
        })))
    }

    /// List API keys
    ///
    /// Never shows the keys themselves.
    #[oai(path = "/api-keys", method = "get", operation_id = "listApiKeys")]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
    ) -> ApiResult<Json<ApiKeyList>> {
        auth.principal().require_unrestricted_admin()?;
        let rows = api_key_row::Entity::find()
            .order_by_asc(api_key_row::Column::CreatedAt)
            .all(&state.db)
            .await?;
        Ok(Json(ApiKeyList {
            api_keys: rows.into_iter().map(ApiKeyInfo::from).collect(),
        }))
    }

    /// Revoke an API key
    ///
    /// The key stops working at once on this server, and within 5 seconds on
    /// every other API process.
    #[oai(
        path = "/api-keys/:id",
        method = "delete",
        operation_id = "revokeApiKey"
    )]
    async fn revoke(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
    ) -> ApiResult<Json<Message>> {
        auth.principal().require_unrestricted_admin()?;
        let row = api_key_row::Entity::find_by_id(id.0.clone())
            .one(&state.db)
            .await?
            .ok_or(ApiError::ApiKeyNotFound)?;
        if row.revoked_at.is_none() {
            let mut active: api_key_row::ActiveModel = row.into();
            active.revoked_at = Set(Some(crate::now()));
            active.update(&state.db).await?;
        }
        state.keys.forget_key(&id.0);
        tracing::info!(key_id = %id.0, "API key revoked");
        Ok(Json(Message {
            success: true,
            message: "API key revoked".into(),
        }))
    }
}
