//! The Postgres client programs a job runs (`pg_dump`, `pg_restore`,
//! `psql`): they must not outlive the job, and a retry must be able to find
//! what a dead attempt left open on the project's database.
//!
//! - Each child gets its own process group (a Ctrl-C meant for the worker's
//!   terminal does not reach it half-way through) and `PR_SET_PDEATHSIG`
//!   = SIGKILL, so the kernel ends it when the worker dies, even by SIGKILL.
//!   The signal follows the *thread* that spawned the child: children are
//!   spawned from async tasks, which run on the runtime's long-lived worker
//!   threads, never from `spawn_blocking` threads (those exit when idle).
//! - `kill_on_drop`: a job that is cancelled drops its child's handle.
//! - Each connects with `application_name=supascale-job-<job id>`, which
//!   [`end_leftover_sessions`] looks for.

use std::time::Duration;

/// `program` set up to die with its worker and to name its session after
/// `job_id`. The password, when there is one, goes in the environment.
pub fn command(program: &str, job_id: &str, password: Option<&str>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .env("PGAPPNAME", application_name(job_id))
        .kill_on_drop(true)
        .process_group(0)
        .stdin(std::process::Stdio::null());
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The worker may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("the worker is gone"));
            }
            Ok(())
        });
    }
    command
}

pub fn application_name(job_id: &str) -> String {
    format!("supascale-job-{job_id}")
}

/// Ends the sessions an earlier attempt of `job_id` left on the project's
/// database (a worker that died mid-restore leaves its backend holding
/// locks). Best effort: a role that may not signal them is told in the log.
pub async fn end_leftover_sessions(url: &str, job_id: &str) {
    use sqlx::Connection;
    let connect = tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(url));
    let Ok(Ok(mut conn)) = connect.await else {
        return;
    };
    // pg_terminate_backend in the select list, never in WHERE: the planner
    // may evaluate WHERE conditions in any order, and would then end every
    // session the role may signal.
    let ended: Result<Vec<(i32, bool)>, _> = sqlx::query_as(
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(application_name(job_id))
    .fetch_all(&mut conn)
    .await;
    match ended {
        Ok(pids) if !pids.is_empty() => {
            tracing::info!(job = %job_id, sessions = pids.len(), "ended sessions a previous attempt left open")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(job = %job_id, error = %e, "cannot end a previous attempt's sessions")
        }
    }
    let _ = conn.close().await;
}

/// The URL a child may see and its password, which goes to it through the
/// environment ([`crate::domain::split_password`]).
pub fn split_password(url: &str) -> Result<(String, Option<String>), crate::jobs::JobError> {
    crate::domain::split_password(url)
        .map_err(|_| crate::jobs::JobError::Record("the project's database URL is invalid".into()))
}
