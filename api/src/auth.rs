//! Authentication and authorisation.
//!
//! A key arrives as `X-API-Key: <key>` or `Authorization: Bearer <key>`; it
//! is hashed and looked up, so the stored hash is all the database holds.
//! Verified keys are cached ([`crate::key_cache`]).

use chrono::Utc;
use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::{ApiKey, Bearer};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter,
};
use supascale_shared::api_key::{self, Permission};
use supascale_shared::entities::{api_key as api_key_row, setting};

pub use crate::principal::Principal;
use crate::state::AppState;

/// Verifies a presented key against the control plane.
pub async fn verify(state: &AppState, key: &str) -> poem::Result<Principal> {
    let unauthorized = |m: &str| -> poem::Error {
        poem::Error::from_string(m.to_string(), poem::http::StatusCode::UNAUTHORIZED)
    };
    let hash = api_key::hash(key.trim());
    let verdict = match state.keys.get(&hash) {
        Some(v) => v,
        None => {
            let row = api_key_row::Entity::find()
                .filter(api_key_row::Column::KeyHash.eq(hash.clone()))
                .one(&state.db)
                .await
                .map_err(|e| {
                    let e = crate::error::db_error(e);
                    poem::Error::from_string("Control-plane database is unavailable", e.status())
                })?;
            let verdict = match row {
                // The index found the row by hash; compare again in constant time.
                Some(row) if api_key::matches(key.trim(), &row.key_hash) => {
                    if row.revoked_at.is_some() {
                        Err("API key has been revoked".to_string())
                    } else if row.expires_at.is_some_and(|at| at <= Utc::now()) {
                        Err("API key has expired".to_string())
                    } else {
                        Ok(principal_from_row(&row))
                    }
                }
                _ => Err("Invalid API key".to_string()),
            };
            state.keys.put(hash, verdict.clone());
            verdict
        }
    };
    match verdict {
        // An expiry that passed while the verdict sat in the cache.
        Ok(p) if p.expires_at.is_some_and(|at| at <= Utc::now()) => {
            Err(unauthorized("API key has expired"))
        }
        Ok(p) => Ok(p),
        Err(message) => Err(unauthorized(&message)),
    }
}

fn principal_from_row(row: &api_key_row::Model) -> Principal {
    let names: Vec<String> = serde_json::from_str(&row.permissions).unwrap_or_default();
    Principal {
        key_id: row.id.clone(),
        permissions: names.iter().filter_map(|n| Permission::parse(n)).collect(),
        project_ids: row
            .project_ids
            .as_deref()
            .and_then(|ids| serde_json::from_str(ids).ok()),
        expires_at: row.expires_at,
    }
}

async fn check_api_key(req: &Request, key: ApiKey) -> poem::Result<Principal> {
    let state = req.data::<AppState>().expect("AppState is attached");
    verify(state, &key.key).await
}

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let state = req.data::<AppState>().expect("AppState is attached");
    verify(state, &bearer.token).await
}

/// `Authorization: Bearer <key>`: the same keys, for clients that only speak bearer tokens.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_bearer")]
pub struct BearerAuth(Principal);

/// `X-API-Key: <key>`.
#[derive(SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "X-API-Key",
    key_in = "header",
    checker = "check_api_key"
)]
pub struct ApiKeyAuth(Principal);

/// Either way of presenting a key. `ApiKey` is tried last, so its verdict
/// ("revoked", "expired") is the one reported.
#[derive(SecurityScheme)]
pub enum Auth {
    Bearer(BearerAuth),
    ApiKey(ApiKeyAuth),
}

impl Auth {
    pub fn principal(&self) -> &Principal {
        match self {
            Auth::Bearer(b) => &b.0,
            Auth::ApiKey(k) => &k.0,
        }
    }
}

/// Stores a new key row; returns its id.
pub async fn insert_key(
    state_db: &sea_orm::DatabaseConnection,
    name: &str,
    key: &str,
    permissions: &[Permission],
    project_ids: Option<&[String]>,
    expires_at: Option<chrono::DateTime<Utc>>,
) -> Result<api_key_row::Model, sea_orm::DbErr> {
    let names: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
    let row = api_key_row::ActiveModel {
        id: Set(format!("key-{}", uuid::Uuid::now_v7().simple())),
        name: Set(name.to_string()),
        key_prefix: Set(api_key::display_prefix(key)),
        key_hash: Set(api_key::hash(key)),
        permissions: Set(serde_json::to_string(&names).expect("strings serialise")),
        project_ids: Set(
            project_ids.map(|ids| serde_json::to_string(ids).expect("strings serialise"))
        ),
        expires_at: Set(expires_at),
        created_at: Set(crate::now()),
        revoked_at: Set(None),
    };
    row.insert(state_db).await
}

/// At start: store the bootstrap key when one is configured; on a first
/// start with no key at all, create an admin key and return it so the
/// caller prints it once. Several processes starting together create at
/// most one such key (a settings row is the latch).
pub async fn bootstrap_keys(
    db: &sea_orm::DatabaseConnection,
    bootstrap: Option<&str>,
) -> anyhow::Result<Option<String>> {
    if let Some(key) = bootstrap {
        if key.len() < 20 {
            anyhow::bail!("SUPASCALE_BOOTSTRAP_API_KEY must be at least 20 characters long");
        }
        let exists = api_key_row::Entity::find()
            .filter(api_key_row::Column::KeyHash.eq(api_key::hash(key)))
            .count(db)
            .await?
            > 0;
        if !exists {
            insert_key(db, "bootstrap", key, &[Permission::Admin], None, None).await?;
        }
        return Ok(None);
    }
    let any = api_key_row::Entity::find().count(db).await? > 0;
    if any {
        return Ok(None);
    }
    let latch = setting::Entity::insert(setting::ActiveModel {
        key: Set("initial_admin_key_created".into()),
        value: Set(Utc::now().to_rfc3339()),
    })
    .on_conflict_do_nothing_on([setting::Column::Key])
    .exec_without_returning(db)
    .await?;
    if !matches!(latch, sea_orm::TryInsertResult::Inserted(n) if n > 0) {
        return Ok(None);
    }
    let key = api_key::generate();
    insert_key(db, "initial admin", &key, &[Permission::Admin], None, None).await?;
    Ok(Some(key))
}
