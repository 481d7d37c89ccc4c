//! One accepted connection: what it is doing now, and the bounds on each
//! thing it can be doing.
//!
//! A connection is always in one of three phases, which [`ConnState`]
//! tracks from what passes through it:
//!
//! | phase | bounded by |
//! |---|---|
//! | waiting for a request head (new, or between requests) | `header_timeout` once a head's first byte arrived (or from accept, for a new connection); `idle_timeout` while nothing arrives on a kept-alive one |
//! | a request in progress (its handler running, its body arriving, or its response being written) | `body_timeout` for the body ([`TimedBody`]); a response write that makes no progress for `idle_timeout` fails ([`ConnIo`]) |
//!
//! Over HTTP/2 a connection carries many requests at once: it is "in
//! progress" while any of them is, and between requests only
//! `idle_timeout` applies (its bytes then are pings and window updates,
//! not the start of a head).
//!
//! The server's accept loop reads the same state to choose which idle
//! connection to close when it is at its connection cap.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// What one connection is doing, shared by its I/O, its requests and the
/// task that serves it. Times are milliseconds after `opened`, in atomics,
/// because the I/O path touches them on every read.
pub(crate) struct ConnState {
    opened: Instant,
    /// Requests whose response has not been handed over in full.
    in_flight: AtomicUsize,
    /// Requests dispatched so far.
    served: AtomicU64,
    /// When the first byte of the next request head arrived, plus one; 0
    /// while none has.
    head_started: AtomicU64,
    /// When the last response was handed over (0: the connection is new).
    idle_since: AtomicU64,
    /// Woken when the phase changes, so the serving task recomputes its
    /// deadline.
    pub(crate) changed: Notify,
    /// Woken when the accept loop wants this connection closed to make room.
    pub(crate) evict: Notify,
    /// Set with `evict`: the accept loop does not pick it again.
    evicting: AtomicBool,
    /// The connection speaks HTTP/2: its bytes are frames of many streams
    /// (pings, window updates), not the start of a next request head.
    http2: AtomicBool,
}

/// Why a connection is past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// A request head did not arrive in full within `header_timeout`.
    Header,
    /// A kept-alive connection was idle for `idle_timeout`.
    Idle,
}

impl ConnState {
    pub(crate) fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            changed: Notify::new(),
            evict: Notify::new(),
            evicting: AtomicBool::new(false),
            http2: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    /// Bytes arrived. With no request in progress they are the start of the
    /// next head, whose `header_timeout` starts now (HTTP/1 only: an idle
    /// HTTP/2 connection is bounded by `idle_timeout` alone).
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.http2.load(Ordering::Acquire)
            && self.head_started.load(Ordering::Acquire) == 0
        {
            self.head_started
                .store(self.now_ms() + 1, Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// A request head arrived in full and is being dispatched; the returned
    /// guard marks its end when dropped (with its response, or with the
    /// call if that is dropped first).
    pub(crate) fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// The connection speaks HTTP/2 from now on.
    pub(crate) fn set_http2(&self) {
        self.http2.store(true, Ordering::Release);
    }

    /// True once a request was dispatched here.
    pub(crate) fn served_any(&self) -> bool {
        self.served.load(Ordering::Acquire) > 0
    }

    /// True while a request is in progress.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// True when no request was ever dispatched here, or the next head has
    /// started to arrive: no response can be owed, so the connection can be
    /// dropped outright (hyper's graceful close waits for a head that has
    /// started).
    pub(crate) fn owes_nothing(&self) -> bool {
        !self.busy()
            && (self.served.load(Ordering::Acquire) == 0
                || self.head_started.load(Ordering::Acquire) != 0)
    }

    /// Asks the serving task to close the connection to make room.
    pub(crate) fn evict(&self) {
        self.evicting.store(true, Ordering::Release);
        self.evict.notify_one();
    }

    /// The connection was asked to close but is busy: it stays open, and the
    /// accept loop may pick it again once it is idle.
    pub(crate) fn keep(&self) {
        self.evicting.store(false, Ordering::Release);
    }

    /// Since when the connection has been idle (no request in progress);
    /// `None` while it is busy, or already asked to close. The accept loop
    /// closes the oldest first.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        if self.busy() || self.evicting.load(Ordering::Acquire) {
            return None;
        }
        Some(self.at(self.idle_since.load(Ordering::Acquire)))
    }

