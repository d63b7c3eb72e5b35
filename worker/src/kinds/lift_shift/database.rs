//! The `database` component: the official guide's three dumps of the
//! source (roles, schema, data; docs/lift-shift.md) streamed through
//! `shared::lift_shift`'s rewrites straight into one `psql` session on the
//! target, in one transaction with `session_replication_role = replica`
//! ([`database::load_plain_sql`]). Nothing is spooled: the dumps run one
//! after another into a pipe that `psql` reads as they write.
//!
//! What the target already has: the schemas the source brings replace the
//! target's of the same name, and the managed tables the data fills are
//! emptied first ([`data_plan::preamble`]), so a second run gives the same
//! rows. A failure anywhere rolls the whole load back.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::JobContext;
use crate::reporter::Reporter;
use supascale_shared::entities::job;
use supascale_shared::jobs::JobError;
use supascale_shared::lift_shift::data_plan::{self, DataPlan, PartialTable};
use supascale_shared::lift_shift::exclusions::{
    DATA_SCHEMAS, EXCLUDED_TABLES, MANAGED_PREFIXES, MANAGED_SCHEMAS,
};
use supascale_shared::lift_shift::managed::ManagedHooks;
use supascale_shared::lift_shift::schema::SchemaFilter;
use supascale_shared::lift_shift::{catalog, roles};
use supascale_shared::pgtools::{self, child};
use supascale_shared::redact::redact_urls;
use supascale_shared::restore::database::{self, TargetFacts};

/// How long the source may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// What the pipe between the dumps and `psql` holds.
const PIPE_BYTES: usize = 1024 * 1024;

/// The source database, as the job reaches it.
pub struct Source {
    /// With the password, for sqlx.
    pub url: String,
    /// Without it, for the tools (the password goes in their environment).
    pub address: String,
    pub password: String,
    /// The host and port, for messages.
    pub shown: String,
    /// What to say when it cannot be reached.
    pub hint: Option<String>,
}

/// Opens a session on the source, saying which of a wrong password, an
/// unreachable host or a refusal it was.
pub async fn connect(source: &Source) -> Result<sqlx::PgConnection, JobError> {
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect(&source.url))
        .await
        .map_err(|_| {
            unreachable(
                source,
                &format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            )
        })?;
    connected.map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("28P01") => {
            JobError::Source(format!(
                "Failed to connect to source database {}: password authentication failed \
                 (check databasePassword)",
                source.shown
            ))
        }
        sqlx::Error::Database(db) => JobError::Source(format!(
            "Failed to connect to source database {}: {}",
            source.shown,
            redact_urls(db.message())
        )),
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
            unreachable(source, &redact_urls(&e.to_string()))
        }
        _ => JobError::Source(format!(
            "Failed to connect to source database {}: {}",
            source.shown,
            redact_urls(&e.to_string())
        )),
    })
}

fn unreachable(source: &Source, cause: &str) -> JobError {
    let mut message = format!(
        "Failed to connect to source database {}: {cause}",
        source.shown
    );
    if let Some(hint) = &source.hint {
        message.push_str("; ");
        message.push_str(hint);
    }
    JobError::Source(message)
}

/// What the component moved, for `summary.database`.
pub struct Moved {
    pub tables: usize,
    pub bytes: u64,
}

