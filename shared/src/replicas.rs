//! Where a backup's artifact can be read from: its own destination (the
//! primary) and the completed copies on others (3-2-1, `backup_copies`).
//! Every copy is under the primary's key, byte for byte the same object.
//!
//! Restores and downloads read through [`locate`]: the replica asked for
//! (`?destination=`), or else the primary, falling back to the first copy
//! that is there whole when the primary's object is missing, has another
//! size than recorded, or its destination cannot be reached. A fallback
//! comes with a warning that says why, for the job's warnings or the
//! download's `Warning` header. Damage of the same size shows only when the
//! bytes are read (every entry's SHA-256); that is not a fallback here.

use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder};

use crate::artifact::artifact_of;
use crate::destinations::{Destination, Destinations};
use crate::entities::{backup, backup_copy};
use crate::jobs::STATUS_COMPLETED;
use crate::redact::{redact_urls, truncate_chars};

/// What is wrong with one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The destination is no longer configured.
    NotConfigured(String),
    Missing,
    WrongSize {
        stored: u64,
        recorded: u64,
    },
    /// The destination did not answer.
    Unreachable(String),
}

impl Problem {
    /// "The artifact on <destination> …", finished.
    fn describe(&self, destination: &str) -> String {
        match self {
            Problem::NotConfigured(cause) => format!("destination {destination}: {cause}"),
            Problem::Missing => format!("the artifact is missing from destination {destination}"),
            Problem::WrongSize { stored, recorded } => format!(
                "the artifact on {destination} has {stored} bytes, not the {recorded} recorded"
            ),
            Problem::Unreachable(cause) => {
                format!("the artifact on {destination} cannot be checked: {cause}")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// `?destination=` names a destination the backup has no completed
    /// copy on: the caller's mistake.
    #[error("Backup {backup} has no completed copy on {destination} (it is on {available})")]
    NoSuchReplica {
        backup: String,
        destination: String,
        available: String,
    },
    /// No replica is there whole; `problem` is the first one's (the one
    /// asked for, else the primary's).
    #[error("{}", .problem.describe(.destination))]
    Unusable {
        destination: String,
        problem: Problem,
    },
    #[error("control plane: {0}")]
    ControlPlane(#[from] DbErr),
}

/// The replica to read.
#[derive(Debug, Clone)]
pub struct Located {
    pub destination: Destination,
    pub key: String,
    /// Its size, as recorded and as stored.
    pub size: u64,
    /// Set when this is not the replica that was first in line: why, in
    /// words for the operator.
    pub fallback: Option<String>,
}

impl Located {
    pub fn name(&self) -> &str {
        self.destination.name()
    }
}

/// A backup's copies, oldest first.
pub async fn copies_of(
    db: &DatabaseConnection,
    backup_id: &str,
) -> Result<Vec<backup_copy::Model>, DbErr> {
    backup_copy::Entity::find()
        .filter(backup_copy::Column::BackupId.eq(backup_id))
        .order_by_asc(backup_copy::Column::CreatedAt)
        .order_by_asc(backup_copy::Column::Destination)
        .all(db)
        .await
}

/// The destinations a backup's artifact is on, whole as far as we know:
/// the primary first, then each completed copy.
pub fn replica_names(row: &backup::Model, copies: &[backup_copy::Model]) -> Vec<String> {
    std::iter::once(row.destination.clone())
        .chain(
            copies
                .iter()
                .filter(|c| c.status == STATUS_COMPLETED)
                .map(|c| c.destination.clone()),
        )
        .collect()
}

/// Picks the replica of `row`'s artifact to read (see the module's doc):
/// `wanted` alone when given, else the primary and then each copy.
pub async fn locate(
    db: &DatabaseConnection,
    destinations: &Destinations,
    row: &backup::Model,
    wanted: Option<&str>,
) -> Result<Located, LocateError> {
    let (key, _) = artifact_of(row);
    let recorded = row.size.max(0) as u64;
    let primary = row.destination.as_str();
    let mut first_problem: Option<(String, Problem)> = None;
    // The primary first, before the copies are read: serving a healthy
    // backup asks the control plane nothing more.
    if wanted.is_none_or(|w| w == primary) {
        match look(destinations, primary, &key, recorded).await {
            Ok(destination) => {
                return Ok(Located {
                    destination,
                    key,
                    size: recorded,
                    fallback: None,
                });
            }
            Err(problem) if wanted.is_some() => {
                return Err(LocateError::Unusable {
                    destination: primary.to_string(),
                    problem,
                });
            }
            Err(problem) => first_problem = Some((primary.to_string(), problem)),
        }
    }
    let copies = copies_of(db, &row.id).await?;
    let names = replica_names(row, &copies);
    let candidates = match wanted {
        Some(wanted) if names.iter().any(|n| n == wanted) => vec![wanted.to_string()],
        Some(wanted) => {
            return Err(LocateError::NoSuchReplica {
                backup: row.id.clone(),
                destination: wanted.to_string(),
                available: names.join(", "),
            });
        }
        // The primary was looked at above.
        None => names.into_iter().skip(1).collect(),
    };
    for name in candidates {
        match look(destinations, &name, &key, recorded).await {
            Ok(destination) => {
                let fallback = first_problem.as_ref().map(|(first, problem)| {
                    format!(
                        "{}; read the copy on {name} instead",
                        capitalized(&problem.describe(first))
                    )
                });
                return Ok(Located {
                    destination,
                    key,
                    size: recorded,
                    fallback,
                });
            }
            Err(problem) => {
                first_problem.get_or_insert((name, problem));
            }
        }
    }
    let (destination, problem) = first_problem.unwrap_or_else(|| {
        (
            row.destination.clone(),
            Problem::NotConfigured("no replica".into()),
        )
    });
    Err(LocateError::Unusable {
        destination,
        problem,
    })
}

/// The destination `name` when it holds `key` with the `recorded` size.
async fn look(
    destinations: &Destinations,
    name: &str,
    key: &str,
    recorded: u64,
) -> Result<Destination, Problem> {
    let destination = destinations
        .get(name)
        .map_err(|e| Problem::NotConfigured(e.to_string()))?;
    match destination.stat(key).await {
        Ok(Some(stored)) if stored.size == recorded => Ok(destination.clone()),
        Ok(Some(stored)) => Err(Problem::WrongSize {
            stored: stored.size,
            recorded,
        }),
        Ok(None) => Err(Problem::Missing),
        // Shown to clients (restore warnings, a download's `Warning`): no
        // URL's credentials, and not the whole store's answer.
        Err(e) => Err(Problem::Unreachable(truncate_chars(
            &redact_urls(&e.to_string()),
            200,
        ))),
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_say_where_and_what() {
        assert_eq!(
            Problem::WrongSize {
                stored: 3,
                recorded: 5
            }
            .describe("s3"),
            "the artifact on s3 has 3 bytes, not the 5 recorded"
        );
        assert_eq!(
            capitalized(&Problem::Missing.describe("local")),
            "The artifact is missing from destination local"
        );
    }
}
