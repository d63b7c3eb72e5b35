use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "projects")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    /// The database URL sealed with the master key (see `MasterKey`).
    pub database_url_enc: String,
    /// The parts of the URL that are safe to show.
    pub db_host: String,
    pub db_port: i32,
    pub db_name: String,
    pub db_user: String,
    pub root_dir: String,
    pub storage_dir: String,
    pub functions_dir: String,
    /// JSON array of extra config paths registered on the project.
    pub config_paths: String,
    /// JSON array: the program and arguments run after a database restore.
    pub post_restore_command: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