/// Runs the component (see the module): `source_conn` is the session the
/// job opened on the source to try it, `target_url` the project's database.
pub async fn migrate(
    ctx: &JobContext,
    job: &job::Model,
    reporter: &Reporter,
    (source, mut source_conn): (&Source, sqlx::PgConnection),
    target_url: &str,
    facts: &TargetFacts,
) -> Result<Moved, JobError> {
    reporter
        .step("database", "Reading the source's catalog", 0, 0)
        .await;
    let source_major: u32 = sqlx::query_scalar::<_, String>("SHOW server_version_num")
        .fetch_one(&mut source_conn)
        .await
        .map_err(source_error)?
        .parse::<u32>()
        .unwrap_or(0)
        / 10_000;
    let schemas = catalog::schemas(&mut source_conn)
        .await
        .map_err(source_error)?;
    let source_tables = catalog::tables(&mut source_conn)
        .await
        .map_err(source_error)?;
    let mut target_conn =
        tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect(target_url))
            .await
            .map_err(|_| {
                JobError::ProjectUnreachable("the project's database did not answer".into())
            })?
            .map_err(|e| JobError::ProjectUnreachable(redact_urls(&e.to_string())))?;
    let target_tables = catalog::tables(&mut target_conn)
        .await
        .map_err(target_error)?;
    let _ = target_conn.close().await;
    let plan = data_plan::plan(&schemas, &source_tables, &target_tables);
    // Only the platform schemas the source has: pg_dump fails on a
    // `--schema` that matches nothing.
    let hooked: Vec<String> = ["auth", "storage"]
        .iter()
        .filter(|s| schemas.iter().any(|have| have == *s))
        .map(|s| s.to_string())
        .collect();
    let target_has: BTreeSet<(String, String)> = target_tables
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect();
    for warning in &plan.warnings {
        reporter.warning(&format!("database: {warning}")).await;
    }

    let bin_dirs = ctx.config.postgres_bin_dirs.as_deref();
    let pg_dump = pgtools::tool_for("pg_dump", source_major, bin_dirs)
        .await
        .map_err(JobError::Tool)?;
    let pg_dumpall = pgtools::tool_for("pg_dumpall", source_major, bin_dirs)
        .await
        .map_err(JobError::Tool)?;

    reporter
        .step("database", "Exporting the source's roles", 0, 0)
        .await;
    let roles_dump = capture(
        &pg_dumpall.path,
        &[
            "--roles-only",
            "--no-role-passwords",
            "--no-comments",
            "--quote-all-identifier",
        ],
        source,
        &job.id,
    )
    .await?;
    let existing = |role: &str| facts.roles.contains(role);
    let (roles_sql, role_warnings) = roles::rewrite_roles(&roles_dump, &existing, facts.major);
    for warning in role_warnings {
        reporter.warning(&format!("database: {warning}")).await;
    }

    let lock_timeout = Duration::from_secs(ctx.config.restore_lock_timeout_seconds);
    let (writer, reader) = tokio::io::duplex(PIPE_BYTES);
    let produce = produce(
        reporter,
        &pg_dump.path,
        source,
        &job.id,
        facts,
        &plan,
        (&hooked, &target_has),
        roles_sql,
        writer,
    );
    let load = database::load_plain_sql(target_url, &job.id, reader, facts, lock_timeout, bin_dirs);
    let (produced, loaded) = tokio::join!(produce, load);
    let (bytes, loaded) = match (produced, loaded) {
        (Ok(bytes), Ok(loaded)) => (bytes, loaded),
        (Err(e), Ok(loaded)) => {
            loaded.roll_back().await;
            return Err(e);
        }
        // psql's own words explain a broken pipe on our side.
        (_, Err(e)) => return Err(e),
    };
    for warning in &loaded.warnings {
        reporter.warning(&format!("database: {warning}")).await;
    }
    reporter
        .step(
            "database",
            "Committing the database",
            plan.copied.len() as u32,
            plan.copied.len() as u32,
        )
        .await;
    loaded.commit().await?;
    compare(reporter, &mut source_conn, target_url, &plan).await;
    let _ = source_conn.close().await;
    Ok(Moved {
        tables: plan.copied.len(),
        bytes,
    })
}

