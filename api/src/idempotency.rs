//! `Idempotency-Key` on job-creating requests: a client that retries a
//! request whose answer it never saw gets the first request's job back
//! instead of a second backup or restore.
//!
//! The stored key is a hash of the API key's id and the client's key, so
//! two clients cannot collide and the raw value is never stored. A key is
//! good for 24 hours; reusing it with a different request is a 409.

use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};
use supascale_shared::entities::job;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};

/// How long a key stands for its first request.
pub const KEY_LIFETIME: chrono::Duration = chrono::Duration::hours(24);

pub struct Idempotency {
    key_hash: String,
    request_hash: String,
}

impl Idempotency {
    /// Checks the header (see [`check_key`]) and hashes it with the
    /// caller's key id and the request.
    pub fn new(principal: &Principal, key: &str, request: &str) -> ApiResult<Self> {
        let key = check_key(key.as_bytes())?;
        Ok(Self {
            key_hash: hex::encode(Sha256::digest(format!("{}\n{key}", principal.key_id))),
            request_hash: hex::encode(Sha256::digest(request)),
        })
    }

    /// The job the key already stands for, if any. A key older than
    /// [`KEY_LIFETIME`] is released (so that it may be used again); the same
    /// key with a different request is a 409.
    pub async fn find(&self, db: &DatabaseConnection) -> ApiResult<Option<job::Model>> {
        let Some(first) = job::Entity::find()
            .filter(job::Column::IdempotencyKey.eq(self.key_hash.clone()))
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        if crate::now() - first.enqueued_at > KEY_LIFETIME {
            job::Entity::update_many()
                .col_expr(
                    job::Column::IdempotencyKey,
                    Expr::value(Option::<String>::None),
                )
                .filter(job::Column::Id.eq(first.id))
                .exec(db)
                .await?;
            return Ok(None);
        }
        if first.request_hash.as_deref() != Some(self.request_hash.as_str()) {
            return Err(ApiError::IdempotencyKeyReused);
        }
        Ok(Some(first))
    }

    /// Marks a new job as the key's.
    pub fn stamp(&self, job: &mut job::ActiveModel) {
        job.idempotency_key = Set(Some(self.key_hash.clone()));
        job.request_hash = Set(Some(self.request_hash.clone()));
    }
}

/// The header's value as sent: 1 to 255 visible ASCII characters
/// (surrounding blanks aside), else 400 naming the header. Checked on the
/// raw bytes because the typed header parameter drops a value that is not
/// ASCII, which would turn a retry-safe request into an unprotected one.
pub fn check_key(raw: &[u8]) -> ApiResult<&str> {
    let key = raw.trim_ascii();
    if key.is_empty() || key.len() > 255 || !key.iter().all(u8::is_ascii_graphic) {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(std::str::from_utf8(key).expect("ASCII"))
}

/// Whether an insert failed because another request took the key first.
pub fn is_conflict(error: &DbErr) -> bool {
    matches!(
        error.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