    /// When the connection must be closed if nothing changes, and why;
    /// `None` while a request is in progress (its own bounds apply).
    pub(crate) fn deadline(
        &self,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<(Instant, Expiry)> {
        if self.busy() {
            return None;
        }
        if self.served.load(Ordering::Acquire) == 0 {
            // A client connects to send a request: a new connection has the
            // header timeout from accept for its first head, not the (longer)
            // idle timeout, and trickling bytes does not extend it.
            return Some((self.opened + header_timeout, Expiry::Header));
        }
        let head = self.head_started.load(Ordering::Acquire);
        if head != 0 {
            return Some((self.at(head - 1) + header_timeout, Expiry::Header));
        }
        let idle = self.idle_since.load(Ordering::Acquire);
        Some((self.at(idle) + idle_timeout, Expiry::Idle))
    }
}

/// One request in progress on a connection; dropped when its response has
/// been handed over (or the call was dropped).
pub(crate) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        state.idle_since.store(state.now_ms(), Ordering::Release);
        state.in_flight.fetch_sub(1, Ordering::AcqRel);
        state.changed.notify_one();
    }
}

/// A response body that keeps its request counted as in progress until
/// hyper has taken its last frame (or dropped it).
pub(crate) struct TrackedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> TrackedBody<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyReadError {
    /// The body did not arrive in full within the body timeout.
    #[error("the request body did not arrive within {} s", .0.as_secs_f64())]
    TimedOut(Duration),
    /// The connection failed while the body was arriving.
    #[error(transparent)]
    Connection(#[from] hyper::Error),
}

/// The body timeout of a request, if `error` (or what caused it) is one.
pub(crate) fn body_timed_out(error: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(BodyReadError::TimedOut(limit)) = error.downcast_ref::<BodyReadError>() {
            return Some(*limit);
        }
        next = error.source();
    }
    None
}

/// A request body that must arrive in full by a deadline: a client that
/// declares a large body and sends it a byte at a time cannot hold a call
/// (and its connection) open for longer than the body timeout.
pub(crate) struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    limit: Duration,
    /// Made on the first wait only: most bodies (every GET) are complete
    /// at once and need no timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl TimedBody {
    pub(crate) fn new(inner: Incoming, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Instant::now() + limit,
            limit,
            sleep: None,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyReadError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyReadError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(BodyReadError::from))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyReadError::TimedOut(this.limit))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket of a connection, as hyper sees it: it reports arriving bytes
