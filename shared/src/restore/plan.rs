//! Planning a restore before any job exists: which project it goes into,
//! which components, and every check that needs no artifact (the backup is
//! complete and whole on its destination, it can be decrypted, the target
//! database answers, has the privileges, looks like the project's and is
//! not older than the dump). The API answers each [`PlanError`] as a 4xx
//! (or 503 when temporary) at once; the restore job checks again, since the
//! world may change meanwhile.

use std::fmt;

use sea_orm::{DatabaseConnection, DbErr, EntityTrait};

use super::database;
use crate::Config;
use crate::artifact::Manifest;
use crate::destinations::Destinations;
use crate::domain::{BackupType, Component, Vocabulary};
use crate::entities::{backup, project};
use crate::jobs::STATUS_COMPLETED;
use crate::master_key::MasterKey;

/// What `restoreTypes` may name.
pub const RESTORE_TYPES: &[&str] = &["full", "database", "storage", "functions", "config"];

/// What the client asked for.
#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    /// `restoreTypes`; empty or `full` for everything the backup holds.
    pub restore_types: Vec<String>,
    /// `forceRestore`.
    pub force: bool,
    /// `targetProjectId`; the backup's own project when `None`.
    pub target_project_id: Option<String>,
    /// `?destination=`: read this replica (the primary's destination or a
    /// copy's) and no other; `None` falls back from the primary to a copy.
    pub destination: Option<String>,
}

/// What the checks decided.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The project restored into.
    pub target: String,
    /// The components, in restore order.
    pub types: Vec<String>,
    /// What will not be done and why (config left out of a cross-project
    /// restore).
    pub warnings: Vec<String>,
}

/// What the server's side of planning needs.
pub struct PlanContext<'a> {
    pub db: &'a DatabaseConnection,
    pub config: &'a Config,
    pub destinations: &'a Destinations,
    pub master_key: &'a MasterKey,
}

/// Why a restore cannot be planned, each a cause the API maps to a status.
#[derive(Debug)]
pub enum PlanError {
    BackupNotCompleted {
        backup: String,
        status: String,
    },
    /// The target project does not exist or the key may not see it.
    ProjectNotFound,
    UnknownType(String),
    NotInBackup(Vec<&'static str>),
    ConfigNeedsForce {
        target: String,
        source: String,
    },
    NothingToRestore,
    DestinationUnusable(String),
    ArtifactSizeMismatch {
        destination: String,
        stored: u64,
        recorded: u64,
    },
    ArtifactMissing {
        destination: String,
    },
    /// The destination did not answer: worth trying again.
    ArtifactUncheckable {
        destination: String,
        cause: String,
    },
    /// `?destination=` names no replica of the backup.
    NoSuchReplica(String),
    NoDecryptionKey,
    ProjectNotRunning {
        project: String,
        cause: String,
    },
    /// A missing privilege or a database that does not look like the
    /// project's (see [`database::identity_problem`]).
    TargetRefused {
        project: String,
        problem: String,
    },
    NewerPostgres {
        backup_major: u32,
        project: String,
        version: String,
    },
    /// The project's sealed database URL cannot be opened.
    Sealed(String),
    ControlPlane(DbErr),
}

impl PlanError {
    /// Whether the same request may succeed later without any change.
    pub fn is_temporary(&self) -> bool {
        match self {
            Self::ArtifactUncheckable { .. } => true,
            Self::ControlPlane(e) => matches!(e, DbErr::ConnectionAcquire(_) | DbErr::Conn(_)),
            _ => false,
        }
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BackupNotCompleted { backup, status } => write!(
                f,
                "Backup {backup} is not completed (status: {status}); only a completed backup \
                 can be restored"
            ),
            Self::ProjectNotFound => f.write_str("Project not found"),
            Self::UnknownType(bad) => write!(
                f,
                "restoreTypes: {bad:?} is not one of {}",
                RESTORE_TYPES.join(", ")
            ),
            Self::NotInBackup(missing) => {
                write!(f, "Backup does not contain: {}", missing.join(", "))
            }
            Self::ConfigNeedsForce { target, source } => write!(
                f,
                "Restoring config into another project replaces {target}'s secrets (JWT secret, \
                 keys, passwords) with {source}'s; set forceRestore: true to do it"
            ),
            Self::NothingToRestore => f.write_str("Nothing to restore"),
            Self::DestinationUnusable(cause) => {
                write!(f, "Backup artifact cannot be reached: {cause}")
            }
            Self::ArtifactSizeMismatch {
                destination,
                stored,
                recorded,
            } => write!(
                f,
                "Backup artifact on {destination} has {stored} bytes, not the {recorded} \
                 recorded; it cannot be restored"
            ),
            Self::ArtifactMissing { destination } => {
                write!(
                    f,
                    "Backup artifact is missing from destination {destination}"
                )
            }
            Self::ArtifactUncheckable { destination, cause } => {
                write!(
                    f,
                    "Backup artifact cannot be checked on {destination}: {cause}"
                )
            }
            Self::NoSuchReplica(cause) => f.write_str(cause),
            Self::NoDecryptionKey => {
                f.write_str("Backup is encrypted and no decryption key is configured")
            }
            Self::ProjectNotRunning { project, cause } => {
                write!(f, "Project {project} is not running: {cause}")
            }
            Self::TargetRefused { project, problem } => write!(f, "Project {project}: {problem}"),
            Self::NewerPostgres {
                backup_major,
                project,
                version,
            } => write!(
                f,
                "Backup is of PostgreSQL {backup_major}, newer than project {project}'s \
                 PostgreSQL {version}; restore it into a project of PostgreSQL {backup_major} \
                 or later"
            ),
            Self::Sealed(cause) => f.write_str(cause),
            Self::ControlPlane(e) => write!(f, "control plane: {e}"),
        }
    }
}

