//! The database's part of a backup: the project's server checked (its
//! version, that it is not the control plane, room for the dump), then
//! `pg_dump` and `pg_dumpall --roles-only` run as the job's own child
//! processes, their output spooled compressed beside the artifact.

use super::*;

/// The database's part of a backup once started: the dump running in its
/// task, the channel that hands its spool to the builder, the roles
/// already spooled.
#[derive(Default)]
pub(super) struct DumpStarted {
    /// The running dump (dropping it ends `pg_dump` and removes the spool).
    pub(super) dumping: Option<AbortOnDrop<Result<CompressedDump, JobError>>>,
    /// Tells the builder where the finished dump is.
    pub(super) dump_ready: Option<tokio::sync::oneshot::Sender<(PathBuf, Precompressed)>>,
    pub(super) ready_rx: Option<tokio::sync::oneshot::Receiver<(PathBuf, Precompressed)>>,
    /// To end the dump's server session if it must be stopped.
    pub(super) dump_url: Option<String>,
    pub(super) roles: Option<SpooledDump>,
    pub(super) postgres_version: Option<String>,
    /// Whether the database's step was already reported.
    pub(super) database_reported: bool,
}

/// Checks the project's server (version, not the control plane, room for
/// the dump), then starts `pg_dump` in a task of its own and spools the
/// roles beside it. `first_step` reports the database's step at once when
/// it is the artifact's first.
#[allow(clippy::too_many_arguments)]
pub(super) async fn start_dump(
    ctx: &JobContext,
    job: &job::Model,
    project: &project::Model,
    destination: &supascale_shared::destinations::Destination,
    spool_dir: &Path,
    compression: Compression,
    reporter: &Reporter,
    first_step: Option<(u32, u32)>,
) -> Result<DumpStarted, JobError> {
    let mut started = DumpStarted::default();
    let url = ctx
        .master_key
        .decrypt(&project.database_url_enc)
        .map_err(|e| JobError::Configuration(e.to_string()))?;
    if let Some((step, total)) = first_step {
        reporter
            .step("database", "Dumping the database", step, total)
            .await;
        started.database_reported = true;
    }
    let server = server_facts(&ctx.config, &url).await?;
    started.postgres_version = Some(server.version.clone());
    // Before any work: the right programs, and room for the dump.
    let configured = ctx.config.postgres_bin_dirs.as_deref();
    // Each lookup runs every candidate's `--version`: both at once,
    // pg_dump's answer first.
    let (pg_dump, pg_dumpall) = tokio::join!(
        pgtools::tool_for("pg_dump", server.major, configured),
        pgtools::tool_for("pg_dumpall", server.major, configured),
    );
    let pg_dump = pg_dump.map_err(JobError::Tool)?;
    let pg_dumpall = pg_dumpall.map_err(JobError::Tool)?;
    let mut needs = vec![Need {
        area: TEMPORARY_AREA,
        path: spool_dir.to_path_buf(),
        bytes: server.database_bytes,
    }];
    if let Some(root) = destination.local_root() {
        needs.push(Need {
            area: "the local destination",
            path: root,
            bytes: server.database_bytes,
        });
    }
    check_free_space(&needs, ctx.config.disk_reserve_bytes)?;
    if job.attempt > 1 {
        child::end_leftover_sessions(&url, &job.id).await;
    }
    let (ready_tx, ready) = tokio::sync::oneshot::channel::<(PathBuf, Precompressed)>();
    started.dump_ready = Some(ready_tx);
    started.ready_rx = Some(ready);
    let pg_dump_path = pg_dump.path.clone();
    let dump_dir = spool_dir.to_path_buf();
    let dump_job = job.id.clone();
    let dump_from = url.clone();
    let reserve = ctx.config.disk_reserve_bytes;
    // A task, so that it starts now, not when first polled: the roles
    // are dumped (and the destination opened) while it runs. Dropping it
    // aborts the task, which ends `pg_dump` (`kill_on_drop`) and removes
    // the spool.
    started.dumping = Some(AbortOnDrop(tokio::spawn(async move {
        dump_database(
            &pg_dump_path,
            &dump_from,
            &dump_dir,
            &dump_job,
            compression,
            reserve,
        )
        .await
    })));
    let dumped_roles = dump_roles(&pg_dumpall.path, &url, spool_dir, &job.id).await;
    started.dump_url = Some(url);
    match dumped_roles {
        Ok(spooled) => started.roles = Some(spooled),
        Err(e) => {
            stop_dump(&mut started.dumping, started.dump_url.as_deref(), &job.id).await;
            return Err(e);
        }
    }
    Ok(started)
}

