//! One module per kind of job; [`crate::engine`] dispatches to them by
//! [`supascale_shared::jobs::JobKind`]. Each reads its typed parameters
//! (`supascale_shared::jobs::params`), does its work through the domain in
//! `supascale_shared` (artifact, destinations, restore and import
//! mechanics), and reports through its [`crate::reporter::Reporter`].

pub mod backup;
pub mod copy;
pub mod import;
pub mod import_database;
pub mod import_functions;
pub mod import_storage;
pub mod lift_shift;
pub mod restore;
pub mod verify;
