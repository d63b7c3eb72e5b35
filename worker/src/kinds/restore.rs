//! The restore job: a backup brought back into a project, all or nothing.
//!
//! Order of work, and why:
//! 1. Checks that need no artifact (the API made them too; the world may
//!    have changed since): the artifact is on its destination with its
//!    recorded size, the target database answers, its role may restore,
//!    its major version is not older than the backup's.
//! 2. One streaming pass over the artifact (destination → age → gzip/zstd
//!    → tar) on a blocking thread: the dump is spooled (`pg_restore` needs a
//!    seekable file), files are staged beside their targets, and every
//!    file's SHA-256 is compared with the manifest as it is written. A
//!    mismatch stops here, before anything of the project changed.
//! 3. The database is loaded in one open transaction
//!    ([`supascale_shared::restore::database`]).
//! 4. The staged files are swapped in; then the transaction commits. A
//!    failure at 3 or 4 rolls both back; the target is as it was.
//!
//! Only the worker thread that runs the job touches the staging folders;
//! the blocking thread owns them during the pass and hands them back.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryTrait};
use sha2::Digest;

use super::backup::{SpooledDump, check_free_space};
use crate::JobContext;
use crate::reporter::Reporter;
use supascale_shared::artifact::artifact_of;
use supascale_shared::artifact::{Manifest, ManifestEntry};
use supascale_shared::disk::{
    CONFIG_AREA, DiskGuard, FUNCTIONS_AREA, GuardedWriter, Need, STORAGE_AREA, TEMPORARY_AREA,
};
use supascale_shared::entities::{backup, job, project, restore};
use supascale_shared::jobs::JobError;

use supascale_shared::domain::{Component, Vocabulary};
use supascale_shared::jobs::io_error;
use supascale_shared::jobs::params::RestorePayload;
use supascale_shared::pgtools::child;
use supascale_shared::project_folders::{Create, PinnedDir, PinnedFolders};
use supascale_shared::restore::database::{self, DatabaseRestore, TargetFacts};
use supascale_shared::restore::source;
use supascale_shared::restore::staging::{
    Added, DiskReserve, Limits, Options, Ready, StagedFiles, StagedTree, Swapped, SwappedFiles,
    SymlinkPolicy,
};

mod artifact;

pub(super) use artifact::{
    Artifact, UnpackPlan, Unpacked, check_artifact, entries_by_path, read_artifact,
};

pub async fn run(ctx: &JobContext, job: &job::Model, reporter: &Reporter) -> Result<(), JobError> {
    let payload: RestorePayload = supascale_shared::jobs::params::read(job)?;
    let started = Instant::now();
    let row = restore::Entity::update_many()
        .col_expr(
            restore::Column::Status,
            Expr::value(supascale_shared::jobs::STATUS_IN_PROGRESS),
        )
        .filter(restore::Column::Id.eq(payload.restore_id.clone()))
        .exec_with_returning(&ctx.db)
        .await
        .map_err(JobError::from)?
        .pop()
        .ok_or_else(|| JobError::Record("the restore row is gone".into()))?;
    // The API's own warnings (config left out of a cross-project restore)
    // come first.
    let said: Vec<String> = serde_json::from_str(&row.warnings).unwrap_or_default();
    for warning in &said {
        reporter.warning(warning).await;
    }
    let result = restore_backup(ctx, job, &row, &payload, reporter)
        .await
        .map(|found| said.into_iter().chain(found).collect::<Vec<_>>());
    let duration = started.elapsed().as_secs() as i64;
    let update = restore::Entity::update_many().filter(restore::Column::Id.eq(row.id.clone()));
    let update = match &result {
        Ok(warnings) => update
            .col_expr(
                restore::Column::Status,
                Expr::value(supascale_shared::jobs::STATUS_COMPLETED),
            )
            .col_expr(
                restore::Column::Warnings,
                Expr::value(serde_json::to_string(warnings).unwrap_or_else(|_| "[]".into())),
            )
            .col_expr(restore::Column::Error, Expr::value(Option::<String>::None))
            .col_expr(restore::Column::DurationSecs, Expr::value(duration))
            .col_expr(
                restore::Column::RestoredAt,
                Expr::value(supascale_shared::jobs::store::now()),
            ),
        Err(e) => update
            .col_expr(
                restore::Column::Status,
                Expr::value(if e.will_retry(job) {
                    supascale_shared::jobs::STATUS_PENDING
                } else {
                    supascale_shared::jobs::STATUS_FAILED
                }),
            )
            .col_expr(restore::Column::Error, Expr::value(e.to_string()))
            .col_expr(restore::Column::DurationSecs, Expr::value(duration)),
    };
    match &result {
        // Back to pending at once; the job is released after this.
        Err(e) if e.will_retry(job) => {
            update.exec(&ctx.db).await.map_err(JobError::from)?;
        }
        // Completed, or failed for good, with the job's end and in its
        // commit, as a backup is: a waiting request that finds the restore
        // over finds its job over too, and a worker whose job was taken
        // over cannot overwrite what the one holding it records.
        _ => reporter.record_with_end(update.into_query()),
    }
    result.map(|_| ())
}

