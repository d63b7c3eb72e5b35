//! `supascale-api`: serve the Backups API (and, in the embedded default, run
//! the workers in the same process).
//!
//! `supascale-api openapi` prints the OpenAPI document instead.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    supascale_shared::memory::tune_allocator();
    match std::env::args().nth(1).as_deref() {
        Some("openapi") => {
            print!("{}", supascale_api::spec_yaml());
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h" | "help") => {
            println!(
                "usage: supascale-api [openapi]\n\n\
                 Serves the Backups API. Configuration: SUPASCALE_* environment\n\
                 variables or the TOML file named by SUPASCALE_CONFIG (see README.md).\n\
                 `openapi` prints the OpenAPI document and exits."
            );
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("supascale-api: unknown argument {other:?} (try --help)");
            return ExitCode::from(2);
        }
        None => {}
    }
    let config = match supascale_shared::Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("supascale-api: {e}");
            return ExitCode::from(2);
        }
    };
    supascale_shared::telemetry::init(&config.log_format);
    match supascale_api::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = supascale_shared::redact::redact_urls(&format!("{e:#}"));
            tracing::error!(error = %message, "cannot start");
            eprintln!("supascale-api: {message}");
            ExitCode::FAILURE
        }
    }
}
