//! One HTTP connection's byte stream as hyper sees it: the header and idle
//! timeouts, and the API's JSON answers in place of hyper's own empty ones.
//!
//! hyper answers a request it cannot parse (`400`, `431` for a head over
//! the limit, ...) by itself, with an empty body, and has no idle timeout
//! separate from its header timeout and no `408`. [`ConnIo`] sits between
//! the socket and hyper and knows, from [`ConnProgress`] (which the
//! connection's service updates), whether hyper is waiting for a request
//! head or serving one:
//!
//! - waiting for a head, reads are held to a deadline: the header timeout
//!   (counted from the accept for a connection's first request, from the
//!   first byte for later ones) or, before the first byte of a later
//!   request, the idle timeout. When it passes, a partial head gets a
//!   `408` JSON answer; the read then fails, which ends the connection;
//! - waiting for a head, anything hyper writes is its own answer to a
//!   request it refused (it writes nothing else then): it is replaced by
//!   the same status with a JSON body and `connection: close`;
//! - serving a request (from the service call until its response is
//!   flushed), bytes pass through untouched.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::http_listener::{json_error_response, HttpLimits};

/// The most header fields hyper accepts in a request head (its default).
pub(crate) const MAX_HEADER_FIELDS: usize = 100;

/// Requests of one connection handed to the service, and responses done
/// with; shared by the connection's service and its [`ConnIo`].
#[derive(Debug, Default)]
pub(crate) struct ConnProgress {
    requests: AtomicU64,
    responses: AtomicU64,
}

impl ConnProgress {
    /// hyper parsed a request head and called the service.
    pub(crate) fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
    }

    /// hyper is done with a response body (dropped after its last bytes
    /// were queued for writing), or the request was abandoned.
    pub(crate) fn response_done(&self) {
        self.responses.fetch_add(1, Ordering::SeqCst);
    }
}

/// Counts a response as done when dropped: it lives in the response body.
#[derive(Debug)]
pub(crate) struct ResponseDone(pub(crate) Arc<ConnProgress>);

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.0.response_done();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// hyper waits for a request head; `received`: some of it arrived;
    /// `idle`: a keep-alive connection before the first byte of its next
    /// request (the deadline is then the idle timeout).
    AwaitingHead { received: bool, idle: bool },
    /// A request was handed to the service and its response is not flushed yet.
    Serving,
    /// The connection ends after the answer in `ConnIo::answer` is written.
    Ending(End),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The header or idle deadline passed: reads fail.
    TimedOut,
    /// hyper refused a request and answered it: further output is dropped.
    Refused,
}

