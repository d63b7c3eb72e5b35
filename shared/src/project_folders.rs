//! Where a project's folders may be, and the same check again when a job
//! uses them.
//!
//! Backups read a project's folders and restores and imports write them, as
//! the worker's user (often root). A key that could name any folder would
//! read `/etc/shadow` through a backup, or replace `/var/spool/cron` through
//! a functions import. So a project's folders are the operator's decision:
//! - with `SUPASCALE_PROJECT_ROOTS`, a project's root lies under one of the
//!   roots; without it only an admin key not limited to projects may name
//!   folders at all (the API decides who asks; this module what is allowed);
//! - folders are resolved (symlinks followed) when they are registered, and
//!   are never a system folder, Supascale's own data (data dir, master key,
//!   control-plane file, age identity) or anything holding one of those;
//! - storage, functions and config paths lie inside the project's root
//!   (config paths outside it, e.g. pgsodium's key volume, only for an
//!   admin); two projects never share or nest folders;
//! - a job resolves the folders again before it touches them and refuses a
//!   folder that now resolves elsewhere (a symlink put in its path since it
//!   was registered) or that the rules no longer allow;
//! - then it pins them ([`FolderRules::pin`], [`pinned`]): the root opened
//!   with no symlink in its path, storage and functions beneath it
//!   (`openat2` `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and works through
//!   those fds from there on. A folder renamed away and replaced by a
//!   symlink after the pin changes nothing the job reads or writes; one
//!   replaced between the check and the pin is refused.
//!
//! What is still assumed: below the pinned folders, the backup opens every
//! entry with `O_NOFOLLOW` from its folder's fd (an entry swapped for a
//! symlink is left out, never read through); config files are opened from
//! their folder opened beneath the pinned root. Restores and imports stage
//! under the pinned folder and check each parent with `lstat` (see
//! [`crate::restore::staging`]); the post-restore command runs in the
//! registered root path.
//!
//! Messages name the path as the caller gave it and the rule it breaks,
//! never what exists on the server.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::entities::project;

pub mod pinned;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use pinned::{Create, PinnedDir, PinnedFolders};

/// Folders no project may be, lie in, or hold: the system's own, and where
/// other services keep their data.
pub const SYSTEM_FOLDERS: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/snap",
    "/sys",
    "/usr",
    "/var/lib/postgresql",
    "/var/lib/redis",
    "/var/log",
    "/var/mail",
    "/var/run",
    "/var/spool",
];

/// Why folders are refused: `Forbidden` is about who asks (403), `Invalid`
/// about what is asked (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Forbidden(String),
    Invalid(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Forbidden(m) | Refusal::Invalid(m) => f.write_str(m),
        }
    }
}

/// A project's folders: as asked for, or as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectFolders {
    pub root: PathBuf,
    pub storage: PathBuf,
    pub functions: PathBuf,
    pub config: Vec<PathBuf>,
}

impl ProjectFolders {
    /// The folders a project row names.
    pub fn of(project: &project::Model) -> Self {
        let config: Vec<String> = serde_json::from_str(&project.config_paths).unwrap_or_default();
        Self {
            root: PathBuf::from(&project.root_dir),
            storage: PathBuf::from(&project.storage_dir),
            functions: PathBuf::from(&project.functions_dir),
            config: config.into_iter().map(PathBuf::from).collect(),
        }
    }

    /// Each folder with the API field that names it.
    fn named(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [
            ("rootDir", self.root.as_path()),
            ("storageDir", self.storage.as_path()),
            ("functionsDir", self.functions.as_path()),
        ]
        .into_iter()
        .chain(self.config.iter().map(|p| ("configPaths", p.as_path())))
    }
}

/// Resolves `path` as the kernel would open it: the part that exists with
/// its symlinks followed, the rest appended as given. `None` for a dangling
/// symlink (it would lead wherever its target appears later) or a path that
/// cannot be resolved.
pub fn resolve(path: &Path) -> Option<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(mut real) => {
                real.extend(rest.iter().rev());
                return Some(real);
            }
            Err(_) => {
                if std::fs::symlink_metadata(&existing).is_ok_and(|m| m.file_type().is_symlink()) {
                    return None;
                }
                let name = existing.file_name()?.to_owned();
                rest.push(name);
                existing = existing.parent()?.to_path_buf();
            }
        }
    }
}

