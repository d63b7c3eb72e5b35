//! Control-plane rows (sea-orm). The schema itself lives in `migrations/`.

pub mod api_key;
pub mod backup;
pub mod backup_copy;
pub mod backup_stat;
pub mod backup_total;
pub mod destination_health;
pub mod job;
pub mod job_event;
pub mod project;
pub mod restore;
pub mod setting;
pub mod worker;
