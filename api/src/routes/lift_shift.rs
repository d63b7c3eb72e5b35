//! `POST /projects/{id}/import/lift-shift`: migrates a Supabase Cloud
//! project into a registered one. Everything the request says is checked
//! here, before any stream starts (400s in the contract's shape, nothing
//! written); then a `lift_shift` job is written and queued like any other,
//! and the answer is that job's event stream (`start`, `step`, `warning`,
//! `complete` | `error`), tailing `job_events` as `GET /jobs/{id}/events`
//! does. A client that drops re-attaches there; the migration goes on.
//!
//! The service-role key and the database password are sealed with the
//! master key into the job row (`jobs.secrets_enc`), wiped when the job
//! ends; the payload holds the source's URLs without them.

use futures::stream::BoxStream;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};
use supascale_shared::api_key::Permission;
use supascale_shared::domain::DatabaseTarget;
use supascale_shared::entities::{job, project};
use supascale_shared::jobs::params::{LiftShiftPayload, LiftShiftSecrets};
use supascale_shared::jobs::{self, JobKind};
use supascale_shared::lift_shift::{self, source};
use supascale_shared::restore::plan::{PlanContext, check_target_database};

use super::ApiTags;
use super::jobs::{JobEvent, job_events};
use crate::answers::JobRef;
use crate::auth::{Auth, Principal};
use crate::error::{ApiError, ApiResult};
use crate::payload::JsonBody;
use crate::start_job::{JobAnswer, NewJob, StartRequest, start_job};
use crate::state::AppState;

/// The request, as the contract shows it, plus `databaseUrl`.
#[derive(Object, serde::Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LiftShiftRequest {
    /// The Supabase project URL, `https://<ref>.supabase.co` (plain
    /// `http://` only to a loopback address).
    pub source_url: String,
    /// The source's service-role key (Dashboard → Settings → API).
    pub service_role_key: String,
    /// The source database's password (Dashboard → Settings → Database).
    pub database_password: String,
    /// `database | storage | auth`, at least one.
    pub components: Vec<String>,
    /// The source database to read instead of `db.<ref>.supabase.co:5432`
    /// (the session pooler, or any PostgreSQL); required when `sourceUrl`
    /// is not `https://<ref>.supabase.co`. Its password is
    /// `databasePassword`. Port 6543 (the transaction pooler) is refused.
    pub database_url: Option<String>,
}

#[derive(Debug, Object)]
pub struct LiftShiftAccepted {
    pub success: bool,
    pub job: JobRef,
    pub message: String,
}

