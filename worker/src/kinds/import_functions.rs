//! The `import_functions` job: Edge Functions from an uploaded archive into
//! the project's functions folder. The archive's layout rules are
//! [`supascale_shared::import::functions`]'s; the functions it holds replace those of
//! the same name, the project's others (the `main` router among them) stay.
//! Staged beside the folder and swapped in, so a failure changes nothing.

use std::time::Instant;

use super::import;
use crate::JobContext;
use crate::reporter::Reporter;
use supascale_shared::entities::job;
use supascale_shared::import::functions;
use supascale_shared::jobs::JobError;

pub async fn run(ctx: &JobContext, job: &job::Model, reporter: &Reporter) -> Result<(), JobError> {
    let started = Instant::now();
    reporter.step("check", "Checking the upload", 1, 3).await;
    let start = import::start(ctx, job, import::ARCHIVE_FORMATS).await?;
    // Opened beneath the project's root now (created there when missing):
    // the import writes through it, never the stored path again.
    let folders = supascale_shared::project_folders::FolderRules::from_config(&ctx.config)
        .pin(
            &start.project,
            supascale_shared::project_folders::Create {
                functions: true,
                ..Default::default()
            },
        )
        .map_err(JobError::Abort)?;
    let pinned = folders.functions.as_ref().ok_or_else(|| {
        JobError::Abort(format!(
            "project {}'s functionsDir {} could not be created",
            start.project.id, start.project.functions_dir
        ))
    })?;
    let dir = pinned.path();
    let detected = start.detected;
    let mut warnings: Vec<String> =
        supascale_shared::restore::staging::recover_dead_attempt(&dir, &job.id, "import")
            .map_err(supascale_shared::jobs::io_error)?
            .into_iter()
            .collect();
    reporter
        .step("read", "Unpacking the functions beside the project's", 2, 3)
        .await;
    let staged = {
        let (path, dir, job_id, limits) = (
            start.upload.path.clone(),
            dir.clone(),
            job.id.clone(),
            import::limits(
                ctx,
                start.payload.size,
                supascale_shared::disk::FUNCTIONS_AREA,
                &dir,
            )?,
        );
        import::stage_off_thread(reporter, &start.payload.file_name, move |stop| {
            functions::stage_functions(&path, &detected, &dir, &job_id, limits, stop)
        })
        .await?
    };
    warnings.extend(staged.warnings.iter().cloned());
    reporter
        .step("swap", "Swapping the functions in", 3, 3)
        .await;
    let swapped = staged
        .ready
        .merge_in()
        .map_err(|e| JobError::Abort(format!("cannot swap in the functions: {e}")))?;
    if let Err(e) = swapped.commit() {
        warnings.push(format!(
            "The replaced functions could not all be removed: {e}"
        ));
    }
    import::finish(
        ctx,
        job,
        reporter,
        serde_json::json!({
            "durationMs": started.elapsed().as_millis() as u64,
            "functions": staged.functions,
        }),
        &warnings,
    )
    .await
}