/// Writes the load's SQL: the roles, the preamble, the filtered schema
/// dump and the data dump, counting each table's rows as they pass.
#[allow(clippy::too_many_arguments)]
async fn produce(
    reporter: &Reporter,
    pg_dump: &std::path::Path,
    source: &Source,
    job_id: &str,
    facts: &TargetFacts,
    plan: &DataPlan,
    (hooked, target_has): (&[String], &BTreeSet<(String, String)>),
    roles_sql: String,
    mut out: tokio::io::DuplexStream,
) -> Result<u64, JobError> {
    let broken = |e: std::io::Error| JobError::Tool(format!("the load stopped reading: {e}"));
    out.write_all(roles_sql.as_bytes()).await.map_err(broken)?;

    reporter
        .step("database", "Exporting the schema from the source", 0, 0)
        .await;
    let mut schema_args: Vec<String> =
        vec!["--schema-only".into(), "--quote-all-identifier".into()];
    for schema in MANAGED_SCHEMAS {
        schema_args.push(format!("--exclude-schema={schema}"));
    }
    for prefix in MANAGED_PREFIXES {
        schema_args.push(format!("--exclude-schema={prefix}*"));
    }
    let available = |name: &str| facts.available_extensions.contains(name);
    let mut filter = SchemaFilter::new(&available);
    let mut schema_sql = Vec::new();
    let mut left_timeout = false;
    stream_lines(pg_dump, &schema_args, source, job_id, |line| {
        if !filter.keep(line.trim_end_matches('\n')) {
            return Ok(());
        }
        if facts.major < 17 && line.trim_start().starts_with("SET transaction_timeout") {
            left_timeout = true;
            return Ok(());
        }
        schema_sql.extend_from_slice(line.as_bytes());
        Ok(())
    })
    .await?;
    for warning in &filter.warnings {
        reporter.warning(&format!("database: {warning}")).await;
    }
    if left_timeout {
        reporter
            .warning(&format!(
                "database: the source's pg_dump sets transaction_timeout, which PostgreSQL {} \
                 lacks; the setting was left out",
                facts.major
            ))
            .await;
    }
    let preamble = data_plan::preamble(plan, &filter.publications, facts.major);
    out.write_all(preamble.as_bytes()).await.map_err(broken)?;
    out.write_all(&schema_sql).await.map_err(broken)?;
    drop(schema_sql);

    // The project's own policies and triggers on the platform's tables,
    // which the guide's dump loses (shared::lift_shift::managed).
    let mut hooks = ManagedHooks::new();
    if !hooked.is_empty() {
        let mut managed_args: Vec<String> =
            vec!["--schema-only".into(), "--quote-all-identifier".into()];
        managed_args.extend(hooked.iter().map(|s| format!("--schema={s}")));
        stream_lines(pg_dump, &managed_args, source, job_id, |line| {
            hooks.line(line.trim_end_matches('\n'));
            Ok(())
        })
        .await?;
    }
    let carried =
        hooks.finish(|schema, table| target_has.contains(&(schema.to_string(), table.to_string())));
    for warning in &carried.warnings {
        reporter.warning(&format!("database: {warning}")).await;
    }
    if !carried.kept.is_empty() {
        tracing::info!(carried = ?carried.kept, "policies and triggers on the platform's tables carried over");
    }
    out.write_all(carried.sql.as_bytes())
        .await
        .map_err(broken)?;

    let total = plan.copied.len() as u32;
    let mut data_args: Vec<String> = vec!["--data-only".into(), "--quote-all-identifier".into()];
    for schema in MANAGED_SCHEMAS.iter().filter(|s| !DATA_SCHEMAS.contains(s)) {
        data_args.push(format!("--exclude-schema={schema}"));
    }
    for prefix in MANAGED_PREFIXES {
        data_args.push(format!("--exclude-schema={prefix}*"));
    }
    let excluded: BTreeSet<(String, String)> = EXCLUDED_TABLES
        .iter()
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .chain(plan.left_out.iter().cloned())
        .collect();
    for (schema, table) in &excluded {
        data_args.push(format!(
            "--exclude-table-data={}.{}",
            pattern_quote(schema),
            pattern_quote(table)
        ));
    }
    let mut loaded_tables = 0u32;
    let mut in_copy = false;
    let mut bytes = 0u64;
    let mut pending: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut announce: Option<String> = None;
    let mut send = stream_lines_async(pg_dump, &data_args, source, job_id);
    while let Some(line) = send.next_line().await? {
        if in_copy {
            if line == "\\.\n" {
                in_copy = false;
            } else {
                bytes += line.len() as u64;
            }
        } else if line.starts_with("COPY ") {
            in_copy = true;
            loaded_tables += 1;
            announce = Some(copy_target(&line));
        } else if facts.major < 17 && line.starts_with("SET transaction_timeout") {
            continue;
        }
        pending.extend_from_slice(line.as_bytes());
        if pending.len() >= 256 * 1024 || announce.is_some() {
            out.write_all(&pending).await.map_err(broken)?;
            pending.clear();
        }
        if let Some(table) = announce.take() {
            reporter
                .step(
                    "database",
                    &format!("Loading {table}"),
                    loaded_tables.min(total),
                    total,
                )
                .await;
        }
    }
    send.finish().await?;
    out.write_all(&pending).await.map_err(broken)?;
    if !plan.partial.is_empty() {
        let mut conn = connect(source).await?;
        for table in &plan.partial {
            loaded_tables += 1;
            reporter
                .step(
                    "database",
                    &format!("Loading {}.{}", table.schema, table.name),
                    loaded_tables.min(total),
                    total,
                )
                .await;
            bytes += copy_partial(&mut conn, table, &mut out).await?;
        }
        let _ = conn.close().await;
    }
    out.shutdown().await.map_err(broken)?;
    Ok(bytes)
}