#[derive(ApiResponse)]
pub enum StartedLiftShift {
    /// The migration's events (Server-Sent Events) until `complete` or
    /// `error`; `Location` is the job, whose `/events` a client that drops
    /// re-attaches to (with `Last-Event-ID`).
    #[oai(status = 200)]
    Events(
        EventStream<BoxStream<'static, JobEvent>>,
        #[oai(header = "Location")] String,
    ),
    /// Asked for with `Prefer: respond-async` or `?async=true`: the job,
    /// to follow at `Location` or its `eventsUrl`.
    #[oai(status = 202)]
    Accepted(Json<LiftShiftAccepted>, #[oai(header = "Location")] String),
}

pub struct LiftShiftApi;

#[OpenApi(tag = "ApiTags::Projects")]
impl LiftShiftApi {
    /// Lift & Shift migration from Supabase Cloud
    ///
    /// Migrates the chosen components of a Supabase Cloud project into this
    /// project: `database` (roles, schema and data, all or nothing; the
    /// project must be running), `storage` (every bucket and object) and
    /// `auth` (the enabled providers, as warnings: their secrets must be
    /// entered again). Answers with the migration's Server-Sent Events;
    /// `Prefer: respond-async` or `?async=true` answer 202 with the job.
    #[oai(
        path = "/projects/:id/import/lift-shift",
        method = "post",
        operation_id = "liftShift"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn lift_shift(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        id: Path<String>,
        body: JsonBody<LiftShiftRequest>,
        /// `respond-async` to get 202 at once.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// The same key (from the same API key) within 24 hours answers
        /// with the first request's migration.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// `true` to get 202 at once.
        #[oai(name = "async")]
        run_async: Query<Option<bool>>,
    ) -> ApiResult<StartedLiftShift> {
        let principal = auth.principal();
        principal.require(Permission::BackupsWrite)?;
        let project = crate::visible::visible_project(&state, principal, &id.0).await?;
        let request = body.0;
        let checked = check_request(&state, principal, &project, &request).await?;
        let start = StartRequest::new(
            principal,
            prefer.0.as_deref(),
            run_async.0,
            idempotency_key.0.as_deref(),
            || {
                format!(
                    "lift_shift\n{}\n{}\n{}\n{}",
                    project.id,
                    checked.payload.source_url,
                    checked.payload.database_url,
                    checked.payload.components.join(",")
                )
            },
        )?;
        start_job(&state, start, || async {
            if checked.payload.components.iter().any(|c| c == "database") {
                check_target(&state, &project).await?;
            }
            let payload = serde_json::to_value(&checked.payload)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let mut job = jobs::store::new_job(
                JobKind::LiftShift,
                Some(&project.id),
                payload,
                state.config.job_attempts,
            );
            let secrets = LiftShiftSecrets {
                service_role_key: request.service_role_key.clone(),
                database_password: request.database_password.clone(),
            };
            let sealed =
                serde_json::to_string(&secrets).map_err(|e| ApiError::internal(e.to_string()))?;
            job.secrets_enc = sea_orm::ActiveValue::Set(Some(state.master_key.encrypt(&sealed)));
            Ok(NewJob::new(job, ()))
        })
        .await
    }
}

/// The request, checked.
struct Checked {
    payload: LiftShiftPayload,
}

/// Every check that needs no job: fields, the source's addresses, who may
/// point a migration at them.
async fn check_request(
    state: &AppState,
    principal: &Principal,
    project: &project::Model,
    request: &LiftShiftRequest,
) -> ApiResult<Checked> {
    let components =
        lift_shift::parse_components(&request.components).map_err(ApiError::bad_request)?;
    if request.service_role_key.trim().is_empty() {
        return Err(ApiError::bad_request("serviceRoleKey must not be empty"));
    }
    if request.database_password.is_empty() && components.iter().any(|c| c == "database") {
        return Err(ApiError::bad_request(
            "databasePassword must not be empty when database is migrated",
        ));
    }
    let mut api = source::parse_source_url(&request.source_url).map_err(ApiError::bad_request)?;
    if let Some((host, port)) = source_host(&api) {
        match classify(&host, port).await {
            HostClass::Metadata => {
                return Err(ApiError::bad_request(format!(
                    "sourceUrl: {host} resolves to a link-local or cloud metadata address; it \
                     is never contacted"
                )));
            }
            HostClass::Local => api.local = true,
            HostClass::Public => {}
        }
    }
    let given = request
        .database_url
        .as_deref()
        .is_some_and(|u| !u.trim().is_empty());
    if !components.iter().any(|c| c == "database") && !given {
        // Nothing reads the source database: it need not be named.
        if api.local {
            require_unrestricted_admin(principal)?;
        }
        return Ok(Checked {
            payload: LiftShiftPayload {
                source_url: api.base,
                database_url: String::new(),
                database_derived: false,
                components,
            },
        });
    }
    let database = source::source_database(&api, request.database_url.as_deref())
        .map_err(ApiError::bad_request)?;
    let resolved_local = match classify(&database.target.host, database.target.port).await {
        HostClass::Metadata => {
            return Err(ApiError::bad_request(format!(
                "databaseUrl: {} resolves to a link-local or cloud metadata address; it is \
                 never contacted",
                database.target.host
            )));
        }
        HostClass::Local => true,
        HostClass::Public => false,
    };
    if api.local || resolved_local || !database.derived {
        require_unrestricted_admin(principal)?;
    }
    if !database.derived {
        check_source_database(state, project, request, &database.url, &database.target).await?;
    }
    Ok(Checked {
        payload: LiftShiftPayload {
            source_url: api.base,
            database_url: database.url,
            database_derived: database.derived,
            components,
        },
    })
}

/// A source on this machine or its network could be any database or
/// service the workers reach: a key limited to projects, or without admin,
/// must not be able to read them through a migration.
fn require_unrestricted_admin(principal: &Principal) -> ApiResult<()> {
    principal.require_unrestricted_admin().map_err(|_| {
        ApiError::forbidden(
            "A migration from a source on this machine or a private network, or from a \
             databaseUrl, needs the admin permission on a key that is not limited to projects",
        )
    })
}

/// Where a host name leads.
enum HostClass {
    /// To a link-local or cloud metadata address (at least one of its
    /// addresses): never contacted.
    Metadata,
    /// To this machine or a private network.
    Local,
    Public,
}

/// The host and port of a source API named by a domain (literal addresses
/// were checked by `parse_source_url`).
fn source_host(api: &source::SourceApi) -> Option<(String, u16)> {
    let url = url::Url::parse(&api.base).ok()?;
    match url.host()? {
        url::Host::Domain(d) => Some((d.to_string(), url.port_or_known_default().unwrap_or(443))),
        _ => None,
    }
}

/// What `host` resolves to now. A name that does not resolve is public:
/// the job says it cannot be reached.
async fn classify(host: &str, port: u16) -> HostClass {
    let host = host.trim_matches(['[', ']']);
    let ips: Vec<std::net::IpAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) if host.eq_ignore_ascii_case("localhost") => return HostClass::Local,
        Err(_) => {
            let lookup = tokio::net::lookup_host((host, port));
            match tokio::time::timeout(std::time::Duration::from_secs(5), lookup).await {
                Ok(Ok(addresses)) => addresses.map(|a| a.ip()).collect(),
                _ => Vec::new(),
            }
        }
    };
    if ips.iter().any(|ip| source::is_metadata_or_link_local(*ip)) {
        HostClass::Metadata
    } else if ips
        .iter()
        .any(|ip| ip.is_loopback() || source::is_private(*ip))
    {
        HostClass::Local
    } else {
        HostClass::Public
    }
}

