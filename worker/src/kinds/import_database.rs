//! The `import_database` job: an uploaded dump loaded into a project's
//! database, all or nothing, through the restore engine
//! ([`supascale_shared::restore::database`]).
//!
//! The format is read from the content, never the name: `PGDMP` is
//! `pg_dump`'s custom format (through `pg_restore`), gzip may hold either
//! (a custom dump is decompressed to the spool, since `pg_restore` seeks;
//! SQL is decompressed as it is fed), and UTF-8 text is plain SQL (through
//! `psql`, as it is). What a custom dump does to the database already there
//! is [`LoadMode::Import`]: a dump with definitions replaces what it
//! defines, a data-only dump replaces the rows of the tables it fills. A
//! plain-SQL script runs on top of the database as it is.
//!
//! A dump that cannot be read (truncated, damaged, not a dump) is the
//! caller's problem ([`JobError::InvalidInput`], 400); a dump that reads but does
//! not load (an SQL error) fails the job with the server's words.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::import;
use crate::JobContext;
use crate::reporter::Reporter;
use supascale_shared::entities::job;
use supascale_shared::import::archive::Detected;
use supascale_shared::jobs::JobError;
use supascale_shared::restore::database::{self, DatabaseRestore, LoadMode};
use supascale_shared::restore::staging::StageError;

pub async fn run(ctx: &JobContext, job: &job::Model, reporter: &Reporter) -> Result<(), JobError> {
    let started = Instant::now();
    reporter
        .step("check", "Checking the upload and the project", 1, 3)
        .await;
    let start = import::start(ctx, job, import::DATABASE_FORMATS).await?;
    let (url, facts) =
        import::target_database(ctx, job, &start.project, start.payload.force).await?;
    let detected = start.detected;
    if reporter.is_cancelled() {
        return Err(JobError::Cancelled);
    }
    let lock_timeout = Duration::from_secs(ctx.config.restore_lock_timeout_seconds);
    let bin_dirs = ctx.config.postgres_bin_dirs.as_deref();
    reporter
        .step("database", "Loading the dump into the database", 2, 3)
        .await;
    let name = start.payload.file_name.clone();
    let loaded = match detected {
        Detected::CustomDump | Detected::GzipCustomDump => {
            let mut spooled = None;
            let dump = if detected == Detected::GzipCustomDump {
                supascale_shared::private_fs::create_dir_all(&start.spool)
                    .map_err(supascale_shared::jobs::io_error)?;
                let target = start.spool.join(format!("{}.import.dump", job.id));
                let source = start.upload.path.clone();
                let out = target.clone();
                let guard = supascale_shared::disk::DiskGuard::new(
                    &start.spool,
                    supascale_shared::disk::TEMPORARY_AREA,
                    ctx.config.disk_reserve_bytes,
                );
                let limits = import::limits(
                    ctx,
                    start.payload.size,
                    supascale_shared::disk::TEMPORARY_AREA,
                    &start.spool,
                )?;
                tokio::task::spawn_blocking(move || gunzip_to(&source, &out, guard, limits))
                    .await
                    .map_err(|e| JobError::Internal(e.to_string()))?
                    .map_err(|e| {
                        let _ = std::fs::remove_file(&target);
                        match e {
                            Gunzip::TooLarge(StageError::Expands {
                                ratio,
                                upload_bytes,
                                ..
                            }) => JobError::InvalidInput(format!(
                                "{name} expands past the limit of {ratio} times the upload's \
                                 size ({})",
                                supascale_shared::disk::human_bytes(upload_bytes)
                            )),
                            Gunzip::TooLarge(e) => JobError::InvalidInput(format!("{name}: {e}")),
                            Gunzip::Io(e) if supascale_shared::disk::is_out_of_space(&e) => {
                                supascale_shared::jobs::io_error(e)
                            }
                            Gunzip::Io(e) => JobError::InvalidInput(format!(
                                "{name} is not a complete gzip file: {e}"
                            )),
                        }
                    })?;
                spooled = Some(super::backup::SpooledDump {
                    path: target.clone(),
                });
                target
            } else {
                start.upload.path.clone()
            };
            let restore = DatabaseRestore {
                url: &url,
                job_id: &job.id,
                dump: &dump,
                roles_sql: "",
                facts: &facts,
                backup_major: facts.major,
                force: false,
                lock_timeout,
                postgres_bin_dirs: bin_dirs,
                mode: LoadMode::Import,
            };
            let loaded = tokio::select! {
                loaded = restore.load() => loaded,
                _ = reporter.cancelled() => return Err(JobError::Cancelled),
            };
            drop(spooled);
            loaded.map_err(|e| unreadable_dump(e, &name))?
        }
        Detected::PlainSql | Detected::GzipPlainSql => {
            let gzip = detected == Detected::GzipPlainSql;
            let broken: Arc<Mutex<Option<String>>> = Arc::default();
            let sql = sql_reader(start.upload.path.clone(), gzip, broken.clone());
            let loaded = tokio::select! {
                loaded = database::load_plain_sql(&url, &job.id, sql, &facts, lock_timeout, bin_dirs) => loaded,
                _ = reporter.cancelled() => return Err(JobError::Cancelled),
            };
            let stream_error = broken.lock().expect("not poisoned").take();
            match (loaded, stream_error) {
                (Ok(loaded), None) => loaded,
                (Ok(loaded), Some(e)) => {
                    loaded.roll_back().await;
                    return Err(JobError::InvalidInput(format!(
                        "{name} is not a complete gzip file: {e}"
                    )));
                }
                (Err(_), Some(e)) => {
                    return Err(JobError::InvalidInput(format!(
                        "{name} is not a complete gzip file: {e}"
                    )));
                }
                (Err(e), None) => return Err(e),
            }
        }
        other => {
            return Err(JobError::InvalidInput(format!(
                "{name} is neither a PostgreSQL custom-format dump (pg_dump -Fc) nor plain SQL \
                 ({})",
                other.describe()
            )));
        }
    };
    reporter.step("commit", "Committing", 3, 3).await;
    let warnings = loaded.warnings.clone();
    loaded.commit().await?;
    import::finish(
        ctx,
        job,
        reporter,
        serde_json::json!({ "durationMs": started.elapsed().as_millis() as u64 }),
        &warnings,
    )
    .await
}