/// Stops a dump that is still running: dropping it ends `pg_dump` and
/// removes its file; its server session may live on (a backend waiting for
/// a lock does not notice its client is gone), so it is ended too.
pub(super) async fn stop_dump<F>(dumping: &mut Option<F>, url: Option<&str>, job_id: &str) {
    if dumping.take().is_none() {
        return;
    }
    if let Some(url) = url {
        child::end_leftover_sessions(url, job_id).await;
    }
}

/// What a backup needs to know of the project's server before it starts.
struct ServerFacts {
    version: String,
    major: u32,
    database_bytes: u64,
}

/// The project's server, and a refusal when its database is this
/// deployment's control plane (its dump would hold every sealed secret and
/// key hash): by address before connecting, by its tables after.
async fn server_facts(
    config: &supascale_shared::Config,
    url: &str,
) -> Result<ServerFacts, JobError> {
    use sqlx::Connection;
    let control_plane = || {
        JobError::Target(
            "the project's database is Supascale's own control plane; it is never backed up \
             as a project"
                .into(),
        )
    };
    let target = supascale_shared::domain::parse_database_url(url)
        .map_err(|_| JobError::Record("the project's database URL is invalid".into()))?;
    if supascale_shared::control_plane::is_control_plane_address(config, &target).await {
        return Err(control_plane());
    }
    let mut conn = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sqlx::PgConnection::connect(url),
    )
    .await
    .map_err(|_| {
        JobError::ProjectUnreachable(
            "project database is not reachable (no answer within 10 s)".into(),
        )
    })?
    .map_err(|e| {
        JobError::ProjectUnreachable(format!(
            "project database is not reachable ({})",
            supascale_shared::redact::redact_urls(&e.to_string())
        ))
    })?;
    let (version, number, size, ours): (String, String, i64, bool) = sqlx::query_as(
        // Only constants go into it.
        sqlx::AssertSqlSafe(format!(
            "SELECT current_setting('server_version'), current_setting('server_version_num'), \
             pg_database_size(current_database()), {}",
            supascale_shared::control_plane::HOLDS_OUR_TABLES
        )),
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| JobError::ProjectUnreachable(format!("project database: {e}")))?;
    let _ = conn.close().await;
    if ours {
        return Err(control_plane());
    }
    Ok(ServerFacts {
        version,
        major: number.parse::<u32>().unwrap_or(0) / 10_000,
        database_bytes: size.max(0) as u64,
    })
}

/// The cluster's roles without passwords (`pg_dumpall --roles-only
/// --no-role-passwords`, which a non-superuser may run), Supabase's own
/// left out, spooled beside the dump.
async fn dump_roles(
    pg_dumpall: &Path,
    url: &str,
    spool: &Path,
    job_id: &str,
) -> Result<SpooledDump, JobError> {
    let output = run_pg_tool(
        pg_dumpall,
        url,
        job_id,
        &["--roles-only".as_ref(), "--no-role-passwords".as_ref()],
        std::process::Stdio::piped(),
    )
    .await?;
    let roles =
        supascale_shared::pgtools::user_roles_only(&String::from_utf8_lossy(&output.stdout));
    let spooled = SpooledDump {
        path: spool.join(format!("{job_id}.roles.sql")),
    };
    supascale_shared::private_fs::write(&spooled.path, roles).map_err(io_error)?;
    Ok(spooled)
}

/// A Postgres client program of the job set up against `url` (the password
/// in the environment, never the command line; see [`child::command`]),
/// with its name for messages.
fn pg_tool_command(
    program: &Path,
    url: &str,
    job_id: &str,
    args: &[&std::ffi::OsStr],
) -> Result<(tokio::process::Command, String), JobError> {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let (address, password) = child::split_password(url)?;
    let mut command = child::command(
        program.to_str().unwrap_or(&name),
        job_id,
        password.as_deref(),
    );
    command
        .args(args)
        .arg("--no-password")
        .arg("--dbname")
        .arg(&address)
        .stderr(std::process::Stdio::piped());
    Ok((command, name))
}