/// A `databaseUrl` never names Supascale's control plane or a registered
/// project's database (the target's included): a migration reads its
/// source whole.
async fn check_source_database(
    state: &AppState,
    project: &project::Model,
    request: &LiftShiftRequest,
    url: &str,
    target: &DatabaseTarget,
) -> ApiResult<()> {
    let with_password = url::Url::parse(url)
        .ok()
        .and_then(|mut u| {
            u.set_password(Some(&request.database_password)).ok()?;
            Some(u.to_string())
        })
        .unwrap_or_else(|| url.to_string());
    if super::projects::names_control_plane(state, &with_password, target).await {
        return Err(ApiError::bad_request(
            "databaseUrl names Supascale's own control-plane database; a migration reads a \
             Supabase Cloud project's database",
        ));
    }
    if let Some(other) = super::projects::project_with_database(state, None, target).await? {
        let whose = if other == project.id {
            "this project's own database: the source and the target must differ".to_string()
        } else {
            format!(
                "the database of project {other}; copy between registered projects with a \
                 backup and a restore"
            )
        };
        return Err(ApiError::bad_request(format!("databaseUrl names {whose}")));
    }
    Ok(())
}

/// `database` writes into the project's database: it must answer now.
async fn check_target(state: &AppState, project: &project::Model) -> ApiResult<()> {
    let ctx = PlanContext {
        db: &state.db,
        config: &state.config,
        destinations: &state.destinations,
        master_key: &state.master_key,
    };
    Ok(check_target_database(&ctx, project, false, None).await?)
}

impl JobAnswer for StartedLiftShift {
    type Row = ();

    async fn answer(
        state: &AppState,
        job_row: &job::Model,
        run_async: bool,
        _known: Option<()>,
    ) -> ApiResult<Self> {
        let location = crate::answers::job_url(&job_row.id);
        if run_async {
            return Ok(StartedLiftShift::Accepted(
                Json(LiftShiftAccepted {
                    success: true,
                    job: crate::answers::job_ref(job_row, &job_row.status),
                    message: "Lift & Shift migration started".into(),
                }),
                location,
            ));
        }
        Ok(StartedLiftShift::Events(
            job_events(state.clone(), job_row.id.clone(), 0),
            location,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hosts_are_classified_by_where_they_lead() {
        assert!(matches!(
            classify("169.254.169.254", 80).await,
            HostClass::Metadata
        ));
        assert!(matches!(
            classify("[fd00:ec2::254]", 80).await,
            HostClass::Metadata
        ));
        assert!(matches!(classify("localhost", 80).await, HostClass::Local));
        assert!(matches!(classify("10.1.2.3", 5432).await, HostClass::Local));
        assert!(matches!(
            classify("127.0.0.1", 5432).await,
            HostClass::Local
        ));
        assert!(matches!(
            classify("203.0.113.7", 5432).await,
            HostClass::Public
        ));
    }
}