/// A dump `pg_restore` cannot read is the caller's: 400, not 500.
fn unreadable_dump(error: JobError, name: &str) -> JobError {
    let invalid = |cause: String| {
        JobError::InvalidInput(format!(
            "{name} cannot be read as a custom-format dump (truncated or damaged?): {cause}"
        ))
    };
    match error {
        JobError::UnreadableDump(cause) => invalid(cause),
        // pg_restore's own complaint while loading counts too: it read
        // the head, then found the rest damaged.
        JobError::Tool(cause) if cause.contains("pg_restore:") => invalid(cause),
        other => other,
    }
}

/// Why a gzipped dump was not decompressed.
enum Gunzip {
    /// Past the upload's limits (a gzip bomb).
    TooLarge(StageError),
    Io(std::io::Error),
}

/// Decompresses the upload into the spool, within the limits an archive
/// gets (its expansion ratio, the cap) and stopping before the disk's
/// reserve: the gzip's own size says nothing of what it expands to.
fn gunzip_to(
    source: &std::path::Path,
    target: &std::path::Path,
    guard: supascale_shared::disk::DiskGuard,
    limits: supascale_shared::restore::staging::Limits,
) -> Result<(), Gunzip> {
    let input = std::io::BufReader::new(std::fs::File::open(source).map_err(Gunzip::Io)?);
    let mut decoder = flate2::read::MultiGzDecoder::new(input);
    let mut out = supascale_shared::disk::GuardedWriter {
        inner: supascale_shared::private_fs::create_file(target).map_err(Gunzip::Io)?,
        guard,
    };
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match decoder.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Gunzip::Io(e)),
        };
        total += n as u64;
        limits
            .check_bytes(std::path::Path::new("the dump"), total)
            .map_err(Gunzip::TooLarge)?;
        std::io::Write::write_all(&mut out, &buffer[..n]).map_err(Gunzip::Io)?;
    }
    out.inner.sync_all().map_err(Gunzip::Io)
}

/// The script's bytes for `psql`, decompressed on a blocking thread when
/// `gzip`. A decompression error ends the stream early and is left in
/// `broken`, so the load fails and says why.
fn sql_reader(
    path: std::path::PathBuf,
    gzip: bool,
    broken: Arc<Mutex<Option<String>>>,
) -> impl tokio::io::AsyncRead + Unpin {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                *broken.lock().expect("not poisoned") = Some(e.to_string());
                return;
            }
        };
        let mut input: Box<dyn Read> = if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
                file,
            )))
        } else {
            Box::new(file)
        };
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            match input.read(&mut buffer) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buffer[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    *broken.lock().expect("not poisoned") = Some(e.to_string());
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    tokio_util::io::StreamReader::new(tokio_stream_from(rx))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
