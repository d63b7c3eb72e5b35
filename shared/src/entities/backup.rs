use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "backups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// No foreign key: deleting a project keeps its backups.
    pub project_id: String,
    /// The project's name when the backup was taken.
    pub project_name: String,
    pub backup_type: String,
    pub status: String,
    pub destination: String,
    pub path: String,
    pub size: i64,
    pub encrypted: bool,
    pub compression: String,
    pub sha256: Option<String>,
    pub duration_secs: Option<i64>,
    pub error: Option<String>,
    pub manifest: Option<String>,
    pub job_id: Option<String>,
    pub created_at: DateTimeUtc,
    pub completed_at: Option<DateTimeUtc>,
    pub verified_at: Option<DateTimeUtc>,
    /// Why the last verification found the backup unusable.
    pub verify_error: Option<String>,
    /// The destination refuses to delete the artifact before this
    /// (`immutable_days`).
    pub locked_until: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
