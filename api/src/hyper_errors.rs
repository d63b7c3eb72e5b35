//! The error shape for the requests hyper refuses before our service runs.
//!
//! hyper answers an HTTP/1 request it cannot parse itself, with a bare
//! status and no body (`Server::on_error` in hyper's `proto/h1/role.rs`):
//! 400 for a malformed request line or header, 414 for a request target
//! over 65 534 bytes, 431 for a head over the read buffer or with more than
//! 100 header fields. A request whose headers do not all arrive within the
//! header timeout gets no answer at all: the connection just closes. hyper
//! has no hook for either, so this module answers them in the contract's
//! shape (`{"success": false, "error": "…"}`) from outside:
//!
//! - [`Answering`] wraps the socket. A write made while no request of ours
//!   is in flight that is exactly hyper's error head (status line, then
//!   only `connection: close`, `content-length: 0` and `date`) is reported
//!   written but kept off the wire, and hyper's shutdown after it is
//!   deferred. Both signals are needed: every response of the app carries
//!   `x-request-id` (and nearly all a body), so no app response has that
//!   exact form, and the count of requests in flight rules out the rest.
//! - When hyper is done with the connection, the wrapper hands the socket
//!   back, and [`answer`] writes the refusal in the error shape (with
//!   `Connection: close`) using hyper's error for the details, then closes.
//!
//! HTTP/2 is untouched: its writes are frames, never an `HTTP/1.x` head,
//! and hyper's header timeout is HTTP/1 only.
//!
//! Gaps, both only with pipelining: a late head whose first bytes came in
//! while the request before it was in flight is closed without an answer
//! (as a kept-alive connection on which nothing started is), and an error
//! head hyper writes in one go with the unsent tail of the previous
//! response is not recognised and goes out bare.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use poem::http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

/// The most bytes of request line and headers hyper reads before it gives
/// up with 431. hyper's default `max_buf_size` (408 KiB), set explicitly so
/// that the message names the limit that applies.
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// hyper's own limits, left at its defaults (the first cannot be set): a
/// request target over this is 414 (`MAX_URI_LEN` in hyper's
/// `proto/h1/role.rs`) …
const HYPER_MAX_URI_BYTES: usize = 65_534;
/// … and more header fields than this are 431 (`DEFAULT_MAX_HEADERS`).
const HYPER_MAX_HEADERS: usize = 100;

/// How long a refused client gets to read the answer after it was sent
/// and the write side closed, while what it still sends is read and
/// discarded: closing a socket with unread input resets the connection,
/// and the reset can destroy the answer before the client reads it.
const LINGER: Duration = Duration::from_secs(2);

/// What the service and the socket of one connection share: which
/// requests hyper has handed to the service.
#[derive(Debug, Default)]
pub struct Requests {
    /// Requests handed to the service whose response body hyper has not
    /// dropped yet.
    in_flight: AtomicUsize,
    /// Bytes arrived while no request was in flight and no request has
    /// started since: a request head is (partly) in.
    head_started: AtomicBool,
}

impl Requests {
    /// hyper handed a request to the service; it is in flight until the
    /// returned guard (moved into the response body) is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_started.store(false, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }
}

/// One request in flight (see [`Requests::start`]).
#[derive(Debug)]
pub struct InFlight(Arc<Requests>);

