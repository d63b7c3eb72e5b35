//! What the API and the workers share: configuration, control-plane rows,
//! secrets at rest, and the words of the contract. Nothing here knows HTTP.

pub mod api_key;
pub mod artifact;
pub mod config;
pub mod control_plane;
pub mod destinations;
pub mod disk;
pub mod domain;
pub mod entities;
pub mod import;
pub mod jobs;
pub mod lift_shift;
pub mod master_key;
pub mod memory;
pub mod pgtools;
pub mod private_fs;
pub mod project_folders;
pub mod redact;
pub mod redis_connection;
pub mod replicas;
pub mod restore;
pub mod secret;
pub mod telemetry;
pub mod uploads;

pub use config::{Config, Deployment};
pub use master_key::MasterKey;
pub use secret::Secret;

/// Starts what every process needs before it serves or works: the database,
/// its migrations, and the master key check.
pub async fn open_control_plane(
    config: &Config,
) -> anyhow::Result<(sea_orm::DatabaseConnection, MasterKey)> {
    let create_key = config.deployment() == Deployment::Embedded;
    let key = MasterKey::load(&config.master_key_path(), create_key)?;
    let db = control_plane::connect(config).await?;
    control_plane::migrate(&db).await?;
    control_plane::check_master_key(&db, &key).await?;
    Ok((db, key))
}