/// Restores and returns the warnings (also sent as events).
async fn restore_backup(
    ctx: &JobContext,
    job: &job::Model,
    row: &restore::Model,
    payload: &RestorePayload,
    reporter: &Reporter,
) -> Result<Vec<String>, JobError> {
    let request = Request::load(ctx, row).await?;
    let run = Restoring {
        ctx,
        job,
        force: payload.force,
        replica: payload.destination.as_deref(),
        reporter,
        total: request.wanted.len() as u32 + 2,
    };
    let mut warnings: Vec<String> = Vec::new();

    // 1. What can be known before reading the artifact.
    reporter
        .step("check", "Checking the backup and the target", 1, run.total)
        .await;
    let Prepared {
        artifact,
        plan,
        database,
    } = run.prepare(&request, &mut warnings).await?;
    if reporter.is_cancelled() {
        return Err(JobError::Cancelled);
    }

    // 2. One pass over the artifact.
    reporter
        .step("read", "Reading and checking the artifact", 2, run.total)
        .await;
    warnings.extend(request.extra_config_left_out());
    let unpacked = read_artifact(artifact, plan, reporter).await?;
    warnings.extend(
        request
            .manifest
            .warnings
            .iter()
            .map(|w| format!("At backup time: {w}")),
    );

    // 3. The database, up to its commit.
    let mut step = 3;
    let loaded = run
        .load_database(database.as_ref(), &unpacked, &mut step)
        .await?;

    // 4. Files in, then the commit; any failure puts everything back.
    run.swap_in(unpacked, loaded, database.as_ref(), step, &mut warnings)
        .await?;
    if request.wanted.contains(&Component::Database) {
        run.post_restore_step(&request.target, &mut warnings).await;
    }
    for warning in &warnings {
        reporter.warning(warning).await;
    }
    Ok(warnings)
}

/// Why no replica of the artifact can be read, as a job's cause: what is
/// wrong with the bytes is the artifact's, a destination that did not
/// answer may answer the next attempt.
pub(super) fn locate_error(e: supascale_shared::replicas::LocateError) -> JobError {
    use supascale_shared::replicas::{LocateError, Problem};
    match e {
        LocateError::ControlPlane(e) => JobError::ControlPlane(e),
        LocateError::NoSuchReplica { .. } => JobError::InvalidInput(e.to_string()),
        LocateError::Unusable {
            problem: Problem::NotConfigured(_),
            ..
        } => JobError::Configuration(e.to_string()),
        LocateError::Unusable {
            problem: Problem::Unreachable(_),
            ..
        } => JobError::DestinationUnsure(e.to_string()),
        LocateError::Unusable { .. } => JobError::Artifact(e.to_string()),
    }
}

