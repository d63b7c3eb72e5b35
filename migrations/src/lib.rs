//! Control-plane schema. Both binaries run [`Migrator::up`] at start; every
//! migration is idempotent, so several processes starting at once is safe.
//!
//! The DDL is written per backend (SQLite for the embedded default, PostgreSQL
//! for scale-out) because the parts that matter most, the triggers that keep
//! `backup_stats` exact, have no portable form.

pub use sea_orm_migration::prelude::*;

mod m20261127_000001_control_plane;
mod m20261127_000002_job_events;
mod m20261127_000003_waiting_jobs;
mod m20261127_000004_backup_verification;
mod m20261127_000005_import_errors;
mod m20261127_000006_claim_function;
mod m20261202_000007_verify_projects_and_attempts;
mod m20261203_000008_destination_health;
mod m20261203_000009_backup_copies;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_control_plane::Migration),
            Box::new(m20261127_000002_job_events::Migration),
            Box::new(m20261127_000003_waiting_jobs::Migration),
            Box::new(m20261127_000004_backup_verification::Migration),
            Box::new(m20261127_000005_import_errors::Migration),
            Box::new(m20261127_000006_claim_function::Migration),
            Box::new(m20261202_000007_verify_projects_and_attempts::Migration),
            Box::new(m20261203_000008_destination_health::Migration),
            Box::new(m20261203_000009_backup_copies::Migration),
        ]
    }
}