/// The socket of one connection (a TCP stream, or a TLS stream over one),
/// wrapped for hyper (see the module docs).
pub(crate) struct ConnIo<'a, S> {
    stream: &'a mut S,
    progress: Arc<ConnProgress>,
    limits: Arc<HttpLimits>,
    phase: Phase,
    /// The deadline while awaiting a head.
    deadline: Pin<Box<Sleep>>,
    /// Requests seen started, as of the last look at `progress`.
    requests_seen: u64,
    /// Our own answer, written before anything else, and how much of it is out.
    answer: Vec<u8>,
    answer_written: usize,
    /// The start of hyper's own answer, until its status code is known.
    refusal: Vec<u8>,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> ConnIo<'a, S> {
    /// Wraps a just-accepted connection: its first request head is due
    /// within the header timeout.
    pub(crate) fn new(stream: &'a mut S, progress: Arc<ConnProgress>, limits: Arc<HttpLimits>) -> Self {
        let deadline = Box::pin(tokio::time::sleep(limits.header_timeout));
        ConnIo {
            stream,
            progress,
            limits,
            phase: Phase::AwaitingHead { received: false, idle: false },
            deadline,
            requests_seen: 0,
            answer: Vec::new(),
            answer_written: 0,
            refusal: Vec::new(),
        }
    }

    fn set_deadline(&mut self, after: Duration) {
        let now = Instant::now();
        // Far in the future rather than an overflow for absurd values.
        let at = now.checked_add(after).unwrap_or(now + Duration::from_secs(86_400 * 365));
        self.deadline.as_mut().reset(at);
    }

    /// A new request started since we last looked: hyper serves it.
    fn observe_requests(&mut self) {
        let started = self.progress.requests.load(Ordering::SeqCst);
        if started != self.requests_seen {
            self.requests_seen = started;
            if !matches!(self.phase, Phase::Ending(_)) {
                self.phase = Phase::Serving;
            }
        }
    }

    /// Replaces whatever hyper would say with a JSON answer, then ends.
    fn end_with_answer(&mut self, end: End, status: StatusCode, message: &str) {
        self.answer = json_error_response(status, message, &[]);
        self.answer_written = 0;
        self.phase = Phase::Ending(end);
    }

    fn poll_write_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.answer_written < self.answer.len() {
            let n = ready!(Pin::new(&mut *self.stream).poll_write(cx, &self.answer[self.answer_written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.answer_written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// The header or idle deadline passed while awaiting a head.
    fn time_out(&mut self, received: bool, idle: bool) {
        if received {
            let message = format!(
                "request header not received within {} ms (http.header_timeout_ms)",
                self.limits.header_timeout.as_millis()
            );
            self.end_with_answer(End::TimedOut, StatusCode::REQUEST_TIMEOUT, &message);
        } else {
            // Nothing of a request arrived: close without a word.
            self.phase = Phase::Ending(End::TimedOut);
            tracing::debug!(idle, "HTTP connection closed: no request within the deadline");
        }
    }

    /// hyper writes while awaiting a head: its own answer to a request it
    /// refused. Collects its status line, then answers in JSON instead.
    fn capture_refusal(&mut self, buf: &[u8]) {
        const STATUS_LINE_START: usize = "HTTP/1.1 400".len();
        let room = STATUS_LINE_START.saturating_sub(self.refusal.len());
        self.refusal.extend_from_slice(&buf[..room.min(buf.len())]);
        if self.refusal.len() < STATUS_LINE_START {
            return;
        }
        let status = self
            .refusal
            .get(9..12)
            .and_then(|code| StatusCode::from_bytes(code).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        let message = match status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => format!(
                "request header too large: the request line and header fields may take at most {} bytes (http.max_header_bytes) and {MAX_HEADER_FIELDS} fields",
                self.limits.max_header_bytes
            ),
            StatusCode::URI_TOO_LONG => "request target too long".to_string(),
            StatusCode::BAD_REQUEST => "malformed HTTP request".to_string(),
            other => other.canonical_reason().unwrap_or("request refused").to_string(),
        };
        tracing::debug!(%status, "HTTP request refused by the parser");
        self.end_with_answer(End::Refused, status, &message);
    }

    /// A write from hyper when not serving a request: `bufs` are taken
    /// (reported written) and our answer goes out instead.
    fn poll_replace<'b>(
        &mut self,
        cx: &mut Context<'_>,
        bufs: impl Iterator<Item = &'b [u8]>,
    ) -> Poll<io::Result<usize>> {
        let mut total = 0;
        for buf in bufs {
            total += buf.len();
            if matches!(self.phase, Phase::AwaitingHead { .. }) {
                self.capture_refusal(buf);
            }
        }
        if matches!(self.phase, Phase::Ending(_)) {
            ready!(self.poll_write_answer(cx))?;
        }
        Poll::Ready(Ok(total))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ConnIo<'_, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.observe_requests();
        match this.phase {
            Phase::Serving => Pin::new(&mut *this.stream).poll_read(cx, buf),
            Phase::Ending(end) => {
                ready!(this.poll_write_answer(cx))?;
                Poll::Ready(match end {
                    End::TimedOut => {
                        Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP request deadline passed"))
                    }
                    // Nothing more is read: end of stream.
                    End::Refused => Ok(()),
                })
            }
            Phase::AwaitingHead { received, idle } => {
                let before = buf.filled().len();
                match Pin::new(&mut *this.stream).poll_read(cx, buf) {
                    Poll::Ready(Ok(())) => {
                        if buf.filled().len() > before {
                            if idle {
                                // The next request began: its head is due within the header timeout.
                                this.set_deadline(this.limits.header_timeout);
                            }
                            this.phase = Phase::AwaitingHead { received: true, idle: false };
                        }
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
                ready!(this.deadline.as_mut().poll(cx));
                this.time_out(received, idle);
                ready!(this.poll_write_answer(cx))?;
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP request deadline passed")))
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ConnIo<'_, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.observe_requests();
        match this.phase {
            Phase::Serving => Pin::new(&mut *this.stream).poll_write(cx, buf),
            _ => this.poll_replace(cx, std::iter::once(buf)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.observe_requests();
        match this.phase {
            Phase::Serving => Pin::new(&mut *this.stream).poll_write_vectored(cx, bufs),
            _ => this.poll_replace(cx, bufs.iter().map(|b| &**b)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.observe_requests();
        if matches!(this.phase, Phase::Ending(_)) {
            ready!(this.poll_write_answer(cx))?;
        }
        ready!(Pin::new(&mut *this.stream).poll_flush(cx))?;
        // hyper flushes only once its buffer is written: when every started
        // response is done too, the connection awaits its next request.
        if this.phase == Phase::Serving
            && this.progress.responses.load(Ordering::SeqCst) == this.requests_seen
        {
            this.phase = Phase::AwaitingHead { received: false, idle: true };
            this.set_deadline(this.limits.idle_timeout);
            // Arm the timer now: hyper may not read again before it fires,
            // and its firing wakes the connection, which then reads.
            let _ = this.deadline.as_mut().poll(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Ending(_)) {
            ready!(this.poll_write_answer(cx))?;
        }
        Pin::new(&mut *this.stream).poll_shutdown(cx)
    }
}
