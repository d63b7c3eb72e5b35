//! The `import_functions` job: Edge Functions from an uploaded archive into
//! the project's functions folder. The archive's layout rules are
//! [`supascale_shared::import::functions`]'s; the functions it holds replace those of
//! the same name, the project's others (the `main` router among them) stay.
//! Staged beside the folder and swapped in, so a failure changes nothing.

use std::time::Instant;

use super::import;
use crate::JobContext;
use crate::reporter::Reporter;
use supascale_shared::domain::Component;
use supascale_shared::entities::job;
use supascale_shared::import::functions;
use supascale_shared::jobs::JobError;

pub async fn run(ctx: &JobContext, job: &job::Model, reporter: &Reporter) -> Result<(), JobError> {
    let started = Instant::now();
    reporter.step("check", "Checking the upload", 1, 3).await;
    let start = import::start(ctx, job, import::ARCHIVE_FORMATS).await?;
    let (pinned, mut warnings) =
        import::open_target_folder(ctx, job, &start.project, Component::Functions)?;
    let dir = pinned.path();
    let detected = start.detected;
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
        .map_err(|e| JobError::Target(format!("cannot swap in the functions: {e}")))?;
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
