//! `GET /metrics`: Prometheus text exposition format (version 0.0.4), outside
//! `/api/v1` and without authentication, like `/healthz` (see
//! docs/metrics.md for every metric and example alerts).
//!
//! Two sources:
//! - the control plane, read on each scrape with a handful of aggregate
//!   queries (no row of a job or backup comes back to us), so every API
//!   process answers the same job, backup and worker numbers whichever one
//!   is scraped. The job query reads every `jobs` row once per scrape: about
//!   0.1 s per 100,000 jobs on PostgreSQL, several times that on SQLite,
//!   which parses its text timestamps (a summary table kept by triggers,
//!   like `backup_totals`, would make it constant);
//! - this process's HTTP traffic, counted in memory by [`Track`], so those
//!   series are per process (Prometheus adds an `instance` label).
//!
//! Nothing secret is exposed: project ids, job kinds, route templates
//! (operation ids), counts and sizes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Display, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use poem::http::{Method, StatusCode};
use poem::web::{Data, Json};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response, handler};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    QuerySelect, Statement,
};
use serde_json::json;
use supascale_shared::entities::{destination_health, worker};
use supascale_shared::jobs::{
    STALE_AFTER, STATUS_COMPLETED, STATUS_FAILED, STATUS_IN_PROGRESS, STATUS_PENDING,
};

use crate::state::AppState;
use supascale_shared::jobs::JobKind;

/// What Prometheus expects for the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of `supascale_job_duration_seconds` (a job runs from
/// seconds to hours).
pub const JOB_DURATION_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];

/// Upper bounds of `supascale_http_request_duration_seconds` (a waiting
/// `POST /backups` may take as long as its job).
pub const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A scrape that cannot read the control plane within this answers 503
/// (below Prometheus' default scrape timeout of 10 s).
const COLLECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `route` label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

// ---------------------------------------------------------------------------
// The endpoint

/// What the `/metrics` handler shares with the [`Track`] middleware, one per
/// application.
#[derive(Default)]
pub struct Metrics {
    http: HttpMetrics,
    /// Held while this process reads the control plane for a scrape.
    collecting: Arc<tokio::sync::Mutex<()>>,
}

/// `GET /metrics`.
#[handler]
pub async fn metrics(state: Data<&AppState>, metrics: Data<&Arc<Metrics>>) -> Response {
    // One collection at a time per process, run to its end even when the
    // scrape gives up: a slow control plane is never asked again by each
    // scrape that times out meanwhile, and a scrape that gave up while it
    // waited for its turn costs nothing.
    let (answer, answered) = tokio::sync::oneshot::channel();
    let gate = metrics.collecting.clone();
    let state = state.0.clone();
    tokio::spawn(async move {
        let _running = gate.lock_owned().await;
        if !answer.is_closed() {
            let _ = answer.send(Snapshot::collect(&state).await);
        }
    });
    match tokio::time::timeout(COLLECT_TIMEOUT, answered).await {
        Ok(Ok(Ok(snapshot))) => {
            let mut out = Exposition::default();
            snapshot.render(&mut out);
            metrics.http.render(&mut out);
            Response::builder()
                .content_type(CONTENT_TYPE)
                .header("cache-control", "no-store")
                .body(out.finish())
        }
        failed => {
            let detail = match failed {
                Ok(Ok(Err(e))) => supascale_shared::redact::redact_urls(&format!("{e:#}")),
                Ok(Err(_)) => "the collection stopped without an answer".to_string(),
                _ => format!("no answer within {COLLECT_TIMEOUT:?}"),
            };
            tracing::warn!(error = %detail, "cannot collect metrics");
            Json(json!({
                "success": false,
                "error": "Metrics unavailable: the control-plane database or the queue does not answer",
            }))
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .into_response()
        }
    }
}

// ---------------------------------------------------------------------------
// Control-plane numbers

/// Job rows per (kind, status), and finished jobs' durations per kind.
type JobStats = (BTreeMap<(String, String), i64>, BTreeMap<String, Durations>);

