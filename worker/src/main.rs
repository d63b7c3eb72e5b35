//! `supascale-worker`: a process that runs jobs for a scale-out deployment
//! (PostgreSQL control plane, Redis queue). Any number of them may run on
//! any number of machines.
//!
//! It starts like the API does (configuration, migrations, master key
//! check), then waits for jobs until SIGTERM or Ctrl-C and exits 0. The job
//! kinds and the queue consumer arrive with the job pipeline.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
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
    supascale_shared::destinations::Destinations::from_config(
        &config.destinations,
        &config.data_dir,
    )?;
    let (_db, _key) = supascale_shared::open_control_plane(&config).await?;
    println!(
        "supascale-worker ready ({:?} deployment), waiting for jobs",
        config.deployment()
    );
    tracing::info!(deployment = ?config.deployment(), "worker ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("worker stopped");
    Ok(())
}