/// to the [`ConnState`], fails a write that makes no progress for
/// `write_stall` (a peer that stopped reading cannot pin a connection and
/// its response in memory), and gives hyper's own error answers the error
/// envelope.
pub(crate) struct ConnIo<T> {
    io: T,
    state: Arc<ConnState>,
    write_stall: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    max_header_bytes: usize,
    /// An envelope answer replacing hyper's bodyless one, and how much of
    /// it has been written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<T> ConnIo<T> {
    pub(crate) fn new(
        io: T,
        state: Arc<ConnState>,
        write_stall: Duration,
        max_header_bytes: usize,
    ) -> Self {
        Self {
            io,
            state,
            write_stall,
            stalled: None,
            max_header_bytes,
            replacement: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> ConnIo<T> {
    /// Turns a pending write into an error once it has been pending for
    /// `write_stall`; any progress resets the clock.
    fn stall_check<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.write_stall;
                let sleep = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if sleep.as_mut().poll(cx).is_ready() {
                    self.stalled = None;
                    tracing::debug!(
                        stall_secs = limit.as_secs_f64(),
                        "the peer stopped reading; dropping the connection"
                    );
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the peer read nothing for the idle timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }

    /// Writes what is left of a replacement answer.
    fn drain_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacement {
            if *written >= bytes.len() {
                self.replacement = None;
                break;
            }
            let poll = Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]);
            match self.stall_check(cx, poll) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    if let Some((_, written)) = &mut self.replacement {
                        *written += n;
                    }
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll
            && buf.filled().len() > before
        {
            self.state.bytes_read();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ConnIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.drain_replacement(cx))?;
        if let Some(answer) = envelope_for_bare_error(buf, self.max_header_bytes) {
            // hyper counts the bare answer as written; ours goes out in
            // its place (now and on the next flush), then hyper closes.
            self.replacement = Some((answer, 0));
            ready!(self.drain_replacement(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.stall_check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.drain_replacement(cx))?;
        // hyper's own error answer is a head alone, in one buffer.
        if let [only] = bufs
            && let Some(answer) = envelope_for_bare_error(only, self.max_header_bytes)
        {
            self.replacement = Some((answer, 0));
            ready!(self.drain_replacement(cx))?;
            return Poll::Ready(Ok(only.len()));
        }
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.stall_check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.drain_replacement(cx))?;
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.stall_check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.drain_replacement(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The error-envelope answer to put in place of `head`, when `head` is one
/// of the answers hyper writes by itself for a request it could not parse:
/// a `400`, `414` or `431` head alone, with `content-length: 0` and no
/// `content-type`. Every answer of the kit's own has a body and a
/// `content-type`, so none of them matches.
fn envelope_for_bare_error(head: &[u8], max_header_bytes: usize) -> Option<Vec<u8>> {
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let (status, message, details) = match status {
        b"400" => (
            400,
            "the request is not valid HTTP/1.1".to_string(),
            serde_json::Value::Null,
        ),
        b"414" => (
            414,
            "the request target is too long".to_string(),
            serde_json::Value::Null,
        ),
        b"431" => (
            431,
            format!(
                "the request head (request line and headers) is larger than {max_header_bytes} bytes or has too many headers"
            ),
            serde_json::json!({ "limit_bytes": max_header_bytes }),
        ),
        _ => return None,
    };
    let text = std::str::from_utf8(head).ok()?;
    let lines = text.strip_suffix("\r\n\r\n")?;
    let mut date = None;
    let mut empty_body = false;
    for line in lines.split("\r\n").skip(1) {
        let (name, value) = line.split_once(':')?;
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "content-length" => empty_body = value.trim() == "0",
            "content-type" | "transfer-encoding" => return None,
            "date" => date = Some(value.trim()),
            _ => {}
        }
    }
    if !empty_body {
        return None;
    }
    let envelope =
        cortex_proto::ErrorEnvelope::new(cortex_proto::ErrorCode::InvalidRequest, message)
            .with_details(details);
    let body = serde_json::to_vec(&envelope).ok()?;
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Bad Request");
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(date) = date {
        answer.push_str(&format!("date: {date}\r\n"));
    }
    answer.push_str("\r\n");
    let mut answer = answer.into_bytes();
    answer.extend_from_slice(&body);
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_bare_error_heads_are_replaced() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Thu, 04 Dec 2025 12:00:00 GMT\r\n\r\n";
        let answer = envelope_for_bare_error(bare, 65536).expect("replaced");
        let text = String::from_utf8(answer).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("content-type: application/json\r\n"));
        assert!(text.contains("date: Thu, 04 Dec 2025 12:00:00 GMT\r\n"));
        let (_, body) = text.split_once("\r\n\r\n").expect("a body");
        let value: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(value["error"]["code"], "invalid_request");
        assert_eq!(value["error"]["details"]["limit_bytes"], 65536);

        for kept in [
            // An answer of the kit's own: it has a type and a body.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 80\r\n\r\n"[..],
            // Another status.
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            // A head followed by body bytes in the same write.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nx",
            // A chunked answer.
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            // Body bytes that merely start like a status line.
            b"HTTP/1.1 400 is what the page says",
        ] {
            assert!(
                envelope_for_bare_error(kept, 65536).is_none(),
                "{}",
                String::from_utf8_lossy(kept)
            );
        }
    }

    #[tokio::test]
    async fn deadlines_follow_the_phase() {
        let header = Duration::from_secs(10);
        let idle = Duration::from_secs(90);
        let state = Arc::new(ConnState::new());
        let (at, why) = state
            .deadline(header, idle)
            .expect("a new connection has one");
        assert_eq!(why, Expiry::Header);
        assert!(at <= Instant::now() + header);
        assert!(state.owes_nothing());

        let request = state.request_started();
        assert!(state.deadline(header, idle).is_none(), "busy");
        assert!(state.idle_since().is_none());
        assert!(!state.owes_nothing());
        drop(request);

        let (at, why) = state.deadline(header, idle).expect("idle");
        assert_eq!(why, Expiry::Idle);
        assert!(at > Instant::now() + header);
        assert!(
            !state.owes_nothing(),
            "graceful close for a kept-alive connection"
        );

        state.bytes_read();
        let (_, why) = state.deadline(header, idle).expect("a head started");
        assert_eq!(why, Expiry::Header);
        assert!(state.owes_nothing());

        // Asked to close, it is not picked again; kept, it may be.
        assert!(state.idle_since().is_some());
        state.evict();
        assert!(state.idle_since().is_none());
        state.keep();
        assert!(state.idle_since().is_some());
    }
}