/// Copies the rows of a table the target has without some of the
/// source's columns, with the columns both have, into the load: one
/// `COPY … FROM stdin` fed from the source's `COPY (SELECT …) TO STDOUT`.
async fn copy_partial(
    conn: &mut sqlx::PgConnection,
    table: &PartialTable,
    out: &mut tokio::io::DuplexStream,
) -> Result<u64, JobError> {
    use futures::StreamExt;
    let broken = |e: std::io::Error| JobError::Tool(format!("the load stopped reading: {e}"));
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| database::quote_ident(c))
        .collect();
    let name = format!(
        "{}.{}",
        database::quote_ident(&table.schema),
        database::quote_ident(&table.name)
    );
    let head = format!("COPY {name} ({}) FROM stdin;\n", columns.join(", "));
    out.write_all(head.as_bytes()).await.map_err(broken)?;
    let query = format!("COPY (SELECT {} FROM {name}) TO STDOUT", columns.join(", "));
    let mut rows = conn.copy_out_raw(&query).await.map_err(source_error)?;
    let mut bytes = 0u64;
    while let Some(chunk) = rows.next().await {
        let chunk = chunk.map_err(source_error)?;
        bytes += chunk.len() as u64;
        out.write_all(&chunk).await.map_err(broken)?;
    }
    out.write_all(b"\\.\n").await.map_err(broken)?;
    Ok(bytes)
}

/// `schema.table` of a `COPY "schema"."table" (…) FROM stdin;` line.
fn copy_target(line: &str) -> String {
    let rest = line.trim_start_matches("COPY ");
    let end = rest
        .find(" (")
        .or_else(|| rest.find(" FROM"))
        .unwrap_or(rest.len());
    rest[..end].replace('"', "")
}

/// A name for pg_dump's `-t`-style patterns: quoted, so that `.`, `*` and
/// capitals mean themselves.
fn pattern_quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs a tool against the source and returns what it printed.
async fn capture(
    program: &std::path::Path,
    args: &[&str],
    source: &Source,
    job_id: &str,
) -> Result<String, JobError> {
    let output = child::command(
        program.to_str().unwrap_or("pg_dumpall"),
        job_id,
        Some(&source.password),
    )
    .args(args)
    .arg("--dbname")
    .arg(&source.address)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .output()
    .await
    .map_err(|e| JobError::Tool(format!("cannot run {}: {e}", program.display())))?;
    if !output.status.success() {
        return Err(tool_failure(program, &output.stderr));
    }
    String::from_utf8(output.stdout)
        .map_err(|e| JobError::Tool(format!("{}: not UTF-8: {e}", program.display())))
}

fn tool_failure(program: &std::path::Path, stderr: &[u8]) -> JobError {
    let text = String::from_utf8_lossy(stderr);
    let last = text
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("failed");
    JobError::Tool(format!(
        "{} on the source: {}",
        program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        redact_urls(last)
    ))
}

/// Runs `pg_dump` against the source and hands each line to `each`.
async fn stream_lines(
    program: &std::path::Path,
    args: &[String],
    source: &Source,
    job_id: &str,
    mut each: impl FnMut(&str) -> Result<(), JobError>,
) -> Result<(), JobError> {
    let mut lines = stream_lines_async(program, args, source, job_id);
    while let Some(line) = lines.next_line().await? {
        each(&line)?;
    }
    lines.finish().await
}

/// A running dump, read line by line (each with its `\n`).
struct DumpLines {
    program: std::path::PathBuf,
    child: Option<tokio::process::Child>,
    reader: Option<BufReader<tokio::process::ChildStdout>>,
    errors: Option<tokio::task::JoinHandle<Vec<u8>>>,
    spawn_error: Option<String>,
    buffer: Vec<u8>,
}

fn stream_lines_async(
    program: &std::path::Path,
    args: &[String],
    source: &Source,
    job_id: &str,
) -> DumpLines {
    let mut command = child::command(
        program.to_str().unwrap_or("pg_dump"),
        job_id,
        Some(&source.password),
    );
    command
        .args(args)
        .arg("--dbname")
        .arg(&source.address)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut lines = DumpLines {
        program: program.to_path_buf(),
        child: None,
        reader: None,
        errors: None,
        spawn_error: None,
        buffer: Vec::new(),
    };
    match command.spawn() {
        Ok(mut child) => {
            let stdout = child.stdout.take().expect("piped");
            let mut stderr = child.stderr.take().expect("piped");
            lines.errors = Some(tokio::spawn(async move {
                let mut text = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut text).await;
                text
            }));
            lines.reader = Some(BufReader::with_capacity(256 * 1024, stdout));
            lines.child = Some(child);
        }
        Err(e) => lines.spawn_error = Some(format!("cannot run {}: {e}", program.display())),
    }
    lines
}