impl std::error::Error for PlanError {}

impl From<DbErr> for PlanError {
    fn from(e: DbErr) -> Self {
        Self::ControlPlane(e)
    }
}

/// Plans restoring `backup_row` as `request` asks; `may_see` says whether
/// the caller may reach a project.
pub async fn plan_restore(
    ctx: &PlanContext<'_>,
    backup_row: &backup::Model,
    request: &RestoreRequest,
    may_see: impl Fn(&str) -> bool,
) -> Result<RestorePlan, PlanError> {
    if backup_row.status != STATUS_COMPLETED {
        return Err(PlanError::BackupNotCompleted {
            backup: backup_row.id.clone(),
            status: backup_row.status.clone(),
        });
    }
    let target_id = request
        .target_project_id
        .clone()
        .unwrap_or_else(|| backup_row.project_id.clone());
    let target = project::Entity::find_by_id(target_id)
        .one(ctx.db)
        .await?
        .filter(|p| may_see(&p.id))
        .ok_or(PlanError::ProjectNotFound)?;
    let manifest = backup_row
        .manifest
        .as_deref()
        .and_then(|m| serde_json::from_str::<Manifest>(m).ok());
    let held: Vec<String> = match &manifest {
        Some(m) => m.meta.components.clone(),
        None => BackupType::parse(&backup_row.backup_type)
            .map(|t| t.parts().iter().map(|c| c.to_string()).collect())
            .unwrap_or_default(),
    };
    let (types, warnings) = choose_components(backup_row, &target.id, &held, request)?;
    check_artifact(ctx, backup_row, request.destination.as_deref()).await?;
    if types.iter().any(|t| t == "database") {
        let backup_major = manifest
            .as_ref()
            .and_then(|m| m.meta.postgres_version.as_deref())
            .and_then(database::major_of_version);
        check_target_database(ctx, &target, request.force, backup_major).await?;
    }
    Ok(RestorePlan {
        target: target.id,
        types,
        warnings,
    })
}

/// The components to restore, in restore order, and the warnings of
/// leaving one out.
fn choose_components(
    backup_row: &backup::Model,
    target: &str,
    held: &[String],
    request: &RestoreRequest,
) -> Result<(Vec<String>, Vec<String>), PlanError> {
    let asked = &request.restore_types;
    if let Some(bad) = asked.iter().find(|t| !RESTORE_TYPES.contains(&t.as_str())) {
        return Err(PlanError::UnknownType(bad.clone()));
    }
    let everything = asked.is_empty() || asked.iter().any(|t| t == "full");
    let wanted = |c: &&str| everything || asked.iter().any(|a| a == c);
    let missing: Vec<&'static str> = Component::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|c| !everything && wanted(c) && !held.iter().any(|h| h == c))
        .collect();
    if !missing.is_empty() {
        return Err(PlanError::NotInBackup(missing));
    }
    let mut types: Vec<String> = Component::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|c| wanted(c) && held.iter().any(|h| h == *c))
        .map(|c| c.to_string())
        .collect();
    let mut warnings = Vec::new();
    let cross_project = target != backup_row.project_id;
    if cross_project && types.iter().any(|t| t == "config") && !request.force {
        if !everything {
            return Err(PlanError::ConfigNeedsForce {
                target: target.to_string(),
                source: backup_row.project_id.clone(),
            });
        }
        types.retain(|t| t != "config");
        warnings.push(format!(
            "Config was not restored: it carries project {}'s secrets (JWT secret, keys, \
             passwords) and would replace {target}'s; ask for it with restoreTypes [\"config\"] \
             and forceRestore: true",
            backup_row.project_id
        ));
    }
    if types.is_empty() {
        return Err(PlanError::NothingToRestore);
    }
    Ok((types, warnings))
}

