//! The bodies several routes answer with: a plain message, and how a
//! job-starting request refers to its job while it runs.

use poem_openapi::Object;
use supascale_shared::entities::job;

#[derive(Debug, Object)]
pub struct Message {
    pub success: bool,
    pub message: String,
}

/// A job that is still running.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct JobRef {
    pub id: String,
    pub kind: String,
    pub status: String,
    /// Where the job's record is.
    pub job_url: String,
    /// The job's live events (SSE).
    pub events_url: String,
}

pub fn events_url(job_id: &str) -> String {
    format!("{}/jobs/{job_id}/events", crate::API_PREFIX)
}

pub fn job_url(job_id: &str) -> String {
    format!("{}/jobs/{job_id}", crate::API_PREFIX)
}

/// How a job-starting request refers to its job while it runs.
pub fn job_ref(job: &job::Model, status: &str) -> JobRef {
    JobRef {
        id: job.id.clone(),
        kind: job.kind.clone(),
        status: status.to_string(),
        job_url: job_url(&job.id),
        events_url: events_url(&job.id),
    }
}
