//! `supascale-worker`: a process that runs jobs for a scale-out deployment
//! (PostgreSQL control plane, Redis queue). Any number of them may run on
//! any number of machines.
//!
//! It starts like the API does (configuration, migrations, master key
//! check), then runs jobs from the queue until SIGTERM or Ctrl-C: it stops
//! taking jobs, lets running ones finish (up to 60 s) and exits 0.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    supascale_shared::memory::tune_allocator();
    if matches!(
        std::env::args().nth(1).as_deref(),
        Some("--help" | "-h" | "help")
    ) {
        println!(
            "usage: supascale-worker\n\nRuns backup, restore and import jobs. Configuration: the same\n\
             SUPASCALE_* variables and SUPASCALE_CONFIG file as supascale-api (see README.md)."
        );
        return ExitCode::SUCCESS;
    }
    let config = match supascale_shared::Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("supascale-worker: {e}");
            return ExitCode::from(2);
        }
    };
    supascale_shared::telemetry::init(&config.log_format);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = supascale_shared::redact::redact_urls(&format!("{e:#}"));
            tracing::error!(error = %message, "cannot start");
            eprintln!("supascale-worker: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: supascale_shared::Config) -> anyhow::Result<()> {
    let destinations = supascale_shared::destinations::Destinations::from_config(
        &config.destinations,
        &config.data_dir,
    )?;
    // A wrong upload location fails at start, not at the first import.
    supascale_shared::uploads::UploadStore::new(&config, &destinations)
        .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let (db, master_key) = supascale_shared::open_control_plane(&config).await?;
    let queue = supascale_shared::jobs::JobQueue::open(&config, config.worker_concurrency).await?;
    let events = supascale_shared::jobs::events::EventBus::open(&config).await?;
    let ctx = std::sync::Arc::new(supascale_worker::JobContext {
        db,
        destinations,
        master_key,
        config: std::sync::Arc::new(config.clone()),
        events,
        queue,
        worker_id: supascale_worker::worker_id(),
    });
    println!(
        "supascale-worker {} ready ({:?} deployment), waiting for jobs",
        ctx.worker_id,
        config.deployment()
    );
    tracing::info!(worker = %ctx.worker_id, deployment = ?config.deployment(), "worker ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    supascale_worker::run(ctx, config.worker_concurrency, shutdown).await?;
    tracing::info!("worker stopped");
    Ok(())
}