/// The durations of a kind's finished jobs.
#[derive(Debug, Default, Clone, PartialEq)]
struct Durations {
    count: i64,
    sum: f64,
    /// Cumulative, one per [`JOB_DURATION_BUCKETS`] bound.
    buckets: Vec<i64>,
}

/// What one scrape read from the control plane and the queue.
#[derive(Debug, Default)]
struct Snapshot {
    /// Job rows per (kind, status).
    jobs: BTreeMap<(String, String), i64>,
    durations: BTreeMap<String, Durations>,
    backlog: u64,
    bytes_completed: i64,
    workers_live: i64,
    worker_slots: i64,
    /// Registered projects and the unix second of their newest completed
    /// backup (`None`: never).
    last_backup: Vec<(String, Option<i64>)>,
    /// The configured destinations' latest probes (a destination not
    /// probed yet has none).
    destinations: Vec<destination_health::Model>,
}

impl Snapshot {
    async fn collect(state: &AppState) -> anyhow::Result<Snapshot> {
        let db = &state.db;
        let (
            (jobs, durations),
            bytes_completed,
            (workers_live, worker_slots),
            last_backup,
            backlog,
            probes,
        ) = tokio::try_join!(
            async { job_stats(db).await.map_err(anyhow::Error::from) },
            async { bytes_completed(db).await.map_err(anyhow::Error::from) },
            async { live_workers(db).await.map_err(anyhow::Error::from) },
            async { last_backups(db).await.map_err(anyhow::Error::from) },
            state.queue.backlog(),
            async {
                destination_health::Entity::find()
                    .all(db)
                    .await
                    .map_err(anyhow::Error::from)
            },
        )?;
        let configured = state.destinations.names();
        let destinations = probes
            .into_iter()
            .filter(|p| configured.contains(&p.name.as_str()))
            .collect();
        Ok(Snapshot {
            jobs,
            durations,
            backlog,
            bytes_completed,
            workers_live,
            worker_slots,
            last_backup,
            destinations,
        })
    }

    /// Every known kind, plus any other kind a row names, so a panel shows a
    /// 0 rather than no series.
    fn kinds(&self) -> BTreeSet<String> {
        JobKind::ALL
            .iter()
            .map(|k| k.to_string())
            .chain(self.jobs.keys().map(|(kind, _)| kind.clone()))
            .chain(self.durations.keys().cloned())
            .collect()
    }

