//! Bringing a backup back into a project.

pub mod staging;