/// The artifact is on its destination with the size recorded (or on a
/// copy, see [`crate::replicas::locate`]), and can be decrypted here.
async fn check_artifact(
    ctx: &PlanContext<'_>,
    backup_row: &backup::Model,
    wanted: Option<&str>,
) -> Result<(), PlanError> {
    use crate::replicas::{LocateError, Problem};
    match crate::replicas::locate(ctx.db, ctx.destinations, backup_row, wanted).await {
        Ok(_) => {}
        Err(e @ LocateError::NoSuchReplica { .. }) => {
            return Err(PlanError::NoSuchReplica(e.to_string()));
        }
        Err(LocateError::ControlPlane(e)) => return Err(PlanError::ControlPlane(e)),
        Err(LocateError::Unusable {
            destination,
            problem,
        }) => {
            return Err(match problem {
                Problem::NotConfigured(cause) => PlanError::DestinationUnusable(cause),
                Problem::Missing => PlanError::ArtifactMissing { destination },
                Problem::WrongSize { stored, recorded } => PlanError::ArtifactSizeMismatch {
                    destination,
                    stored,
                    recorded,
                },
                Problem::Unreachable(cause) => {
                    PlanError::ArtifactUncheckable { destination, cause }
                }
            });
        }
    }
    let no_key = ctx
        .config
        .identities()
        .map(|i| i.is_empty())
        .unwrap_or(true);
    if backup_row.encrypted && no_key {
        return Err(PlanError::NoDecryptionKey);
    }
    Ok(())
}

/// The target database answers, lets us restore, looks like the project's
/// (unless forced) and is not older than the dump (`backup_major`, when
/// known). Database and storage imports check their target with it too.
pub async fn check_target_database(
    ctx: &PlanContext<'_>,
    target: &project::Model,
    force: bool,
    backup_major: Option<u32>,
) -> Result<(), PlanError> {
    let url = ctx
        .master_key
        .decrypt(&target.database_url_enc)
        .map_err(|e| PlanError::Sealed(e.to_string()))?;
    let facts =
        database::target_facts(&url)
            .await
            .map_err(|cause| PlanError::ProjectNotRunning {
                project: target.id.clone(),
                cause,
            })?;
    let refused =
        database::missing_privilege(&facts).or_else(|| database::identity_problem(&facts, force));
    if let Some(problem) = refused {
        return Err(PlanError::TargetRefused {
            project: target.id.clone(),
            problem,
        });
    }
    if let Some(major) = backup_major
        && major > facts.major
    {
        return Err(PlanError::NewerPostgres {
            backup_major: major,
            project: target.id.clone(),
            version: facts.version,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup_of(project: &str) -> backup::Model {
        backup::Model {
            id: "backup-1".into(),
            project_id: project.into(),
            project_name: project.into(),
            backup_type: "full".into(),
            status: STATUS_COMPLETED.into(),
            destination: "local".into(),
            path: String::new(),
            size: 0,
            encrypted: false,
            compression: "gzip".into(),
            sha256: None,
            duration_secs: None,
            error: None,
            manifest: None,
            job_id: None,
            created_at: chrono::Utc::now(),
            completed_at: None,
            verified_at: None,
            verify_error: None,
            locked_until: None,
        }
    }

    fn ask(types: &[&str], force: bool) -> RestoreRequest {
        RestoreRequest {
            restore_types: types.iter().map(|t| t.to_string()).collect(),
            force,
            target_project_id: None,
            destination: None,
        }
    }

    fn held(components: &[&str]) -> Vec<String> {
        components.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn everything_is_what_the_backup_holds_in_restore_order() {
        let backup = backup_of("a");
        let (types, warnings) = choose_components(
            &backup,
            "a",
            &held(&["config", "storage", "database"]),
            &ask(&[], false),
        )
        .unwrap();
        assert_eq!(types, ["database", "storage", "config"]);
        assert!(warnings.is_empty());
        let (types, _) =
            choose_components(&backup, "a", &held(&["storage"]), &ask(&["full"], false)).unwrap();
        assert_eq!(types, ["storage"]);
    }

    #[test]
    fn asking_for_what_is_not_there_names_it() {
        let backup = backup_of("a");
        let error = choose_components(
            &backup,
            "a",
            &held(&["database"]),
            &ask(&["storage", "database", "functions"], false),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "Backup does not contain: storage, functions"
        );
        let error = choose_components(&backup, "a", &held(&["database"]), &ask(&["db"], false))
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("restoreTypes: \"db\" is not one of full,")
        );
        assert!(!error.is_temporary());
    }

    #[test]
    fn config_crosses_projects_only_when_forced() {
        let backup = backup_of("a");
        let all = held(&["database", "config"]);
        // Everything: config is left out, with a warning saying how to ask.
        let (types, warnings) = choose_components(&backup, "b", &all, &ask(&[], false)).unwrap();
        assert_eq!(types, ["database"]);
        assert!(warnings[0].contains("forceRestore: true"), "{warnings:?}");
        // Asked for by name: refused unless forced.
        let error = choose_components(&backup, "b", &all, &ask(&["config"], false)).unwrap_err();
        assert!(matches!(error, PlanError::ConfigNeedsForce { .. }));
        let (types, _) = choose_components(&backup, "b", &all, &ask(&["config"], true)).unwrap();
        assert_eq!(types, ["config"]);
        // Only config, everything asked, another project: nothing is left.
        let error =
            choose_components(&backup, "b", &held(&["config"]), &ask(&[], false)).unwrap_err();
        assert_eq!(error.to_string(), "Nothing to restore");
    }
}
