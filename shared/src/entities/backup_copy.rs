use sea_orm::entity::prelude::*;

/// A copy of a backup's artifact on another destination, under the same
/// key as the primary (`POST /backups/{id}/copy`, `copyTo`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "backup_copies")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub backup_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub destination: String,
    pub path: String,
    pub size: i64,
    pub sha256: Option<String>,
    /// `pending | in_progress | completed | failed`
    pub status: String,
    pub error: Option<String>,
    pub job_id: Option<String>,
    pub created_at: DateTimeUtc,
    pub completed_at: Option<DateTimeUtc>,
    /// The destination refuses to delete the object before this.
    pub locked_until: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