/// Whether one of `a` and `b` is, or lies inside, the other.
fn nested(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// What the operator allows: the project roots, and what no project may touch.
#[derive(Debug, Clone)]
pub struct FolderRules {
    roots: Vec<PathBuf>,
    /// The roots as configured (before their symlinks were resolved).
    roots_given: Vec<PathBuf>,
    /// Supascale's own files and folders.
    ours: Vec<PathBuf>,
    system: Vec<PathBuf>,
}

impl FolderRules {
    pub fn from_config(config: &Config) -> Self {
        let roots_given = config.project_roots();
        let roots = roots_given
            .iter()
            .map(|r| resolve(r).unwrap_or_else(|| r.clone()))
            .collect();
        let mut ours = vec![config.data_dir.clone(), config.master_key_path()];
        if let Some(file) = config
            .database_url()
            .strip_prefix("sqlite:")
            .map(|rest| rest.trim_start_matches("//"))
            .map(|rest| rest.split('?').next().unwrap_or(rest))
            .filter(|file| !file.is_empty())
        {
            ours.push(PathBuf::from(file));
        }
        ours.extend(config.encryption_identity_file.iter().cloned());
        let ours = ours
            .iter()
            .map(|p| absolute(p))
            .map(|p| resolve(&p).unwrap_or(p))
            .collect();
        // `/var/run` and `/lib` are often symlinks: both spellings count.
        let mut system: Vec<PathBuf> = SYSTEM_FOLDERS.iter().map(PathBuf::from).collect();
        system.extend(SYSTEM_FOLDERS.iter().filter_map(|s| resolve(Path::new(s))));
        system.sort();
        system.dedup();
        Self {
            roots,
            roots_given,
            ours,
            system,
        }
    }

    /// Whether the operator configured project roots.
    pub fn has_roots(&self) -> bool {
        !self.roots.is_empty()
    }

    /// Checks the folders a caller asks for and returns them resolved.
    /// `admin`: the caller holds an admin key not limited to projects.
    /// `others`: every other project's folders, as stored.
    pub fn check(
        &self,
        asked: &ProjectFolders,
        admin: bool,
        others: &[(String, ProjectFolders)],
    ) -> Result<ProjectFolders, Refusal> {
        if !admin && !self.has_roots() {
            return Err(Refusal::Forbidden(
                "Naming a project's folders needs the admin permission on a key that is not \
                 limited to projects, unless the operator allows folders with \
                 SUPASCALE_PROJECT_ROOTS"
                    .into(),
            ));
        }
        // A key that is not an admin's learns nothing of paths outside the
        // roots: what it names there is refused before anything is looked
        // up on disk.
        if !admin {
            let lexically_under = |p: &Path| {
                self.roots
                    .iter()
                    .chain(&self.roots_given)
                    .any(|r| p.starts_with(r))
            };
            if !lexically_under(&asked.root) {
                return Err(self.not_under_roots(&asked.root));
            }
            for (field, given) in asked.named().skip(1) {
                if !given.starts_with(&asked.root) {
                    return Err(if field == "configPaths" {
                        Self::config_outside(given)
                    } else {
                        Self::not_inside_root(field, given)
                    });
                }
            }
        }
        let real = |field: &str, path: &Path| {
            resolve(path).ok_or_else(|| {
                Refusal::Invalid(format!(
                    "{field} {} cannot be used: it is or passes through a symbolic link that \
                     leads nowhere",
                    path.display()
                ))
            })
        };
        let resolved = ProjectFolders {
            root: real("rootDir", &asked.root)?,
            storage: real("storageDir", &asked.storage)?,
            functions: real("functionsDir", &asked.functions)?,
            config: asked
                .config
                .iter()
                .map(|p| real("configPaths", p))
                .collect::<Result<_, _>>()?,
        };
        for ((field, given), (_, path)) in asked.named().zip(resolved.named()) {
            self.allowed(field, given, path)?;
        }
        self.inside_root(asked, &resolved)?;
        for ((field, given), (_, path)) in asked.named().zip(resolved.named()).skip(3) {
            debug_assert_eq!(field, "configPaths");
            if !path.starts_with(&resolved.root) && !admin {
                return Err(Self::config_outside(given));
            }
        }
        for (_, theirs) in others {
            for ((field, given), (_, mine)) in asked.named().zip(resolved.named()) {
                if theirs.named().any(|(_, t)| nested(mine, t)) {
                    return Err(Refusal::Invalid(format!(
                        "{field} {} is, holds or lies inside another project's folder: two \
                         projects never share folders",
                        given.display()
                    )));
                }
            }
        }
        Ok(resolved)
    }

    /// The check a job makes before it reads or writes a project's folders:
    /// each must still resolve to itself, and still be allowed.
    pub fn at_use(&self, project: &project::Model) -> Result<ProjectFolders, String> {
        let folders = ProjectFolders::of(project);
        for (field, path) in folders.named() {
            if resolve(path).as_deref() != Some(path) {
                return Err(format!(
                    "project {}'s {field} {} no longer resolves to itself (a symbolic link in \
                     its path changed since it was registered); register the folder again",
                    project.id,
                    path.display()
                ));
            }
            self.allowed(field, path, path).map_err(|r| r.to_string())?;
        }
        self.inside_root(&folders, &folders)
            .map_err(|r| r.to_string())?;
        Ok(folders)
    }

    /// [`at_use`](Self::at_use), then the folders opened beneath the root
    /// (see [`pinned`]): what the job does next goes through the pins, never
    /// the stored paths again.
    pub fn pin(&self, project: &project::Model, create: Create) -> Result<PinnedFolders, String> {
        let folders = self.at_use(project)?;
        PinnedFolders::open(&project.id, &folders, create)
    }

    /// The rules every folder keeps, whoever asks: not a system folder, not
    /// ours, and not holding either.
    fn allowed(&self, field: &str, given: &Path, real: &Path) -> Result<(), Refusal> {
        if real == Path::new("/") || self.system.iter().any(|s| nested(real, s)) {
            return Err(Refusal::Invalid(format!(
                "{field} {} is not allowed: it is, holds or lies in a system folder",
                given.display()
            )));
        }
        if self.ours.iter().any(|o| nested(real, o)) {
            return Err(Refusal::Invalid(format!(
                "{field} {} is not allowed: it is, holds or lies in Supascale's own data \
                 (data dir, master key, control plane)",
                given.display()
            )));
        }
        Ok(())
    }

    /// The root under the operator's roots; storage and functions inside the root.
    fn inside_root(&self, asked: &ProjectFolders, real: &ProjectFolders) -> Result<(), Refusal> {
        if self.has_roots() && !self.roots.iter().any(|r| real.root.starts_with(r)) {
            return Err(self.not_under_roots(&asked.root));
        }
        for (field, given, path) in [
            ("storageDir", &asked.storage, &real.storage),
            ("functionsDir", &asked.functions, &real.functions),
        ] {
            if !path.starts_with(&real.root) {
                return Err(Self::not_inside_root(field, given));
            }
        }
        Ok(())
    }

    fn not_under_roots(&self, root: &Path) -> Refusal {
        Refusal::Invalid(format!(
            "rootDir {} is not under the folders allowed for projects \
             (SUPASCALE_PROJECT_ROOTS)",
            root.display()
        ))
    }

    fn not_inside_root(field: &str, given: &Path) -> Refusal {
        Refusal::Invalid(format!(
            "{field} {} must lie inside rootDir",
            given.display()
        ))
    }

    fn config_outside(given: &Path) -> Refusal {
        Refusal::Forbidden(format!(
            "configPaths {} lies outside rootDir: config paths outside the project's folder \
             need the admin permission on a key that is not limited to projects",
            given.display()
        ))
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(data: &Path, roots: &[&Path]) -> FolderRules {
        let config = Config {
            data_dir: data.to_path_buf(),
            project_roots: Some(
                roots
                    .iter()
                    .map(|r| r.to_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(":"),
            )
            .filter(|r| !r.is_empty()),
            ..Config::default()
        };
        FolderRules::from_config(&config)
    }

    fn folders(root: &Path) -> ProjectFolders {
        ProjectFolders {
            root: root.to_path_buf(),
            storage: root.join("volumes/storage"),
            functions: root.join("volumes/functions"),
            config: vec![],
        }
    }

    #[test]
    fn symlinks_are_followed_and_the_missing_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(
            resolve(&dir.path().join("link/not/yet")),
            Some(base.join("real/not/yet"))
        );
        std::os::unix::fs::symlink("/nowhere/at/all", dir.path().join("dangling")).unwrap();
        assert_eq!(resolve(&dir.path().join("dangling/x")), None);
    }

    #[test]
    fn system_folders_and_our_data_are_refused_to_everyone() {
        let data = tempfile::tempdir().unwrap();
        let rules = rules(data.path(), &[]);
        for bad in [
            "/",
            "/etc",
            "/etc/shadow",
            "/var",
            "/var/spool/cron",
            "/proc/1",
        ] {
            let asked = ProjectFolders {
                root: PathBuf::from(bad),
                storage: PathBuf::from(bad),
                functions: PathBuf::from(bad),
                config: vec![],
            };
            let refusal = rules.check(&asked, true, &[]).unwrap_err();
            assert!(
                matches!(&refusal, Refusal::Invalid(m) if m.contains("system folder")),
                "{bad}: {refusal:?}"
            );
        }
        let refusal = rules.check(&folders(data.path()), true, &[]).unwrap_err();
        assert!(
            refusal.to_string().contains("Supascale's own data"),
            "{refusal}"
        );
        let holder = data.path().parent().unwrap();
        assert!(rules.check(&folders(holder), true, &[]).is_err());
    }

    #[test]
    fn without_roots_only_an_admin_names_folders() {
        let data = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        let rules = rules(data.path(), &[]);
        assert!(matches!(
            rules.check(&folders(project.path()), false, &[]),
            Err(Refusal::Forbidden(_))
        ));
        assert!(rules.check(&folders(project.path()), true, &[]).is_ok());
    }

    #[test]
    fn with_roots_a_project_lies_under_one_and_keeps_to_its_root() {
        let data = tempfile::tempdir().unwrap();
        let allowed = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let rules = rules(data.path(), &[allowed.path()]);
        let mine = allowed.path().join("mine");
        assert!(rules.check(&folders(&mine), false, &[]).is_ok());
        let refusal = rules
            .check(&folders(elsewhere.path()), false, &[])
            .unwrap_err();
        assert!(refusal.to_string().contains("SUPASCALE_PROJECT_ROOTS"));
        // A symlink under the root that leads out is followed.
        std::os::unix::fs::symlink(elsewhere.path(), allowed.path().join("escape")).unwrap();
        assert!(
            rules
                .check(&folders(&allowed.path().join("escape")), false, &[])
                .is_err()
        );
        let mut outside = folders(&mine);
        outside.functions = elsewhere.path().join("functions");
        assert!(rules.check(&outside, false, &[]).is_err());
        let mut config = folders(&mine);
        config.config = vec![elsewhere.path().join("db-config")];
        assert!(matches!(
            rules.check(&config, false, &[]),
            Err(Refusal::Forbidden(_))
        ));
        assert!(rules.check(&config, true, &[]).is_ok());
    }

    #[test]
    fn a_key_below_admin_learns_nothing_of_paths_outside_the_roots() {
        let data = tempfile::tempdir().unwrap();
        let allowed = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/nowhere", elsewhere.path().join("dangling")).unwrap();
        let rules = rules(data.path(), &[allowed.path()]);
        let refusals: Vec<String> = ["dangling", "missing"]
            .iter()
            .map(|name| {
                let path = elsewhere.path().join(name);
                rules
                    .check(&folders(&path), false, &[])
                    .unwrap_err()
                    .to_string()
                    .replace(name, "NAME")
            })
            .collect();
        assert_eq!(refusals[0], refusals[1]);
        assert!(
            refusals[0].contains("SUPASCALE_PROJECT_ROOTS"),
            "{}",
            refusals[0]
        );
    }

    #[test]
    fn projects_never_share_or_nest_folders() {
        let data = tempfile::tempdir().unwrap();
        let allowed = tempfile::tempdir().unwrap();
        let rules = rules(data.path(), &[allowed.path()]);
        let theirs = rules
            .check(&folders(&allowed.path().join("theirs")), false, &[])
            .unwrap();
        let others = vec![("theirs".to_string(), theirs)];
        for bad in ["theirs", "theirs/inner", ""] {
            let asked = folders(&allowed.path().join(bad));
            assert!(rules.check(&asked, false, &others).is_err(), "{bad:?}");
        }
        assert!(
            rules
                .check(&folders(&allowed.path().join("mine")), false, &others)
                .is_ok()
        );
    }

    #[test]
    fn a_job_refuses_a_folder_that_now_resolves_elsewhere() {
        let data = tempfile::tempdir().unwrap();
        let allowed = tempfile::tempdir().unwrap();
        let rules = rules(data.path(), &[allowed.path()]);
        let asked = folders(&allowed.path().join("p"));
        let real = rules.check(&asked, false, &[]).unwrap();
        let row = testing::row_of(&real.root, &real.storage, &real.functions);
        assert!(rules.at_use(&row).is_ok());
        std::fs::create_dir_all(real.root.join("volumes")).unwrap();
        std::os::unix::fs::symlink("/etc", real.root.join("volumes/functions")).unwrap();
        let refusal = rules.at_use(&row).unwrap_err();
        assert!(refusal.contains("no longer resolves"), "{refusal}");
    }
}
