//! The HTTP server: poem's endpoint served by hyper with the limits poem's
//! own `Server` does not expose, so that a slow or stalled client cannot
//! hold a connection for long:
//!
//! - **headers**: hyper's `header_read_timeout` (it needs a timer, which
//!   poem does not give it); a request whose headers are not all in by then
//!   is answered 408 and the connection closed. It also closes a kept-alive
//!   connection on which no next request starts within that time (without
//!   an answer: there is no request to answer).
//! - **body** ([`limit_body_stalls`], a middleware of the app): no byte of
//!   a request body for that long ends the request (408 in the error shape,
//!   `Connection: close`). The limit is between bytes, not on the whole
//!   body: an upload may stream for hours.
//! - **idle**: a connection on which nothing moves either way for that long
//!   is closed, whatever it is doing (a client that stops reading a
//!   download, a stalled HTTP/2 stream).
//!
//! What hyper refuses itself (that 408, and a malformed or oversized
//! request head) is answered in the error shape by [`hyper_errors`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use poem::http::{HeaderValue, StatusCode};
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Body, Endpoint, IntoResponse};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

use crate::hyper_errors::{self, Answering, Requests};

/// How long a client may take, from `SUPASCALE_HTTP_*_TIMEOUT_SECONDS`
/// (the body limit is the app's, see [`limit_body_stalls`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: Duration,
    pub idle: Duration,
}

impl Limits {
    pub fn from_config(config: &supascale_shared::Config) -> Self {
        Self {
            header: Duration::from_secs(config.http_header_timeout_seconds),
            idle: Duration::from_secs(config.http_idle_timeout_seconds),
        }
    }
}

/// Serves `endpoint` on `listener` until `stop` resolves, then lets open
/// connections finish their requests for up to `grace`.
pub async fn serve<E>(
    listener: TcpListener,
    endpoint: E,
    limits: Limits,
    stop: impl Future<Output = ()>,
    grace: Duration,
) -> io::Result<()>
where
    E: Endpoint + 'static,
{
    let endpoint = Arc::new(endpoint);
    let local = listener.local_addr()?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving
                    // the connections there are.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let endpoint = endpoint.clone();
        tokio::spawn(serve_connection(
            stream, endpoint, limits, local, remote, watcher,
        ));
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
    Ok(())
}

/// One connection: `stream` served through `endpoint` by hyper, and what
/// hyper refused itself answered in the error shape afterwards (see
/// [`hyper_errors`]).
pub(crate) async fn serve_connection<E, S>(
    stream: S,
    endpoint: Arc<E>,
    limits: Limits,
    local: SocketAddr,
    remote: SocketAddr,
    watcher: Watcher,
) where
    E: Endpoint + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requests = Arc::new(Requests::default());
    let service = {
        let requests = requests.clone();
        hyper::service::service_fn(move |request| {
            // In flight from here, before the future is first polled,
            // until hyper drops the response body.
            let in_flight = requests.start();
            let endpoint = endpoint.clone();
            async move {
                let response = call(&*endpoint, request, local, remote).await;
                let response = hyper::Response::from(response).map(|body| in_flight.around(body));
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        .max_buf_size(hyper_errors::MAX_HEAD_BYTES);
    let (io, mut leftover) = Answering::new(IdleLimit::new(stream, limits.idle), requests);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let result = watcher.watch(connection).await;
    let error = result.as_ref().err().map(|e| &**e);
    if let Ok(leftover) = leftover.try_recv()
        && let Some(status) = hyper_errors::answer(leftover, error, limits.header).await
    {
        tracing::info!(%remote, status = status.as_u16(), "request refused before routing");
    }
    if let Some(e) = error {
        tracing::debug!(%remote, error = %e, "connection ended");
    }
}

/// One request through the endpoint.
async fn call(
    endpoint: &impl Endpoint,
    request: hyper::Request<hyper::body::Incoming>,
    local: SocketAddr,
    remote: SocketAddr,
) -> poem::Response {
    let request = poem::Request::from((
        request,
        LocalAddr(Addr::SocketAddr(local)),
        RemoteAddr(Addr::SocketAddr(remote)),
        poem::http::uri::Scheme::HTTP,
    ));
    endpoint.get_response(request).await
}

/// Middleware: the request body is read under the body limit (see the
/// module). A middleware rather than part of [`serve`] so that the request
/// log and the metrics see the 408.
pub async fn limit_body_stalls<E: Endpoint>(
    endpoint: Arc<E>,
    mut request: poem::Request,
    limit: Duration,
) -> poem::Result<poem::Response> {
    let body = request.take_body();
    if body.is_empty() {
        request.set_body(body);
        return endpoint
            .call(request)
            .await
            .map(IntoResponse::into_response);
    }
    let stalled = Arc::new(AtomicBool::new(false));
    request.set_body(stall_limited(body, limit, stalled.clone()));
    // Errors go on to the app's error handler, which shapes them.
    let response = endpoint
        .call(request)
        .await
        .map(IntoResponse::into_response);
    if !stalled.load(Ordering::Relaxed) {
        return response;
    }
    // Whatever the handler made of the failed read, the client is told
    // why, and the connection (with the rest of the body unread) goes.
    let mut response = crate::error::error_response(
        StatusCode::REQUEST_TIMEOUT,
        &format!(
            "No byte of the request body arrived for {} s \
             (SUPASCALE_HTTP_BODY_TIMEOUT_SECONDS)",
            limit.as_secs()
        ),
    );
    response.headers_mut().insert(
        poem::http::header::CONNECTION,
        HeaderValue::from_static("close"),
    );
    Ok(response)
}

/// `body`, failing with `TimedOut` (and setting `stalled`) when no chunk
/// arrives within `limit` of the previous one.
fn stall_limited(body: Body, limit: Duration, stalled: Arc<AtomicBool>) -> Body {
    let chunks = body.into_bytes_stream();
    let limited = futures::stream::unfold(
        (Box::pin(chunks), stalled, false),
        move |(mut chunks, stalled, done)| async move {
            if done {
                return None;
            }
            match tokio::time::timeout(limit, chunks.next()).await {
                Ok(Some(chunk)) => Some((chunk, (chunks, stalled, false))),
                Ok(None) => None,
                Err(_) => {
                    stalled.store(true, Ordering::Relaxed);
                    let error = io::Error::new(io::ErrorKind::TimedOut, "the request body stalled");
                    Some((Err(error), (chunks, stalled, true)))
                }
            }
        },
    );
    Body::from_bytes_stream(limited)
}

/// A socket that fails with `TimedOut` once neither a read nor a write has
/// made progress for `limit` while the connection waits on one of them.
struct IdleLimit<S> {
    inner: S,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> IdleLimit<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn progressed(&mut self) {
        let next = tokio::time::Instant::now() + self.limit;
        self.deadline.as_mut().reset(next);
    }

    /// `Pending` until the deadline, then the error that ends the
    /// connection.
    fn expired<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection was idle for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleLimit<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => this.expired(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleLimit<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => this.expired(cx),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.expired(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => this.expired(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