/// What every phase of one restore reads.
struct Restoring<'a> {
    ctx: &'a JobContext,
    job: &'a job::Model,
    force: bool,
    /// The replica asked for (`?destination=`); `None` falls back from the
    /// primary to a copy.
    replica: Option<&'a str>,
    reporter: &'a Reporter,
    /// Steps the events count: one per component, plus checking and
    /// reading.
    total: u32,
}

/// The rows a restore works from, and the target's folders.
struct Request {
    backup: backup::Model,
    target: project::Model,
    manifest: Manifest,
    /// The components to restore, in restore order.
    wanted: Vec<Component>,
    /// Open until the restore ends: the three paths below go through them.
    folders: Option<PinnedFolders>,
    root_dir: PathBuf,
    storage_dir: PathBuf,
    functions_dir: PathBuf,
}

/// What phase 1 found, for the phases after it.
struct Prepared {
    /// The pass over the artifact (phase 2).
    artifact: Artifact,
    plan: UnpackPlan,
    /// Set when the database is restored.
    database: Option<DatabaseTarget>,
}

/// The target database, as phase 1 checked it.
struct DatabaseTarget {
    url: String,
    facts: TargetFacts,
    /// The backup's PostgreSQL major version (the target's if unknown).
    backup_major: u32,
}

impl Request {
    /// Reads the rows and pins the target's folders.
    async fn load(ctx: &JobContext, row: &restore::Model) -> Result<Request, JobError> {
        let backup_row = backup::Entity::find_by_id(row.backup_id.clone())
            .one(&ctx.db)
            .await
            .map_err(JobError::from)?
            .ok_or_else(|| JobError::Record("Backup not found".into()))?;
        let target = project::Entity::find_by_id(row.project_id.clone())
            .one(&ctx.db)
            .await
            .map_err(JobError::from)?
            .ok_or_else(|| JobError::Record("Project not found".into()))?;
        let manifest: Manifest = backup_row
            .manifest
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok())
            .ok_or_else(|| JobError::Record("the backup has no manifest".into()))?;
        let wanted: Vec<String> = serde_json::from_str(&row.restore_types)
            .map_err(|e| JobError::Record(format!("bad restore types: {e}")))?;
        let wanted: Vec<Component> = Component::ALL
            .iter()
            .copied()
            .filter(|c| wanted.iter().any(|w| w == c.as_str()))
            .collect();
        if let Some(missing) = wanted
            .iter()
            .find(|c| !manifest.meta.components.iter().any(|m| m == c.as_str()))
        {
            return Err(JobError::Record(format!(
                "Backup does not contain: {missing}"
            )));
        }
        let folders = pin_folders(ctx, &target, &wanted)?;
        let pinned = |dir: Option<&PinnedDir>, stored: &str| match dir {
            Some(dir) => dir.path(),
            None => PathBuf::from(stored),
        };
        let root_dir = pinned(folders.as_ref().map(|f| &f.root), &target.root_dir);
        let storage_dir = pinned(
            folders.as_ref().and_then(|f| f.storage.as_ref()),
            &target.storage_dir,
        );
        let functions_dir = pinned(
            folders.as_ref().and_then(|f| f.functions.as_ref()),
            &target.functions_dir,
        );
        Ok(Request {
            backup: backup_row,
            target,
            manifest,
            wanted,
            folders,
            root_dir,
            storage_dir,
            functions_dir,
        })
    }

    /// The warning for a cross-project restore of config whose backup holds
    /// extra config paths, which are left out.
    fn extra_config_left_out(&self) -> Option<String> {
        let (backup_row, target) = (&self.backup, &self.target);
        let left_out = self.wanted.contains(&Component::Config)
            && backup_row.project_id != target.id
            && self
                .manifest
                .entries
                .iter()
                .any(|e| e.path.starts_with("config/extra/"));
        left_out.then(|| {
            format!(
                "The backup's extra config paths (outside project {}'s folder) were not restored \
                 into project {}: they are {}'s own",
                backup_row.project_id, target.id, backup_row.project_id
            )
        })
    }
}

