use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub kind: String,
    pub project_id: Option<String>,
    pub status: String,
    pub attempt: i32,
    pub max_attempts: i32,
    /// JSON of the job's parameters, never a secret.
    pub payload: String,
    /// Secrets the job needs, sealed with the master key; wiped at the end.
    pub secrets_enc: Option<String>,
    pub progress: Option<String>,
    pub warnings: String,
    pub error: Option<String>,
    /// `invalid_input` when the job failed because of what the caller sent
    /// (its waiting request answers 400); otherwise empty.
    pub error_kind: Option<String>,
    /// What a job without a row of its own (an import) found, as JSON.
    pub result: Option<String>,
    pub worker_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// What the idempotent request asked for, so that the same key with a
    /// different request is refused rather than answered with another job.
    pub request_hash: Option<String>,
    /// Set by `POST /jobs/{id}/cancel`; the worker holding the job stops it.
    pub cancel_requested: bool,
    /// A job put back for another attempt waits until then (backoff).
    pub run_after: Option<DateTimeUtc>,
    pub enqueued_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    pub heartbeat_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
