//! OpenDAL marks every local I/O error it does not name as temporary
//! (`new_std_io_error`: anything but not-found, permission, exists and
//! unsupported), so a full disk was retried by the retry layer for 25 s and
//! then by the job. [`PermanentIoLayer`], placed under the retry layer, marks
//! the errors that no retry can fix as permanent; [`RetryLog`] logs each
//! retry with the error's message, not its debug form (which carries a
//! backtrace).

use std::sync::Arc;

use opendal::raw::{
    Layer, OpCopy, OpCreateDir, OpList, OpPresign, OpRead, OpRename, OpStat, OpWrite, RpCreateDir,
    RpPresign, RpRename, RpStat, Service, ServiceInfo, Servicer, oio,
};
use opendal::{Buffer, BytesRange, Capability, Metadata, OperationContext, Result};

/// Whether `error` comes from an I/O error that trying again cannot fix:
/// a full disk or quota, a read-only or wrong kind of file system object.
pub fn is_permanent_io(error: &opendal::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        io_kind(error),
        Some(
            StorageFull
                | QuotaExceeded
                | FileTooLarge
                | ReadOnlyFilesystem
                | NotADirectory
                | IsADirectory
                | DirectoryNotEmpty
                | InvalidInput
                | InvalidFilename
                | CrossesDevices
                | TooManyLinks
        )
    )
}

/// Whether `error` is a full disk (or quota).
pub fn is_storage_full(error: &opendal::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(io_kind(error), Some(StorageFull | QuotaExceeded))
}

/// The kind of the I/O error under `error`, if it has one.
fn io_kind(error: &opendal::Error) -> Option<std::io::ErrorKind> {
    std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
}

pub(crate) fn classify(error: opendal::Error) -> opendal::Error {
    if error.is_temporary() && is_permanent_io(&error) {
        error.set_permanent()
    } else {
        error
    }
}

/// Marks permanent I/O errors of the writing operations as permanent (see
/// the module). Reads, lists and deletes pass through.
#[derive(Debug, Default)]
pub struct PermanentIoLayer;

impl Layer for PermanentIoLayer {
    fn apply_service(&self, inner: Servicer) -> Servicer {
        Arc::new(PermanentIoService { inner })
    }
}

#[derive(Debug)]
struct PermanentIoService {
    inner: Servicer,
}

impl Service for PermanentIoService {
    type Reader = oio::Reader;
    type Writer = PermanentIoWriter;
    type Lister = oio::Lister;
    type Deleter = oio::Deleter;
    type Copier = oio::Copier;
    type Composer = oio::Composer;

    fn info(&self) -> ServiceInfo {
        self.inner.info()
    }

    fn capability(&self) -> Capability {
        self.inner.capability()
    }

    async fn create_dir(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpCreateDir,
    ) -> Result<RpCreateDir> {
        self.inner
            .create_dir(ctx, path, args)
            .await
            .map_err(classify)
    }

    async fn stat(&self, ctx: &OperationContext, path: &str, args: OpStat) -> Result<RpStat> {
        self.inner.stat(ctx, path, args).await
    }

    fn read(&self, ctx: &OperationContext, path: &str, args: OpRead) -> Result<Self::Reader> {
        self.inner.read(ctx, path, args)
    }

    fn write(&self, ctx: &OperationContext, path: &str, args: OpWrite) -> Result<Self::Writer> {
        self.inner
            .write(ctx, path, args)
            .map(|inner| PermanentIoWriter { inner })
            .map_err(classify)
    }

    fn delete(&self, ctx: &OperationContext) -> Result<Self::Deleter> {
        self.inner.delete(ctx)
    }

    fn list(&self, ctx: &OperationContext, path: &str, args: OpList) -> Result<Self::Lister> {
        self.inner.list(ctx, path, args)
    }

    fn copy(
        &self,
        ctx: &OperationContext,
        from: &str,
        to: &str,
        args: OpCopy,
    ) -> Result<Self::Copier> {
        self.inner.copy(ctx, from, to, args).map_err(classify)
    }

    async fn rename(
        &self,
        ctx: &OperationContext,
        from: &str,
        to: &str,
        args: OpRename,
    ) -> Result<RpRename> {
        self.inner
            .rename(ctx, from, to, args)
            .await
            .map_err(classify)
    }

    async fn presign(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpPresign,
    ) -> Result<RpPresign> {
        self.inner.presign(ctx, path, args).await
    }
}

struct PermanentIoWriter {
    inner: oio::Writer,
}

impl oio::Write for PermanentIoWriter {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        self.inner.write(bs).await.map_err(classify)
    }

    async fn copy_from(&mut self, path: &str, args: OpRead, range: BytesRange) -> Result<()> {
        self.inner
            .copy_from(path, args, range)
            .await
            .map_err(classify)
    }

    async fn close(&mut self) -> Result<Metadata> {
        self.inner.close().await.map_err(classify)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await.map_err(classify)
    }
}

/// Logs a retry with the error's message only.
pub struct RetryLog;

impl opendal::layers::RetryInterceptor for RetryLog {
    fn intercept(&self, event: opendal::layers::RetryEvent<'_>) {
        tracing::warn!(
            operation = ?event.op,
            attempt = event.attempt,
            retry_after_ms = event.retry_after.as_millis() as u64,
            error = %event.err,
            "destination operation failed; retrying"
        );
    }
}