/// The project's folders, opened beneath its root now: everything below
/// goes through them (`/proc/self/fd/…`), never the stored paths again.
/// A folder to restore that does not exist yet is created beneath the
/// root, one `mkdirat` at a time.
fn pin_folders(
    ctx: &JobContext,
    target: &project::Model,
    wanted: &[Component],
) -> Result<Option<PinnedFolders>, JobError> {
    if !wanted.iter().any(|c| *c != Component::Database) {
        return Ok(None);
    }
    let create = Create {
        storage: wanted.contains(&Component::Storage),
        functions: wanted.contains(&Component::Functions),
    };
    supascale_shared::project_folders::FolderRules::from_config(&ctx.config)
        .pin(target, create)
        .map(Some)
        .map_err(JobError::Target)
}

impl Restoring<'_> {
    /// Phase 1: every check that needs no artifact, what a dead attempt of
    /// this job left put right, and the plan for the pass.
    async fn prepare(
        &self,
        request: &Request,
        warnings: &mut Vec<String>,
    ) -> Result<Prepared, JobError> {
        let (ctx, job) = (self.ctx, self.job);
        let artifact = self.stored_artifact(&request.backup, warnings).await?;
        let database = if request.wanted.contains(&Component::Database) {
            Some(self.database_target(request).await?)
        } else {
            None
        };
        warnings.extend(self.recover_dead_attempts(request)?);
        let spool_dir = ctx.config.data_dir.join("tmp");
        supascale_shared::private_fs::create_dir_all(&spool_dir).map_err(io_error)?;
        self.check_disk(request, &spool_dir)?;
        let plan = UnpackPlan {
            wanted: request
                .wanted
                .iter()
                .map(|c| c.as_str().to_string())
                .collect(),
            entries: entries_by_path(&request.manifest),
            root: request.root_dir.clone(),
            storage: request.storage_dir.clone(),
            functions: request.functions_dir.clone(),
            spool: spool_dir.join(format!("{}.restore.dump", job.id)),
            job_id: job.id.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            stage: true,
            skip_extra_config: request.backup.project_id != request.target.id,
            reserve: ctx.config.disk_reserve_bytes,
        };
        Ok(Prepared {
            artifact,
            plan,
            database,
        })
    }

    /// The backup's artifact: on its destination (or a copy, saying so in
    /// `warnings`) with its recorded size, and a key to decrypt it if it is
    /// encrypted.
    async fn stored_artifact(
        &self,
        backup_row: &backup::Model,
        warnings: &mut Vec<String>,
    ) -> Result<Artifact, JobError> {
        let ctx = self.ctx;
        let (_, compression) = artifact_of(backup_row);
        let located = supascale_shared::replicas::locate(
            &ctx.db,
            &ctx.destinations,
            backup_row,
            self.replica,
        )
        .await
        .map_err(locate_error)?;
        warnings.extend(located.fallback.clone());
        let (destination, key, recorded) = (located.destination, located.key, located.size);
        let identities = if backup_row.encrypted {
            let identities = ctx
                .config
                .identities()
                .map_err(|e| JobError::Configuration(e.to_string()))?;
            if identities.is_empty() {
                return Err(JobError::Configuration(
                    "Backup is encrypted and no decryption key is configured".into(),
                ));
            }
            identities
        } else {
            Vec::new()
        };
        Ok(Artifact {
            destination,
            key,
            size: recorded,
            compression,
            encrypted: backup_row.encrypted,
            identities,
        })
    }

    /// The target database answers, its role may restore, its major
    /// version is not older than the backup's.
    async fn database_target(&self, request: &Request) -> Result<DatabaseTarget, JobError> {
        let (target, job) = (&request.target, self.job);
        let url = self
            .ctx
            .master_key
            .decrypt(&target.database_url_enc)
            .map_err(|e| JobError::Configuration(e.to_string()))?;
        let facts = database::target_facts(&url).await.map_err(|cause| {
            JobError::Target(format!("Project {} is not running: {cause}", target.id))
        })?;
        if let Some(missing) = database::missing_privilege(&facts) {
            return Err(JobError::Target(missing));
        }
        if let Some(problem) = database::identity_problem(&facts, self.force) {
            return Err(JobError::Target(format!(
                "Project {}: {problem}",
                target.id
            )));
        }
        let backup_major = request
            .manifest
            .meta
            .postgres_version
            .as_deref()
            .and_then(database::major_of_version)
            .unwrap_or(facts.major);
        if backup_major > facts.major {
            return Err(JobError::Target(format!(
                "the backup is of PostgreSQL {backup_major}, newer than the target's {}",
                facts.version
            )));
        }
        if job.attempt > 1 {
            child::end_leftover_sessions(&url, &job.id).await;
        }
        Ok(DatabaseTarget {
            url,
            facts,
            backup_major,
        })
    }

    /// Returns the warnings of putting back what dead attempts left.
    fn recover_dead_attempts(&self, request: &Request) -> Result<Vec<String>, JobError> {
        let job = self.job;
        let mut warnings = Vec::new();
        // A previous attempt of this job that died left its staging folders
        // (and, if it died between swapping its files in and committing, the
        // content it replaced): this attempt does the whole restore again.
        for dir in request
            .folders
            .iter()
            .flat_map(|f| [&f.storage, &f.functions])
            .flatten()
        {
            warnings.extend(
                supascale_shared::restore::staging::recover_dead_attempt(
                    &dir.path(),
                    &job.id,
                    "restore",
                )
                .map_err(io_error)?,
            );
        }
        // The same for config files, staged beside themselves.
        let extra: Vec<String> =
            serde_json::from_str(&request.target.config_paths).unwrap_or_default();
        for dir in supascale_shared::domain::config_dirs(&request.root_dir, &extra) {
            for (owner, path, old) in
                supascale_shared::restore::staging::file_leftovers_by_job(&dir)
            {
                if owner != job.id {
                    continue;
                }
                if old {
                    supascale_shared::restore::staging::put_back_file(&path).map_err(io_error)?;
                } else {
                    std::fs::remove_file(&path).map_err(io_error)?;
                }
            }
        }
        Ok(warnings)
    }

    /// Room for the spooled dump and the staged files, as the manifest
    /// counts them.
    fn check_disk(&self, request: &Request, spool_dir: &Path) -> Result<(), JobError> {
        let (manifest, wanted) = (&request.manifest, &request.wanted);
        let bytes_of = |prefix: &str| -> u64 {
            manifest
                .entries
                .iter()
                .filter(|e| e.path.starts_with(prefix))
                .map(|e| e.size)
                .sum()
        };
        let mut needs = Vec::new();
        let mut need = |area, path: &Path, bytes| {
            needs.push(Need {
                area,
                path: path.to_path_buf(),
                bytes,
            })
        };
        if wanted.contains(&Component::Database) {
            need(TEMPORARY_AREA, spool_dir, bytes_of("database/"));
        }
        if wanted.contains(&Component::Storage) {
            need(STORAGE_AREA, &request.storage_dir, bytes_of("storage/"));
        }
        if wanted.contains(&Component::Functions) {
            need(
                FUNCTIONS_AREA,
                &request.functions_dir,
                bytes_of("functions/"),
            );
        }
        check_free_space(&needs, self.ctx.config.disk_reserve_bytes)
    }

    /// Phase 3: loads the dump into `database`, its transaction left open.
    async fn load_database(
        &self,
        database: Option<&DatabaseTarget>,
        unpacked: &Unpacked,
        step: &mut u32,
    ) -> Result<Option<database::Loaded>, JobError> {
        let (ctx, reporter) = (self.ctx, self.reporter);
        match (database, &unpacked.dump) {
            (Some(target), Some(dump)) => {
                reporter
                    .step("database", "Restoring the database", *step, self.total)
                    .await;
                *step += 1;
                let restore = DatabaseRestore {
                    url: &target.url,
                    job_id: &self.job.id,
                    dump: &dump.path,
                    roles_sql: unpacked.roles.as_deref().unwrap_or(""),
                    facts: &target.facts,
                    backup_major: target.backup_major,
                    force: self.force,
                    lock_timeout: Duration::from_secs(ctx.config.restore_lock_timeout_seconds),
                    postgres_bin_dirs: ctx.config.postgres_bin_dirs.as_deref(),
                    mode: database::LoadMode::ReplaceAll,
                };
                let loaded = tokio::select! {
                    loaded = restore.load() => loaded?,
                    _ = reporter.cancelled() => return Err(JobError::Cancelled),
                };
                Ok(Some(loaded))
            }
            (Some(_), None) => Err(JobError::Artifact(
                "the artifact holds no database dump".into(),
            )),
            _ => Ok(None),
        }
    }

    /// Phase 4: swaps the staged files in, then commits the database; any
    /// failure puts everything back.
    async fn swap_in(
        &self,
        unpacked: Unpacked,
        loaded: Option<database::Loaded>,
        database: Option<&DatabaseTarget>,
        mut step: u32,
        warnings: &mut Vec<String>,
    ) -> Result<(), JobError> {
        let (reporter, total) = (self.reporter, self.total);
        let Unpacked {
            storage,
            functions,
            config,
            dump,
            ..
        } = unpacked;
        let mut swapped = SwappedIn::default();
        let mut failure: Option<JobError> = None;
        for (name, ready) in [("storage", storage), ("functions", functions)] {
            let Some(ready) = ready else { continue };
            reporter
                .step(name, &format!("Swapping in {name}"), step, total)
                .await;
            step += 1;
            match ready.swap_in() {
                Ok(done) => swapped.trees.push(done),
                Err(e) => {
                    failure = Some(JobError::Target(format!("cannot swap in {name}: {e}")));
                    break;
                }
            }
        }
        if failure.is_none()
            && let Some(config) = config
        {
            reporter
                .step("config", "Swapping in config", step, total)
                .await;
            match config.swap_in() {
                Ok(done) => swapped.config = Some(done),
                Err(e) => failure = Some(JobError::Target(format!("cannot swap in config: {e}"))),
            }
        }
        let mut pending_rollback = None;
        if failure.is_none()
            && let Some(loaded) = loaded
        {
            warnings.extend(loaded.warnings.iter().cloned());
            if let Err(e) = loaded.commit().await {
                failure = Some(e);
            }
        } else {
            pending_rollback = loaded;
        }
        drop(dump);
        if let Some(e) = failure {
            // Files first: putting them back is quick and synchronous, and a
            // worker stopping meanwhile must not leave them swapped in. The
            // database rolls back with its session in any case.
            swapped.roll_back(&self.job.id);
            if let Some(loaded) = pending_rollback {
                loaded.roll_back().await;
            }
            // A statement still running in a backend whose client died keeps
            // its locks until it notices: end it.
            if let Some(target) = database {
                child::end_leftover_sessions(&target.url, &self.job.id).await;
            }
            return Err(e);
        }
        swapped.commit(warnings);
        Ok(())
    }

    /// Runs the project's post-restore command, if it has one, as the last
    /// step; a failure is a warning.
    async fn post_restore_step(&self, target: &project::Model, warnings: &mut Vec<String>) {
        let Some(command) = target
            .post_restore_command
            .as_deref()
            .and_then(|c| serde_json::from_str::<Vec<String>>(c).ok())
            .filter(|c| !c.is_empty())
        else {
            return;
        };
        self.reporter
            .step(
                "post_restore",
                &format!(
                    "Running the project's post-restore command: {}",
                    command.join(" ")
                ),
                self.total,
                self.total,
            )
            .await;
        if let Err(problem) = post_restore(
            &command,
            Path::new(&target.root_dir),
            self.job,
            self.reporter,
        )
        .await
        {
            warnings.push(format!("The post-restore command {problem}"));
        }
    }
}