/// A failed run of `name`: its last line of stderr, without any URL.
fn pg_tool_failed(name: &str, stderr: &[u8]) -> JobError {
    let stderr = String::from_utf8_lossy(stderr);
    let message = supascale_shared::redact::redact_urls(stderr.lines().last().unwrap_or("failed"));
    JobError::Tool(format!("{name}: {message}"))
}

/// Runs a Postgres client program of the job against `url`
/// ([`pg_tool_command`]); a failure is [`pg_tool_failed`].
async fn run_pg_tool(
    program: &Path,
    url: &str,
    job_id: &str,
    args: &[&std::ffi::OsStr],
    stdout: std::process::Stdio,
) -> Result<std::process::Output, JobError> {
    let (mut command, name) = pg_tool_command(program, url, job_id, args)?;
    let output = command
        .stdout(stdout)
        .output()
        .await
        .map_err(|e| JobError::Tool(format!("cannot run {name}: {e}")))?;
    if !output.status.success() {
        return Err(pg_tool_failed(&name, &output.stderr));
    }
    Ok(output)
}

/// The database dump, compressed as `pg_dump` wrote it, in the spool.
pub(super) struct CompressedDump {
    pub(super) spool: SpooledDump,
    pub(super) entry: Precompressed,
}

/// `pg_dump -Fc -Z0` into a pipe, compressed as it comes with the
/// artifact's own compression into the spool directory: compressing the
/// dump overlaps dumping it (as `pg_dump | zstd` does), and the artifact
/// then copies the compressed blocks in. The password goes through the
/// environment, never the command line, and the session is named after the
/// job so that a retry can find what a dead attempt left open.
///
/// Written to a pipe, the dump's table of contents holds no data offsets;
/// `pg_restore` finds the data by reading the file in order instead (the
/// restore tests read these dumps with `-L` lists).
async fn dump_database(
    pg_dump: &Path,
    url: &str,
    spool: &Path,
    job_id: &str,
    compression: Compression,
    reserve: u64,
) -> Result<CompressedDump, JobError> {
    let dump = SpooledDump {
        path: spool.join(format!("{job_id}.dump.{}", compression.suffix())),
    };
    let file = supascale_shared::private_fs::create_file(&dump.path).map_err(io_error)?;
    let spool_dir = spool.to_path_buf();
    let (pipe, pipe_input) = std::io::pipe().map_err(io_error)?;
    let (mut command, name) = pg_tool_command(
        pg_dump,
        url,
        job_id,
        &["--format=custom".as_ref(), "--compress=0".as_ref()],
    )?;
    command.stdout(pipe_input);
    let spawned = command.spawn();
    // The command holds our copy of the pipe's input: without dropping it,
    // the compressing side would never see the end of the dump.
    drop(command);
    let mut dumping = spawned.map_err(|e| JobError::Tool(format!("cannot run {name}: {e}")))?;
    let mut stderr = dumping.stderr.take().expect("piped");
    let compressing = tokio::task::spawn_blocking(move || {
        // The database's size was checked before; the dump may still grow
        // past it, or something else may fill the disk meanwhile.
        let guarded = supascale_shared::disk::GuardedWriter {
            inner: file,
            guard: supascale_shared::disk::DiskGuard::new(&spool_dir, TEMPORARY_AREA, reserve),
        };
        let sink = std::io::BufWriter::with_capacity(256 * 1024, guarded);
        supascale_shared::artifact::compress_stream(pipe, sink, compression)
    });
    let finished = async {
        let mut errors = Vec::new();
        // Read beside the wait: a full stderr pipe would stall pg_dump.
        let (status, _) = tokio::join!(
            dumping.wait(),
            tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut errors)
        );
        (status, errors)
    };
    let ((status, errors), compressed) = tokio::join!(finished, compressing);
    // A spool that could not be written is the cause (pg_dump then fails
    // on its closed pipe).
    let (entry, _) = compressed
        .map_err(|e| JobError::Internal(format!("the dump's compression panicked: {e}")))?
        .map_err(io_error)?;
    let status = status.map_err(|e| JobError::Tool(format!("cannot run {name}: {e}")))?;
    if !status.success() {
        return Err(pg_tool_failed(&name, &errors));
    }
    Ok(CompressedDump { spool: dump, entry })
}
