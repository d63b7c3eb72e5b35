use sea_orm::entity::prelude::*;

/// One event of a job, numbered per job from 1: what an SSE stream sends as
/// its `id`, and what `Last-Event-ID` resumes after.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "job_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub job_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    /// `start | step | warning | complete | error`
    pub event: String,
    /// One line of JSON.
    pub data: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