/// The files phase 4 swapped in, the content they replaced kept until
/// [`commit`](Self::commit).
#[derive(Default)]
struct SwappedIn {
    trees: Vec<Swapped>,
    config: Option<SwappedFiles>,
}

impl SwappedIn {
    /// Puts the project's files back; a failure is logged.
    fn roll_back(self, job_id: &str) {
        for done in self.trees.into_iter().rev() {
            if let Err(undo) = done.roll_back() {
                tracing::error!(job = %job_id, error = %undo, "cannot put the project's files back");
            }
        }
        if let Some(done) = self.config
            && let Err(undo) = done.roll_back()
        {
            tracing::error!(job = %job_id, error = %undo, "cannot put the project's config back");
        }
    }

    /// Removes the replaced content; what cannot be removed is a warning.
    fn commit(self, warnings: &mut Vec<String>) {
        for done in self.trees {
            if let Err(e) = done.commit() {
                warnings.push(format!("The previous files could not all be removed: {e}"));
            }
        }
        if let Some(done) = self.config
            && let Err(e) = done.commit()
        {
            warnings.push(format!(
                "The previous config files could not all be removed: {e}"
            ));
        }
    }
}

/// How long the post-restore command may run.
const POST_RESTORE_TIMEOUT: Duration = Duration::from_secs(600);
/// Output lines of the post-restore command sent as events, at most.
const POST_RESTORE_LINES: usize = 200;