impl DumpLines {
    async fn next_line(&mut self) -> Result<Option<String>, JobError> {
        if let Some(e) = self.spawn_error.take() {
            return Err(JobError::Tool(e));
        }
        let Some(reader) = &mut self.reader else {
            return Ok(None);
        };
        self.buffer.clear();
        let n = reader
            .read_until(b'\n', &mut self.buffer)
            .await
            .map_err(|e| JobError::Tool(format!("reading {}: {e}", self.program.display())))?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&self.buffer).into_owned()))
    }

    async fn finish(mut self) -> Result<(), JobError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = child
            .wait()
            .await
            .map_err(|e| JobError::Tool(format!("{}: {e}", self.program.display())))?;
        let errors = match self.errors.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => Vec::new(),
        };
        if !status.success() {
            return Err(tool_failure(&self.program, &errors));
        }
        Ok(())
    }
}

fn source_error(e: sqlx::Error) -> JobError {
    JobError::Source(format!(
        "the source database: {}",
        redact_urls(&e.to_string())
    ))
}

fn target_error(e: sqlx::Error) -> JobError {
    JobError::Target(format!(
        "the project's database: {}",
        redact_urls(&e.to_string())
    ))
}

async fn count_rows(conn: &mut sqlx::PgConnection, sql: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(conn)
        .await
}

/// After the commit: every copied table's rows and the foreign keys to
/// `auth.users`, source against target; a difference is a warning.
async fn compare(
    reporter: &Reporter,
    source: &mut sqlx::PgConnection,
    target_url: &str,
    plan: &DataPlan,
) {
    let Ok(Ok(mut target)) =
        tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect(target_url)).await
    else {
        reporter
            .warning("database: the project's database could not be read back to compare")
            .await;
        return;
    };
    for (schema, table) in &plan.copied {
        let sql = format!(
            "SELECT count(*) FROM {}.{}",
            database::quote_ident(schema),
            database::quote_ident(table)
        );
        let theirs = count_rows(source, &sql).await;
        let ours = count_rows(&mut target, &sql).await;
        match (theirs, ours) {
            (Ok(a), Ok(b)) if a == b => {}
            (Ok(a), Ok(b)) => {
                reporter
                    .warning(&format!(
                        "database: {schema}.{table} has {b} rows here, {a} in the source \
                         (rows written to the source during the migration are not included)"
                    ))
                    .await
            }
            _ => {
                reporter
                    .warning(&format!(
                        "database: the rows of {schema}.{table} could not be compared"
                    ))
                    .await
            }
        }
    }
    const FOREIGN_KEYS: &str = "SELECT conrelid::regclass::text || ' ' || conname::text \
         FROM pg_constraint WHERE contype = 'f' AND confrelid = \
         (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE n.nspname = 'auth' AND c.relname = 'users') ORDER BY 1";
    let theirs: BTreeSet<String> = sqlx::query_scalar(FOREIGN_KEYS)
        .fetch_all(&mut *source)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
    let ours: BTreeSet<String> = sqlx::query_scalar(FOREIGN_KEYS)
        .fetch_all(&mut target)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
    for missing in theirs.difference(&ours) {
        reporter
            .warning(&format!(
                "database: the foreign key {missing} to auth.users is in the source but not here"
            ))
            .await;
    }
    let vault: Option<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'vault' AND c.relname = 'secrets'",
    )
    .fetch_one(&mut *source)
    .await
    .ok()
    .filter(|n: &i64| *n > 0);
    if vault.is_some() {
        let secrets: i64 = sqlx::query_scalar("SELECT count(*) FROM vault.secrets")
            .fetch_one(&mut *source)
            .await
            .unwrap_or(0);
        if secrets > 0 {
            reporter
                .warning(&format!(
                    "database: the source holds {secrets} Vault secrets, encrypted with its own \
                     key; they were not migrated: create them again in this project"
                ))
                .await;
        }
    }
    let _ = target.close().await;
}