    fn count(&self, kind: &str, status: &str) -> i64 {
        self.jobs
            .get(&(kind.to_string(), status.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn render(&self, out: &mut Exposition) {
        let kinds = self.kinds();
        let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();

        out.family(
            "supascale_queue_depth",
            "gauge",
            "Jobs waiting to run (pending job rows, including retries waiting for their backoff), by kind.",
        );
        for &kind in &kinds {
            let n = self.count(kind, STATUS_PENDING);
            out.sample("supascale_queue_depth", &[("kind", kind)], n);
        }

        out.family(
            "supascale_queue_backlog",
            "gauge",
            "Deliveries waiting in the job queue (SQLite queue or Redis), not yet fetched by a worker.",
        );
        out.sample("supascale_queue_backlog", &[], self.backlog);

        out.family(
            "supascale_jobs_in_flight",
            "gauge",
            "Jobs running now (in_progress job rows), by kind.",
        );
        for &kind in &kinds {
            let n = self.count(kind, STATUS_IN_PROGRESS);
            out.sample("supascale_jobs_in_flight", &[("kind", kind)], n);
        }

        out.family(
            "supascale_jobs_finished_total",
            "counter",
            "Jobs that ended, by kind and final status (completed or failed), from the job rows.",
        );
        for &kind in &kinds {
            for status in [STATUS_COMPLETED, STATUS_FAILED] {
                let n = self.count(kind, status);
                out.sample(
                    "supascale_jobs_finished_total",
                    &[("kind", kind), ("status", status)],
                    n,
                );
            }
        }

        out.family(
            "supascale_job_duration_seconds",
            "histogram",
            "Time from a finished job's first start to its end (all attempts), by kind.",
        );
        for &kind in &kinds {
            let durations = self
                .durations
                .get(kind)
                .cloned()
                .unwrap_or_else(|| Durations {
                    buckets: vec![0; JOB_DURATION_BUCKETS.len()],
                    ..Durations::default()
                });
            out.histogram(
                "supascale_job_duration_seconds",
                &[("kind", kind)],
                JOB_DURATION_BUCKETS,
                &durations.buckets,
                durations.sum,
                durations.count,
            );
        }

        out.family(
            "supascale_bytes_processed_total",
            "counter",
            "Bytes of the artifacts of completed backups (the sum of their sizes).",
        );
        out.sample(
            "supascale_bytes_processed_total",
            &[("kind", "backup")],
            self.bytes_completed,
        );

        out.family(
            "supascale_workers_live",
            "gauge",
            "Worker processes (and in-process worker loops of the API) seen alive within the last 10 seconds.",
        );
        out.sample("supascale_workers_live", &[], self.workers_live);

        out.family(
            "supascale_worker_slots",
            "gauge",
            "Jobs the live workers can run at once (the sum of their concurrency).",
        );
        out.sample("supascale_worker_slots", &[], self.worker_slots);

        out.family(
            "supascale_destination_up",
            "gauge",
            "1 when the destination's latest probe (a small object written, read back and deleted) succeeded, 0 when it failed.",
        );
        for probe in &self.destinations {
            out.sample(
                "supascale_destination_up",
                &[("destination", probe.name.as_str())],
                i64::from(probe.up),
            );
        }
        out.family(
            "supascale_destination_probe_duration_seconds",
            "gauge",
            "How long the destination's latest probe took.",
        );
        for probe in &self.destinations {
            out.sample(
                "supascale_destination_probe_duration_seconds",
                &[("destination", probe.name.as_str())],
                probe.latency_ms as f64 / 1000.0,
            );
        }
        out.family(
            "supascale_destination_last_probe_timestamp_seconds",
            "gauge",
            "Unix time (whole seconds) of the destination's latest probe.",
        );
        for probe in &self.destinations {
            out.sample(
                "supascale_destination_last_probe_timestamp_seconds",
                &[("destination", probe.name.as_str())],
                probe.checked_at.timestamp(),
            );
        }

        out.family(
            "supascale_last_successful_backup_timestamp_seconds",
            "gauge",
            "Unix time (whole seconds) of each registered project's newest completed backup; 0 when it has none.",
        );
        for (project, at) in &self.last_backup {
            out.sample(
                "supascale_last_successful_backup_timestamp_seconds",
                &[("project", project.as_str())],
                at.unwrap_or(0),
            );
        }
    }
}

/// The SQL that reads every job number in one pass over `jobs`, one row
/// per (kind, status): the rows, how many have a duration (started and
/// finished), the sum of those durations in seconds, then the cumulative
/// count of each [`JOB_DURATION_BUCKETS`] bucket.
fn job_stats_sql(backend: DbBackend) -> String {
    let mut sql = String::from("SELECT kind, status, COUNT(*) AS n, COUNT(d) AS timed, ");
    // Bounds are our constants, never input. A negative duration (clocks of
    // two workers apart) falls in the first bucket, as 0 would.
    match backend {
        DbBackend::Postgres => {
            // Interval arithmetic and comparisons; seconds only once per group
            // (EXTRACT yields a slow NUMERIC).
            sql.push_str(
                "CAST(COALESCE(EXTRACT(EPOCH FROM SUM(d)), 0) AS DOUBLE PRECISION) AS total",
            );
            for (i, bound) in JOB_DURATION_BUCKETS.iter().enumerate() {
                write!(
                    sql,
                    ", SUM(CASE WHEN d <= INTERVAL '{bound} seconds' THEN 1 ELSE 0 END) AS b{i}"
                )
                .unwrap();
            }
            sql.push_str(
                " FROM (SELECT kind, status, finished_at - started_at AS d FROM jobs) timed \
                 GROUP BY kind, status",
            );
        }
        _ => {
            // SQLite keeps times as RFC 3339 text
            // (`2026-11-27T08:46:00.123456+00:00`); julianday() reads them to
            // the millisecond, so round there (a duration of exactly 1 s
            // stays in the 1 s bucket). `LIMIT -1` stops SQLite from
            // flattening the subquery, which would parse both times again
            // for every bucket.
            sql.push_str("COALESCE(SUM(d), 0.0) AS total");
            for (i, bound) in JOB_DURATION_BUCKETS.iter().enumerate() {
                write!(
                    sql,
                    ", SUM(CASE WHEN d <= {bound:?} THEN 1 ELSE 0 END) AS b{i}"
                )
                .unwrap();
            }
            sql.push_str(
                " FROM (SELECT kind, status, \
                 ROUND((julianday(finished_at) - julianday(started_at)) * 86400.0, 3) AS d \
                 FROM jobs ORDER BY kind, status LIMIT -1) timed \
                 GROUP BY kind, status",
            );
        }
    }
    sql
}

/// Job rows per (kind, status), and the durations of finished jobs per kind.
async fn job_stats(db: &DatabaseConnection) -> Result<JobStats, DbErr> {
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(Statement::from_string(backend, job_stats_sql(backend)))
        .await?;
    let mut counts = BTreeMap::new();
    let mut durations: BTreeMap<String, Durations> = BTreeMap::new();
    for row in rows {
        let kind: String = row.try_get_by_index(0)?;
        let status: String = row.try_get_by_index(1)?;
        let n: i64 = row.try_get_by_index(2)?;
        if status == STATUS_COMPLETED || status == STATUS_FAILED {
            let timed: i64 = row.try_get_by_index(3)?;
            let sum: f64 = row.try_get_by_index(4)?;
            let entry = durations.entry(kind.clone()).or_insert_with(|| Durations {
                buckets: vec![0; JOB_DURATION_BUCKETS.len()],
                ..Durations::default()
            });
            entry.count += timed;
            entry.sum += sum;
            for (i, bucket) in entry.buckets.iter_mut().enumerate() {
                *bucket += row.try_get_by_index::<i64>(5 + i)?;
            }
        }
        counts.insert((kind, status), n);
    }
    Ok((counts, durations))
}

/// The sizes of completed backups, from `backup_totals` (at most a few
/// dozen rows, kept exact by triggers on `backups`).
async fn bytes_completed(db: &DatabaseConnection) -> Result<i64, DbErr> {
    let sql = format!(
        "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM backup_totals WHERE status = '{STATUS_COMPLETED}'"
    );
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    match row {
        Some(row) => row.try_get_by_index(0),
        None => Ok(0),
    }
}

/// Workers seen within [`STALE_AFTER`], and their summed concurrency.
async fn live_workers(db: &DatabaseConnection) -> Result<(i64, i64), DbErr> {
    let cutoff = supascale_shared::jobs::store::now()
        - chrono::Duration::from_std(STALE_AFTER).expect("small duration");
    let row: Option<(i64, Option<i64>)> = worker::Entity::find()
        .select_only()
        .column_as(Expr::col(worker::Column::Id).count(), "live")
        // SUM of an INTEGER is a BIGINT on PostgreSQL, an integer on SQLite.
        .column_as(Expr::col(worker::Column::Concurrency).sum(), "slots")
        .filter(worker::Column::LastSeenAt.gte(cutoff))
        .into_tuple()
        .one(db)
        .await?;
    let (live, slots) = row.unwrap_or((0, None));
    Ok((live, slots.unwrap_or(0)))
}

/// Every registered project with the time of its newest completed backup
/// (a deleted project's backups are kept, but no longer alert).
async fn last_backups(db: &DatabaseConnection) -> Result<Vec<(String, Option<i64>)>, DbErr> {
    let sql = format!(
        "SELECT p.id, MAX(b.completed_at) FROM projects p \
         LEFT JOIN backups b ON b.project_id = p.id AND b.status = '{STATUS_COMPLETED}' \
         GROUP BY p.id ORDER BY p.id"
    );
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?;
    rows.into_iter()
        .map(|row| {
            let project: String = row.try_get_by_index(0)?;
            let at: Option<DateTime<Utc>> = row.try_get_by_index(1)?;
            // Whole seconds, as the API shows `completedAt`.
            Ok((project, at.map(|t| t.timestamp())))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// HTTP traffic

/// This process's requests, by route template, method and status.
#[derive(Default)]
pub struct HttpMetrics {
    inner: Mutex<HttpCounts>,
}

#[derive(Default)]
struct HttpCounts {
    requests: BTreeMap<(String, &'static str, u16), u64>,
    durations: BTreeMap<String, Histogram>,
}

#[derive(Debug, Clone, PartialEq)]
struct Histogram {
    /// Cumulative, one per [`HTTP_DURATION_BUCKETS`] bound.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Self {
            buckets: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64], value: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(bounds) {
            if value <= *bound {
                *bucket += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

impl HttpMetrics {
    pub fn observe(&self, route: &str, method: &'static str, status: u16, elapsed: Duration) {
        let mut counts = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *counts
            .requests
            .entry((route.to_string(), method, status))
            .or_default() += 1;
        counts
            .durations
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(HTTP_DURATION_BUCKETS))
            .observe(HTTP_DURATION_BUCKETS, elapsed.as_secs_f64());
    }

    fn render(&self, out: &mut Exposition) {
        let counts = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        out.family(
            "supascale_http_requests_total",
            "counter",
            "HTTP requests this API process answered, by route (operation id or path template), method and status.",
        );
        for ((route, method, status), n) in &counts.requests {
            out.sample(
                "supascale_http_requests_total",
                &[
                    ("route", route.as_str()),
                    ("method", *method),
                    ("status", status.to_string().as_str()),
                ],
                n,
            );
        }
        out.family(
            "supascale_http_request_duration_seconds",
            "histogram",
            "Time this API process took to answer a request (up to its response headers), by route.",
        );
        for (route, histogram) in &counts.durations {
            out.histogram(
                "supascale_http_request_duration_seconds",
                &[("route", route.as_str())],
                HTTP_DURATION_BUCKETS,
                &histogram.buckets,
                histogram.sum,
                histogram.count,
            );
        }
    }
}

/// The middleware that counts every request into [`HttpMetrics`] (and
/// hands them to the `/metrics` handler). It wraps the route tree, inside
/// the catch-all error handler, so that it sees which route answered.
#[derive(Default)]
pub struct Track {
    metrics: Arc<Metrics>,
}

impl<E: Endpoint> Middleware<E> for Track {
    type Output = TrackEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        TrackEndpoint {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

pub struct TrackEndpoint<E> {
    inner: E,
    metrics: Arc<Metrics>,
}

impl<E: Endpoint> Endpoint for TrackEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut request: Request) -> poem::Result<Response> {
        request.set_data(self.metrics.clone());
        let method = method_label(request.method());
        let started = Instant::now();
        let result = self
            .inner
            .call(request)
            .await
            .map(IntoResponse::into_response);
        let elapsed = started.elapsed();
        let (route, status) = match &result {
            Ok(response) => (
                route_label(
                    response.data::<poem_openapi::OperationId>(),
                    response.data::<poem::PathPattern>(),
                    false,
                ),
                response.status(),
            ),
            Err(error) => (
                route_label(
                    error.data::<poem_openapi::OperationId>(),
                    error.data::<poem::PathPattern>(),
                    error.is::<poem::error::NotFoundError>(),
                ),
                error.status(),
            ),
        };
        self.metrics
            .http
            .observe(&route, method, status.as_u16(), elapsed);
        result
    }
}

/// A low-cardinality name for the route that answered: the OpenAPI
/// operation id (`createBackup`), else the matched path template
/// (`/healthz`), else [`UNMATCHED`]. Never the raw path.
fn route_label(
    operation: Option<&poem_openapi::OperationId>,
    pattern: Option<&poem::PathPattern>,
    not_found: bool,
) -> String {
    match (operation, pattern) {
        (Some(operation), _) => operation.0.to_string(),
        // A path under a nested service (`/api/v1/…`, `/docs/…`) that
        // matched nothing carries the nest's prefix as its pattern.
        _ if not_found => UNMATCHED.to_string(),
        (None, Some(pattern)) => pattern.0.to_string(),
        (None, None) => UNMATCHED.to_string(),
    }
}

/// Standard methods by name; anything else (extension methods are
/// unbounded) as `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

// ---------------------------------------------------------------------------
// The text format

/// Writes the text exposition format: `# HELP` and `# TYPE` once per
/// family, then its samples.
#[derive(Default)]
struct Exposition {
    out: String,
}

/// A float as the format writes it (`+Inf`, `-Inf`, `NaN`).
struct Float(f64);

impl Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_nan() {
            f.write_str("NaN")
        } else if self.0 == f64::INFINITY {
            f.write_str("+Inf")
        } else if self.0 == f64::NEG_INFINITY {
            f.write_str("-Inf")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        writeln!(self.out, "# HELP {name} {help}").unwrap();
        writeln!(self.out, "# TYPE {name} {kind}").unwrap();
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                write!(self.out, "{label}=\"{}\"", escape_label(value)).unwrap();
            }
            self.out.push('}');
        }
        writeln!(self.out, " {value}").unwrap();
    }

    /// `<name>_bucket` per bound and `+Inf`, `<name>_sum`, `<name>_count`.
    fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        cumulative: &[impl Display],
        sum: f64,
        count: impl Display + Copy,
    ) {
        let bucket = format!("{name}_bucket");
        for (bound, n) in bounds.iter().zip(cumulative) {
            let le = Float(*bound).to_string();
            let mut with_le = labels.to_vec();
            with_le.push(("le", le.as_str()));
            self.sample(&bucket, &with_le, n);
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, count);
        self.sample(&format!("{name}_sum"), labels, Float(sum));
        self.sample(&format!("{name}_count"), labels, count);
    }

    fn finish(self) -> String {
        self.out
    }
}

/// A label value as the format requires: `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("two\nlines"), r"two\nlines");
        let mut out = Exposition::default();
        out.family("x", "gauge", "A \\ help\nwith two lines.");
        out.sample("x", &[("project", "p\"1"), ("kind", "backup")], 3);
        assert_eq!(
            out.finish(),
            "# HELP x A \\\\ help\\nwith two lines.\n# TYPE x gauge\nx{project=\"p\\\"1\",kind=\"backup\"} 3\n"
        );
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_inf_sum_and_count() {
        let mut histogram = Histogram::new(&[0.1, 1.0]);
        for v in [0.0625, 0.5, 2.0] {
            histogram.observe(&[0.1, 1.0], v);
        }
        let mut out = Exposition::default();
        out.histogram(
            "h",
            &[("route", "r")],
            &[0.1, 1.0],
            &histogram.buckets,
            histogram.sum,
            histogram.count,
        );
        assert_eq!(
            out.finish(),
            "h_bucket{route=\"r\",le=\"0.1\"} 1\nh_bucket{route=\"r\",le=\"1\"} 2\n\
             h_bucket{route=\"r\",le=\"+Inf\"} 3\nh_sum{route=\"r\"} 2.5625\nh_count{route=\"r\"} 3\n"
        );
    }

    #[test]
    fn routes_are_templates_or_unmatched() {
        let op = poem_openapi::OperationId("getBackup");
        let pattern = poem::PathPattern("/healthz".into());
        let nest = poem::PathPattern("/api/v1".into());
        assert_eq!(route_label(Some(&op), Some(&nest), false), "getBackup");
        assert_eq!(route_label(None, Some(&pattern), false), "/healthz");
        assert_eq!(route_label(None, Some(&nest), true), UNMATCHED);
        assert_eq!(route_label(None, None, true), UNMATCHED);
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }

    #[test]
    fn the_job_query_names_every_bucket() {
        let sql = job_stats_sql(DbBackend::Sqlite);
        assert!(sql.contains("d <= 0.1 THEN"), "{sql}");
        assert!(sql.contains("d <= 3600.0 THEN"), "{sql}");
        let sql = job_stats_sql(DbBackend::Postgres);
        assert!(sql.contains("d <= INTERVAL '0.1 seconds' THEN"), "{sql}");
        assert!(sql.contains("d <= INTERVAL '3600 seconds' THEN"), "{sql}");
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            let sql = job_stats_sql(backend);
            let last = JOB_DURATION_BUCKETS.len() - 1;
            assert!(sql.contains(&format!("AS b{last} FROM")), "{sql}");
        }
    }
}