/// Runs the project's post-restore command in its folder, each output line
/// an event. The restore is already committed: a failure is the caller's
/// warning (`Err` completes "The post-restore command …").
async fn post_restore(
    command: &[String],
    root: &Path,
    job: &job::Model,
    reporter: &Reporter,
) -> Result<(), String> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = child::command(&command[0], &job.id, None);
    child
        .args(&command[1..])
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut running = child
        .spawn()
        .map_err(|e| format!("{:?} could not start: {e}", command[0]))?;
    let stdout = BufReader::new(running.stdout.take().expect("piped")).lines();
    let stderr = BufReader::new(running.stderr.take().expect("piped")).lines();
    let mut lines = futures::stream::select(tokio_stream_lines(stdout), tokio_stream_lines(stderr));
    let mut sent = 0usize;
    let mut last = String::new();
    let ran = tokio::time::timeout(POST_RESTORE_TIMEOUT, async {
        use futures::StreamExt;
        while let Some(line) = lines.next().await {
            if sent < POST_RESTORE_LINES {
                reporter.step("post_restore", &line, 0, 0).await;
                sent += 1;
            }
            last = line;
        }
        running.wait().await
    })
    .await;
    match ran {
        Err(_) => Err(format!(
            "did not end within {} s and was stopped",
            POST_RESTORE_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("failed: {e}")),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("ended with {status}: {last}")),
    }
}

fn tokio_stream_lines<R: tokio::io::AsyncBufRead + Unpin + Send + 'static>(
    lines: tokio::io::Lines<R>,
) -> futures::stream::BoxStream<'static, String> {
    use futures::StreamExt;
    futures::stream::unfold(lines, |mut lines| async move {
        match lines.next_line().await {
            Ok(Some(line)) => Some((line, lines)),
            _ => None,
        }
    })
    .boxed()
}
