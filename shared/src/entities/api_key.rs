use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    /// The first characters of the key, to tell keys apart in a listing.
    pub key_prefix: String,
    /// SHA-256 of the whole key, hex: the key itself is never stored.
    pub key_hash: String,
    /// JSON array of permission names.
    pub permissions: String,
    /// JSON array of project ids the key is limited to; `None` = all.
    pub project_ids: Option<String>,
    pub expires_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
