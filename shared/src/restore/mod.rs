//! Bringing a backup back into a project: the artifact read in one pass
//! ([`source`]), the files staged beside their targets and swapped in
//! ([`staging`]), the database loaded in one transaction that commits only
//! after the files are in place ([`database`]).

pub mod database;
pub mod plan;
pub mod source;
pub mod staging;
