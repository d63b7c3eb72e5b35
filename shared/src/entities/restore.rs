use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "restores")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub backup_id: String,
    /// The project restored into.
    pub project_id: String,
    /// JSON array of the restored components.
    pub restore_types: String,
    pub status: String,
    /// JSON array of warning strings.
    pub warnings: String,
    pub error: Option<String>,
    pub duration_secs: Option<i64>,
    pub job_id: Option<String>,
    pub created_at: DateTimeUtc,
    pub restored_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