impl InFlight {
    /// `body`, keeping the request in flight until hyper drops it.
    pub fn around<B>(self, body: B) -> Counted<B> {
        Counted {
            body,
            _in_flight: self,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request in flight (see [`InFlight`]).
pub struct Counted<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket of a connection hyper has finished with, when it may be
/// owed an answer.
#[derive(Debug)]
pub struct Leftover<S> {
    pub stream: S,
    /// The status of hyper's error head, kept off the wire.
    pub refused: Option<StatusCode>,
    /// Part of a request head had arrived (see [`Requests`]).
    pub head_started: bool,
}

/// The socket wrapper (see the module).
pub struct Answering<S> {
    /// Taken only when the wrapper is dropped.
    inner: Option<S>,
    requests: Arc<Requests>,
    refused: Option<StatusCode>,
    handback: Option<oneshot::Sender<Leftover<S>>>,
}

impl<S> Answering<S> {
    /// `inner`, and where it comes back once hyper drops it if the
    /// connection may be owed an answer.
    pub fn new(inner: S, requests: Arc<Requests>) -> (Self, oneshot::Receiver<Leftover<S>>) {
        let (handback, leftover) = oneshot::channel();
        let wrapper = Self {
            inner: Some(inner),
            requests,
            refused: None,
            handback: Some(handback),
        };
        (wrapper, leftover)
    }
}

impl<S: Unpin> Answering<S> {
    fn inner(&mut self) -> Pin<&mut S> {
        Pin::new(self.inner.as_mut().expect("taken only on drop"))
    }

    /// Whether `head` (all of one write) is hyper's error head while no
    /// request is in flight; if so it is kept off the wire.
    fn intercept(&mut self, head: &[u8]) -> bool {
        if self.refused.is_some() {
            // Nothing hyper writes after its error head belongs on the
            // wire before our answer (hyper writes nothing more).
            return true;
        }
        if !self.requests.idle() {
            return false;
        }
        match hyper_error_status(head) {
            Some(status) => {
                self.refused = Some(status);
                true
            }
            None => false,
        }
    }
}

impl<S> Drop for Answering<S> {
    fn drop(&mut self) {
        let head_started = self.requests.head_started.load(Ordering::SeqCst);
        if self.refused.is_none() && !head_started {
            return;
        }
        if let (Some(stream), Some(handback)) = (self.inner.take(), self.handback.take()) {
            let _ = handback.send(Leftover {
                stream,
                refused: self.refused,
                head_started,
            });
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Answering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = self.inner().poll_read(cx, buf);
        let arrived = matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before;
        if arrived && self.requests.idle() {
            self.requests.head_started.store(true, Ordering::SeqCst);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Answering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.intercept(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        self.inner().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        // hyper's error head is about 120 bytes; a longer write is not it.
        if total <= 512 && (self.refused.is_some() || self.requests.idle()) {
            let head: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if self.intercept(&head) {
                return Poll::Ready(Ok(total));
            }
        }
        self.inner().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.refused.is_some() {
            // The answer goes first; [`answer`] closes the socket.
            return Poll::Ready(Ok(()));
        }
        self.inner().poll_shutdown(cx)
    }
}

/// The status of `head` if it is exactly the head hyper writes when it
/// refuses a request itself: `HTTP/1.x 400|414|431 <reason>`, then only
/// `connection: close`, `content-length: 0` (required) and `date`.
fn hyper_error_status(head: &[u8]) -> Option<StatusCode> {
    let head = std::str::from_utf8(head).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status_line = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?;
    let (code, reason) = status_line.split_once(' ')?;
    let status = StatusCode::from_bytes(code.as_bytes()).ok()?;
    let from_hyper = [
        StatusCode::BAD_REQUEST,
        StatusCode::URI_TOO_LONG,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    ];
    if !from_hyper.contains(&status) || status.canonical_reason() != Some(reason) {
        return None;
    }
    let mut empty = false;
    for line in lines {
        match line.split_once(": ")? {
            ("content-length", "0") => empty = true,
            ("connection", "close") | ("date", _) => {}
            _ => return None,
        }
    }
    empty.then_some(status)
}

/// What the client is told when hyper refused its request (`refused`),
/// or timed out waiting for a head that had started to arrive; `None` when
/// it is owed nothing (a kept-alive connection on which no next request
/// started, a client that went away).
fn refusal(
    refused: Option<StatusCode>,
    head_started: bool,
    error: Option<&hyper::Error>,
    header_timeout: Duration,
) -> Option<(StatusCode, String)> {
    let message = match refused {
        Some(StatusCode::URI_TOO_LONG) => format!(
            "The request URI is longer than {HYPER_MAX_URI_BYTES} bytes; the limit is {}",
            crate::MAX_URI_BYTES
        ),
        Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE) => format!(
            "The request headers are too large: the limit is {MAX_HEAD_BYTES} bytes \
             (request line and headers together) and {HYPER_MAX_HEADERS} header fields"
        ),
        Some(_) => {
            // hyper's words for what it could not parse, e.g. "invalid
            // HTTP method parsed".
            let detail = error
                .filter(|e| e.is_parse())
                .map_or_else(|| "not HTTP/1.1".to_string(), ToString::to_string);
            format!(
                "Malformed request: {}; the request line and headers must be valid HTTP/1.1",
                detail.trim_end_matches(" parsed")
            )
        }
        None if head_started && error.is_some_and(hyper::Error::is_timeout) => format!(
            "The request headers did not arrive within {} s \
             (SUPASCALE_HTTP_HEADER_TIMEOUT_SECONDS)",
            header_timeout.as_secs()
        ),
        None => return None,
    };
    Some((refused.unwrap_or(StatusCode::REQUEST_TIMEOUT), message))
}

/// The whole HTTP/1.1 response for a refusal: the error shape,
/// `Connection: close`.
fn response_bytes(status: StatusCode, message: &str) -> Vec<u8> {
    let body = crate::error::error_json(message);
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\ndate: {date}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len(),
    )
    .into_bytes()
}

/// Answers what hyper refused on `leftover`'s connection (see the module),
/// given the error the connection ended with, then closes it. Returns the
/// status sent, if any.
pub async fn answer<S>(
    leftover: Leftover<S>,
    error: Option<&(dyn std::error::Error + Send + Sync + 'static)>,
    header_timeout: Duration,
) -> Option<StatusCode>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let error = error.and_then(|e| e.downcast_ref::<hyper::Error>());
    let (status, message) = refusal(
        leftover.refused,
        leftover.head_started,
        error,
        header_timeout,
    )?;
    let mut stream = leftover.stream;
    let sent = async {
        stream.write_all(&response_bytes(status, &message)).await?;
        stream.shutdown().await
    };
    if let Err(e) = sent.await {
        tracing::debug!(error = %e, "cannot send the refusal");
        return None;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut discard = [0u8; 8192];
        while matches!(stream.read(&mut discard).await, Ok(n) if n > 0) {}
    })
    .await;
    Some(status)
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;
    use std::time::Duration;

    use poem::http::StatusCode;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    /// What hyper 1.x writes (captured from a live server).
    const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\
        content-length: 0\r\ndate: Thu, 03 Dec 2026 06:35:21 GMT\r\n\r\n";

    #[test]
    fn only_hypers_own_error_head_is_recognised() {
        assert_eq!(hyper_error_status(HYPER_400), Some(StatusCode::BAD_REQUEST));
        let others: [&[u8]; 3] = [
            b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.0 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ];
        for head in others {
            assert!(hyper_error_status(head).is_some(), "{head:?}");
        }
        let not_hypers: [&[u8]; 7] = [
            // The app's: a request id (and a body).
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json; charset=utf-8\r\n\
              x-request-id: 0c\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nx-request-id: 0c\r\ncontent-length: 0\r\n\r\n",
            // A status hyper does not refuse with, a wrong reason, a body.
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Oops\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n",
            // Not the whole head, or more than the head.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
        ];
        for head in not_hypers {
            assert_eq!(hyper_error_status(head), None, "{head:?}");
        }
    }

    /// A vectored error head while nothing is in flight is kept off the
    /// wire, hyper's shutdown waits for the answer, and the socket comes
    /// back; the same bytes while a response is in flight pass through.
    #[tokio::test]
    async fn the_wrapper_keeps_hypers_head_off_the_wire() {
        let (server, mut client) = duplex(4096);
        let requests = Arc::new(Requests::default());
        let (mut socket, leftover) = Answering::new(server, requests.clone());
        let (a, b) = HYPER_400.split_at(30);
        let written = socket
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await
            .unwrap();
        assert_eq!(written, HYPER_400.len());
        socket.flush().await.unwrap();
        socket.shutdown().await.unwrap();
        drop(socket);
        let leftover = leftover.await.expect("the socket comes back");
        assert_eq!(leftover.refused, Some(StatusCode::BAD_REQUEST));
        let mut server = leftover.stream;
        server.write_all(b"ours").await.unwrap();
        drop(server);
        let mut seen = Vec::new();
        client.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, b"ours");

        let (server, mut client) = duplex(4096);
        let (mut socket, leftover) = Answering::new(server, requests.clone());
        let in_flight = requests.start();
        socket.write_all(HYPER_400).await.unwrap();
        drop(in_flight);
        socket.shutdown().await.unwrap();
        drop(socket);
        assert!(leftover.await.is_err(), "nothing to answer");
        let mut seen = Vec::new();
        client.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, HYPER_400);
    }

    /// Through hyper over a socket that takes 7 bytes at a time: a
    /// response of the app comes out whole, then a malformed request that
    /// followed it is answered in the error shape, and the socket closes.
    #[tokio::test]
    async fn a_refusal_after_a_response_through_hyper() {
        let (server, client) = duplex(7);
        let body = "x".repeat(3000);
        let endpoint = {
            let body = body.clone();
            Arc::new(poem::endpoint::make_sync(move |_| body.clone()))
        };
        let limits = crate::server::Limits {
            header: Duration::from_secs(5),
            idle: Duration::from_secs(5),
        };
        let address = "127.0.0.1:1".parse().unwrap();
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let served = tokio::spawn(crate::server::serve_connection(
            server,
            endpoint,
            limits,
            address,
            address,
            graceful.watcher(),
        ));
        // Written and read at once: the socket holds 7 bytes.
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let mut seen = Vec::new();
        let exchange = async {
            let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n";
            let (written, read) = tokio::join!(
                to_server.write_all(request),
                from_server.read_to_end(&mut seen)
            );
            written.and(read)
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .unwrap()
            .unwrap();
        served.await.unwrap();
        let seen = String::from_utf8(seen).unwrap();
        let (first, second) = seen.split_at(seen.find(&body).unwrap() + body.len());
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
        assert!(
            second.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{second}"
        );
        assert!(second.contains("\r\nconnection: close\r\n"), "{second}");
        let (_, json) = second.split_once("\r\n\r\n").unwrap();
        assert!(
            second.contains(&format!("\r\ncontent-length: {}\r\n", json.len())),
            "{second}"
        );
        let json: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(json["success"], false);
        assert!(
            json["error"]
                .as_str()
                .unwrap()
                .starts_with("Malformed request: invalid HTTP method"),
            "{json}"
        );
    }
}
