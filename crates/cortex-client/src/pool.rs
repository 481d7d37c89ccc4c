//! A connection pool with a hard cap per endpoint.
//!
//! Why not reqwest's pool: it caps idle connections, not open ones, so a
//! burst opens as many connections as there are calls (the seed's pool had
//! the same hole: its cap checked a list it had just emptied). Here every
//! connection holds one of `max_connections` slots from the moment it is
//! dialled until its socket is closed, so the cap holds at every instant.
//!
//! - A call checks out an idle connection, or dials one if a slot is free, or
//!   waits (at most `pool_timeout`) for either.
//! - A connection goes back to the idle list only after its response body was
//!   read to the end. A call or stream dropped half-way drops its connection
//!   (closing the socket): a half-read HTTP/1 connection cannot be reused.
//! - A sweeper closes connections idle for longer than `idle_timeout`.
//!
//! Calls use HTTP/1.1: one request per connection at a time, which is what
//! makes "connections in use" and "calls in flight" the same number.
//!
//! Resource streams share HTTP/2 connections ([`PoolSettings::stream_http2`];
//! with prior knowledge (h2c) to an `http://` endpoint, chosen by ALPN over
//! TLS): a stream
//! takes a share of the connection carrying the fewest, up to
//! [`HTTP2_STREAMS_PER_CONNECTION`], and one is dialled (on a slot, like any
//! connection) when all are full. 10,000 streams then hold 100 connections
//! instead of 10,000. An endpoint that does not speak HTTP/2 (over TLS: it
//! does not choose `h2`; over TCP: it fails the first stream's request,
//! which is repeated over HTTP/1.1, not counted against the endpoint) gets
//! HTTP/1.1 streams from then on.
//!
//! An HTTP/1.1 connection dialled for a resource stream ([`Purpose::Stream`]) reads
//! through a small buffer ([`STREAM_READ_BUFFER`]): it spends its life
//! waiting for the next event, and hyper keeps its read buffer reserved
//! while a read waits, so 10,000 streams with hyper's default 8 KiB would
//! hold 80 MiB of buffers that are almost always empty. Events larger than
//! the buffer still arrive whole: the body comes out in pieces that the SSE
//! decoder joins. Such a connection is closed when its stream ends rather
//! than pooled, since the buffer also bounds the answer's head, which is
//! too tight for every answer a call may get. An endpoint whose stream
//! answer's head does not fit (a proxy adding large headers) fails that one
//! attempt, which is repeated, and gets full-size stream connections from
//! then on.
//!
//! Through a proxy ([`Route`]), a pool still belongs to one target endpoint:
//! its connections go to the proxy (forwarding: requests in absolute form)
//! or through it (a `CONNECT` tunnel each), but carry requests for this
//! target only, and count against this target's cap. Two targets behind one
//! proxy have two pools, as they have two breakers.
//!
//! An `https://` target's connections speak TLS ([`crate::tls`]): the
//! handshake follows TCP, or runs inside the `CONNECT` tunnel when there is
//! a proxy (an `https://` target is never forwarded: the proxy would see the
//! plaintext). A pooled TLS connection is reused like any other, so the cap
//! also bounds the handshakes in flight, and a kept-alive connection costs
//! one handshake for all its calls.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use crate::error::Cause;
use crate::proxy::{Hop, ProxyError, Route};
use crate::tls::Tls;
use tokio_rustls::client::TlsStream;

/// The read buffer of a connection dialled for a resource stream, in
/// bytes, and so also the largest answer head it accepts (hyper's exact
/// read size caps the head too; a larger one fails that attempt as
/// "message head is too large", and the endpoint's later stream
/// connections get hyper's default buffers). A Cortex SSE answer's head is
/// a few hundred bytes; 2 KiB leaves room for what proxies and load
/// balancers usually add (a sticky cookie, `Via`).
const STREAM_READ_BUFFER: usize = 2048;

/// The streams one HTTP/2 connection carries at most. Below the
/// `SETTINGS_MAX_CONCURRENT_STREAMS` that servers commonly announce (the
/// kit's 200, nginx's 128, 100 as RFC 9113 recommends at least): a stream
/// past the server's limit would wait inside hyper for a free one.
const HTTP2_STREAMS_PER_CONNECTION: usize = 100;

/// How many bytes of one stream's events hyper takes in ahead of its reader
/// (the stream's HTTP/2 receive window). hyper's default, 2 MiB, against
/// its 5 MiB for the whole connection, let three streams whose readers
/// had stopped take the connection's window, and every other stream on it
/// waited behind them. 64 KiB is more than an event usually is (a larger
/// one still arrives whole, as the reader frees the window).
const HTTP2_STREAM_WINDOW: u32 = 64 * 1024;

/// The connection's receive window: room for every stream's whole window,
/// so streams that are not read can never hold back the others.
const HTTP2_CONNECTION_WINDOW: u32 = HTTP2_STREAM_WINDOW * HTTP2_STREAMS_PER_CONNECTION as u32;

/// Whether an endpoint's resource streams go over HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Http2 {
    /// Not known yet: the next stream's first request finds out.
    Untried,
    /// A stream's request went over HTTP/2, or the server sent an HTTP/2
    /// frame.
    Works,
    /// The endpoint failed a stream's first request on a new HTTP/2
    /// connection, or did not choose `h2` in a TLS handshake, `at` then:
    /// it gets HTTP/1.1 for [`HTTP2_RETRY_AFTER`].
    Refused { at: Instant },
}
/// How long an endpoint found not to speak HTTP/2 gets HTTP/1.1 streams
/// before HTTP/2 is tried again. The finding can be wrong (a server
/// restarting under the first stream looks the same) or go stale (a
/// server upgraded behind the same address); trying again costs one
/// stream's request going over HTTP/1.1 after a refusal.
const HTTP2_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What a connection is wanted for: it decides how a new one is dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A call or a read: hyper's default buffers; pooled again after use.
    Call,
    /// A long-lived stream: a small read buffer ([`STREAM_READ_BUFFER`]);
    /// closed, not pooled, when the stream ends.
    Stream,
    /// A long-lived stream that may share an HTTP/2 connection (a share of
    /// one, where the route and the endpoint allow); else as `Stream`.
    SharedStream,
}

/// How a new connection is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// HTTP/1.1 with hyper's default buffers.
    Http1,
    /// HTTP/1.1 reading through [`STREAM_READ_BUFFER`].
    Http1SmallReads,
    /// HTTP/2 with prior knowledge, shared by streams.
    Http2,
}

/// Timings, the cap and the route of one endpoint's pool.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PoolSettings {
    pub(crate) max_connections: usize,
    pub(crate) idle_timeout: Duration,
    /// Bounds making a connection: to the target, or to its proxy together
    /// with the `CONNECT` exchange, and the TLS handshake after either.
    pub(crate) connect_timeout: Duration,
    /// Resource streams share HTTP/2 connections where the route allows
    /// ([`Self::http2_route`]).
    pub(crate) stream_http2: bool,
    /// Straight to the target, or through its proxy.
    pub(crate) route: Route,
    /// TLS to an `https://` target; `None` for `http://`.
    pub(crate) tls: Option<Tls>,
}

impl PoolSettings {
    /// The proxy that requests are forwarded to in absolute form: never for
    /// a TLS target, whose connections are tunnelled whatever
    /// `proxy_tunnel` says (that is what a proxy for `https://` means).
    fn forwarded_to(&self) -> Option<&Hop> {
        match &self.route {
            Route::Forward(hop) if self.tls.is_none() => Some(hop),
            _ => None,
        }
    }

    /// Whether streams may try HTTP/2: to targets reached directly or
    /// through a tunnel (a forwarding proxy speaks HTTP/1.1 to us); with
    /// prior knowledge over plain TCP, offered by ALPN over TLS.
    fn http2_route(&self) -> bool {
        self.stream_http2 && self.forwarded_to().is_none()
    }

    /// The proxy whose `CONNECT` tunnels carry the connections.
    fn tunnelled_through(&self) -> Option<&Hop> {
        match &self.route {
            Route::Tunnel(hop) => Some(hop),
            Route::Forward(hop) if self.tls.is_some() => Some(hop),
            _ => None,
        }
    }
}

/// Why no connection could be had.
#[derive(Debug)]
pub(crate) enum AcquireError {
    /// Every slot stayed busy until the deadline.
    PoolTimeout { waited: Duration },
    /// Dialling failed (refused, unreachable, DNS, connect timeout, the
    /// HTTP handshake; or the proxy could not be reached, or could not reach
    /// the target): the error underneath. The target is not reachable.
    Connect(Cause),
    /// The proxy refused the tunnel by its own rules (`407`, another `4xx`
    /// to `CONNECT`): a [`ProxyError`]. Not the target's failure.
    Proxy(Cause),
}

impl std::fmt::Display for AcquireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PoolTimeout { waited } => {
                write!(f, "no connection was free within {waited:?}")
            }
            Self::Connect(cause) | Self::Proxy(cause) => write!(f, "{cause}"),
        }
    }
}

/// What the pool looks like now, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open (idle or in use).
    pub open: usize,
    /// Calls and streams holding a connection now (a call or an HTTP/1.1
    /// stream holds one of its own; HTTP/2 streams share one).
    pub in_use: usize,
    /// Calls waiting for a connection.
    pub waiting: usize,
    /// Connections dialled since the pool was made.
    pub dialed_total: u64,
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// An HTTP/2 connection that streams share.
struct Shared {
    /// Names it for the streams that hold a share ([`Sender::Http2`]).
    id: u64,
    sender: http2::SendRequest<Full<Bytes>>,
    /// Streams holding a share now.
    streams: usize,
    /// When its last stream ended (its creation, before the first).
    idle_since: Instant,
}

/// Held by the one caller dialling a shared connection
/// ([`EndpointPool::shared_dialling`]). Dropped when the dial ends, or when
/// the caller gives up half-way (its call cancelled): either way the
/// others look again, and one of them dials if there is still no room.
struct Dialling<'a>(&'a EndpointPool);

impl Drop for Dialling<'_> {
    fn drop(&mut self) {
        self.0.shared_dialling.store(false, Ordering::Release);
        // A new connection has room for many: everyone looks again.
        self.0.shared_freed.notify_waiters();
    }
}

/// How a checked-out connection sends.
enum Sender {
    /// An HTTP/1.1 connection, used by one request at a time.
    Http1(SendRequest<Full<Bytes>>),
    /// A share of the HTTP/2 connection `id` in [`EndpointPool::shared`].
    Http2 {
        sender: http2::SendRequest<Full<Bytes>>,
        id: u64,
    },
}

/// How a queued caller's wait ended.
enum Waited {
    /// A connection given back was handed over (`None`: the pool is gone).
    Handed(Option<SendRequest<Full<Bytes>>>),
    /// A slot freed: dial (`None`: the semaphore closed).
    Slot(Option<OwnedSemaphorePermit>),
    TimedOut,
}

/// The pool of one endpoint (`host:port`).
pub(crate) struct EndpointPool {
    authority: String,
    settings: PoolSettings,
    /// One permit per open connection; held by the connection's driver task
    /// until the socket is closed.
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    /// Callers waiting for a connection, oldest first: a connection given
    /// back goes to the oldest, never to the idle list while one waits.
    /// (Handing it to whoever asks next let a caller that had just given
    /// one back take it again, and a waiter starved for a whole run.)
    /// Locked before `idle` wherever both are.
    waiters: Mutex<VecDeque<oneshot::Sender<SendRequest<Full<Bytes>>>>>,
    open: Arc<AtomicUsize>,
    in_use: AtomicUsize,
    waiting: AtomicUsize,
    dialed_total: AtomicU64,
    /// A stream's answer head did not fit [`STREAM_READ_BUFFER`]: this
    /// endpoint's stream connections are dialled like any other from now on.
    large_stream_heads: AtomicBool,
    /// Whether streams go over HTTP/2. Read once per stream request, not
    /// per call.
    http2: Mutex<Http2>,
    /// The HTTP/2 connections streams share. Each holds one slot of
    /// `max_connections`, as an HTTP/1 connection does.
    shared: Mutex<Vec<Shared>>,
    /// Woken when a share may have come free: a stream on a shared
    /// connection ended, or a dial for one ended.
    shared_freed: Notify,
    /// A shared connection is being dialled: streams without a share wait
    /// for it rather than each dialling its own (10,000 streams opened at
    /// once would otherwise take every slot for one stream each).
    shared_dialling: AtomicBool,
    next_shared: AtomicU64,
}

impl std::fmt::Debug for EndpointPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointPool")
            .field("authority", &self.authority)
            .field("stats", &self.stats())
            .finish()
    }
}

impl EndpointPool {
    /// A pool for `authority`; starts its idle sweeper on the current runtime.
    pub(crate) fn new(authority: String, settings: PoolSettings) -> Arc<Self> {
        let pool = Arc::new(Self {
            authority,
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            settings,
            idle: Mutex::new(Vec::new()),
            waiters: Mutex::new(VecDeque::new()),
            open: Arc::new(AtomicUsize::new(0)),
            in_use: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            dialed_total: AtomicU64::new(0),
            large_stream_heads: AtomicBool::new(false),
            http2: Mutex::new(Http2::Untried),
            shared: Mutex::new(Vec::new()),
            shared_freed: Notify::new(),
            shared_dialling: AtomicBool::new(false),
            next_shared: AtomicU64::new(0),
        });
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        pool
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            open: self.open.load(Ordering::Relaxed),
            in_use: self.in_use.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            dialed_total: self.dialed_total.load(Ordering::Relaxed),
        }
    }

    fn idle_list(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn http2(&self) -> std::sync::MutexGuard<'_, Http2> {
        self.http2
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A connection for `purpose`, waiting at most until `deadline` for a
    /// slot. An idle connection serves either purpose; only a new one is
    /// dialled for it.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        deadline: Instant,
        purpose: Purpose,
    ) -> Result<PooledConn, AcquireError> {
        // The common case, an idle connection, takes no wake-up
        // registration and no timer; the rest is boxed so that its state
        // (dialling, waiting) does not weigh on every call's future. When
        // callers wait, they go first: join the queue behind them.
        if purpose == Purpose::SharedStream && self.settings.http2_route() && self.may_try_http2() {
            return Box::pin(self.share(deadline)).await;
        }
        if self.waiting.load(Ordering::Acquire) == 0
            && let Some(sender) = self.take_idle().await
        {
            return Ok(self.checked_out(Sender::Http1(sender), Purpose::Call));
        }
        Box::pin(self.dial_or_wait(deadline, purpose)).await
    }

    /// No idle connection: dial one if a slot is free, else wait for a
    /// connection or a slot until `deadline`.
    async fn dial_or_wait(
        self: &Arc<Self>,
        deadline: Instant,
        purpose: Purpose,
    ) -> Result<PooledConn, AcquireError> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return self.dialled(slot, purpose).await;
        }
        let started = Instant::now();
        loop {
            // Queue up, and look at the idle list under the same lock that
            // `give_back` holds: a connection given back before we queued
            // is in the list, one given back after comes to us.
            let (handoff, mut handed) = oneshot::channel();
            let found = {
                let mut waiters = self.waiter_list();
                let found = self.idle_list().pop();
                if found.is_none() {
                    waiters.push_back(handoff);
                    self.waiting.fetch_add(1, Ordering::AcqRel);
                }
                found
            };
            if let Some(idle) = found {
                if let Some(sender) = self.usable(idle).await {
                    return Ok(self.checked_out(Sender::Http1(sender), Purpose::Call));
                }
                continue;
            }
            let outcome = tokio::select! {
                sender = &mut handed => Waited::Handed(sender.ok()),
                slot = self.slots.clone().acquire_owned() => Waited::Slot(slot.ok()),
                () = tokio::time::sleep_until(deadline) => Waited::TimedOut,
            };
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            // Leaving the queue: a connection handed over meanwhile is ours
            // (our entry stays queued until a hand-off finds it closed).
            handed.close();
            let late = handed.try_recv().ok();
            match (outcome, late) {
                (Waited::Handed(Some(sender)), _) | (_, Some(sender)) => {
                    if let Some(sender) = self.usable_now(sender).await {
                        return Ok(self.checked_out(Sender::Http1(sender), Purpose::Call));
                    }
                }
                (Waited::Slot(Some(slot)), None) => {
                    return self.dialled(slot, purpose).await;
                }
                (Waited::TimedOut, None) => {
                    return Err(AcquireError::PoolTimeout {
                        waited: started.elapsed(),
                    });
                }
                // A closed semaphore or channel: look again.
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(AcquireError::PoolTimeout {
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// A share of an HTTP/2 connection for a stream: the one carrying the
    /// fewest streams among those with room, or a new one if a slot is
    /// free; else a wait, until `deadline`, for a share or a slot.
    async fn share(self: &Arc<Self>, deadline: Instant) -> Result<PooledConn, AcquireError> {
        let started = Instant::now();
        loop {
            // Registered before looking, so a share freed between the look
            // and the wait is not missed.
            let freed = self.shared_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(sender) = self.take_share() {
                return Ok(self.checked_out(sender, Purpose::Stream));
            }
            if !self.shared_dialling.swap(true, Ordering::AcqRel) {
                let dialling = Dialling(self);
                let dialled = self.dial_shared(deadline, freed.as_mut()).await;
                drop(dialling);
                match dialled {
                    Ok(Some(sender)) => return Ok(self.checked_out(sender, Purpose::Stream)),
                    Ok(None) => continue,
                    Err(AcquireError::PoolTimeout { .. }) => {
                        return Err(AcquireError::PoolTimeout {
                            waited: started.elapsed(),
                        });
                    }
                    Err(error) => return Err(error),
                }
            }
            tokio::select! {
                () = &mut freed => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(AcquireError::PoolTimeout { waited: started.elapsed() });
                }
            }
        }
    }

    /// Dials a shared connection and takes the first share of it; `None`
    /// when a share came free while waiting for a slot.
    async fn dial_shared(
        &self,
        deadline: Instant,
        freed: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) -> Result<Option<Sender>, AcquireError> {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => tokio::select! {
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return Ok(None),
                },
                () = freed => return Ok(None),
                () = tokio::time::sleep_until(deadline) => {
                    return Err(AcquireError::PoolTimeout { waited: Duration::ZERO });
                }
            },
        };
        let sender = self.dial(slot, Handshake::Http2).await?;
        if let Sender::Http2 { sender, id } = &sender {
            self.shared_list().push(Shared {
                id: *id,
                sender: sender.clone(),
                streams: 1,
                idle_since: Instant::now(),
            });
        }
        Ok(Some(sender))
    }

    fn shared_list(&self) -> std::sync::MutexGuard<'_, Vec<Shared>> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A share of the open HTTP/2 connection with the fewest streams, if
    /// one has room.
    fn take_share(&self) -> Option<Sender> {
        let mut shared = self.shared_list();
        shared.retain(|conn| !conn.sender.is_closed());
        let conn = shared
            .iter_mut()
            .filter(|conn| conn.streams < HTTP2_STREAMS_PER_CONNECTION)
            .min_by_key(|conn| conn.streams)?;
        conn.streams += 1;
        Some(Sender::Http2 {
            sender: conn.sender.clone(),
            id: conn.id,
        })
    }

    /// A stream on shared connection `id` ended (its share dropped).
    fn stream_ended(&self, id: u64) {
        {
            let mut shared = self.shared_list();
            // Gone from the list already if its connection closed.
            if let Some(conn) = shared.iter_mut().find(|conn| conn.id == id) {
                conn.streams = conn.streams.saturating_sub(1);
                if conn.streams == 0 {
                    conn.idle_since = Instant::now();
                }
            }
        }
        self.shared_freed.notify_one();
    }

    fn waiter_list(
        &self,
    ) -> std::sync::MutexGuard<'_, VecDeque<oneshot::Sender<SendRequest<Full<Bytes>>>>> {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used idle connection that is still usable.
    async fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let idle = self.idle_list().pop()?;
            if let Some(sender) = self.usable(idle).await {
                return Some(sender);
            }
        }
    }

    /// `idle`'s connection if it can carry a call now; else it is dropped
    /// (which closes the socket and frees its slot).
    async fn usable(&self, idle: Idle) -> Option<SendRequest<Full<Bytes>>> {
        if idle.since.elapsed() >= self.settings.idle_timeout {
            return None;
        }
        self.usable_now(idle.sender).await
    }

    /// `sender` if its connection is open and ready.
    async fn usable_now(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
    ) -> Option<SendRequest<Full<Bytes>>> {
        if sender.is_closed() {
            return None;
        }
        // An idle HTTP/1 connection is normally ready at once: check
        // without a timer first.
        match futures::FutureExt::now_or_never(sender.ready()) {
            Some(Ok(())) => return Some(sender),
            Some(Err(_)) => return None,
            None => {}
        }
        // Its driver may not have noticed the last answer's end yet;
        // give it a moment, but don't wait on a connection the peer
        // closed.
        let wait = tokio::time::timeout(Duration::from_millis(50), sender.ready());
        match Box::pin(wait).await {
            Ok(Ok(())) => Some(sender),
            _ => None,
        }
    }

    /// `sender`'s connection, checked out; `dialled_for` is the purpose it
    /// was dialled for (`Call` for one that was pooled), which decides
    /// whether it may be pooled again.
    fn checked_out(self: &Arc<Self>, sender: Sender, dialled_for: Purpose) -> PooledConn {
        self.in_use.fetch_add(1, Ordering::Relaxed);
        PooledConn {
            sender: Some(sender),
            pool: self.clone(),
            dialled_for,
            reusable: dialled_for == Purpose::Call,
        }
    }

    /// A new connection for `purpose` on `slot`, checked out.
    async fn dialled(
        self: &Arc<Self>,
        slot: OwnedSemaphorePermit,
        purpose: Purpose,
    ) -> Result<PooledConn, AcquireError> {
        let purpose = match purpose {
            Purpose::Stream | Purpose::SharedStream
                if self.large_stream_heads.load(Ordering::Relaxed) =>
            {
                Purpose::Call
            }
            Purpose::SharedStream => Purpose::Stream,
            purpose => purpose,
        };
        let handshake = match purpose {
            Purpose::Call => Handshake::Http1,
            Purpose::Stream | Purpose::SharedStream => Handshake::Http1SmallReads,
        };
        let sender = self.dial(slot, handshake).await?;
        Ok(self.checked_out(sender, purpose))
    }

    /// How a connection dialled for HTTP/2 goes on after a TLS handshake
    /// in which the server did not choose `h2`: HTTP/1.1 for this stream
    /// (its small buffer unless the endpoint's heads need more), and for
    /// this endpoint's streams from now on.
    fn after_alpn<IO>(&self, handshake: Handshake, stream: &TlsStream<IO>) -> Handshake {
        if handshake != Handshake::Http2 || crate::tls::negotiated_h2(stream) {
            return handshake;
        }
        self.refuse_http2(&"the server did not choose h2 in the TLS handshake");
        if self.large_stream_heads.load(Ordering::Relaxed) {
            Handshake::Http1
        } else {
            Handshake::Http1SmallReads
        }
    }

    /// Marks an untried endpoint as not speaking HTTP/2 (once, logged).
    fn refuse_http2(&self, why: &dyn std::fmt::Display) {
        let mut http2 = self.http2();
        if *http2 == Http2::Untried {
            *http2 = Http2::Refused { at: Instant::now() };
            tracing::info!(
                endpoint = %self.authority,
                %why,
                retry_after_secs = HTTP2_RETRY_AFTER.as_secs(),
                "the endpoint does not speak HTTP/2; its streams use HTTP/1.1 for now"
            );
        }
    }

    /// Whether a stream may go over HTTP/2: unless the endpoint was found
    /// not to speak it, less than [`HTTP2_RETRY_AFTER`] ago. After that
    /// the finding is forgotten, and the next stream finds out again.
    fn may_try_http2(&self) -> bool {
        let mut http2 = self.http2();
        match *http2 {
            Http2::Refused { at } if at.elapsed() < HTTP2_RETRY_AFTER => false,
            Http2::Refused { .. } => {
                *http2 = Http2::Untried;
                tracing::info!(endpoint = %self.authority, "trying HTTP/2 again for the endpoint's streams");
                true
            }
            Http2::Untried | Http2::Works => true,
        }
    }

    /// Marks an untried endpoint as speaking HTTP/2.
    fn http2_works(&self) {
        let mut http2 = self.http2();
        if *http2 == Http2::Untried {
            *http2 = Http2::Works;
        }
    }

    async fn dial(
        &self,
        slot: OwnedSemaphorePermit,
        handshake: Handshake,
    ) -> Result<Sender, AcquireError> {
        let timeout = self.settings.connect_timeout;
        // One bound over all of making a connection, TLS included: the
        // handshake gets what is left of it.
        let deadline = Instant::now() + timeout;
        if let Some(hop) = self.settings.forwarded_to() {
            let stream = crate::proxy::dial_proxy(hop, timeout)
                .await
                .map_err(|e| AcquireError::Connect(Cause::new(e)))?;
            return self.start(TokioIo::new(stream), slot, handshake).await;
        }
        let Some(hop) = self.settings.tunnelled_through() else {
            let stream = self.dial_target(timeout).await?;
            return match &self.settings.tls {
                Some(tls) => {
                    let stream = secure(tls, stream, deadline, handshake).await?;
                    let handshake = self.after_alpn(handshake, &stream);
                    self.start(TokioIo::new(stream), slot, handshake).await
                }
                None => self.start(TokioIo::new(stream), slot, handshake).await,
            };
        };
        // One bound over reaching the proxy and its answer to CONNECT: a
        // proxy that accepts and then says nothing fails like one that
        // cannot be reached.
        let tunnel = async {
            let stream = crate::proxy::dial_proxy(hop, timeout).await?;
            crate::proxy::connect_tunnel(stream, hop).await
        };
        let upgraded = match tokio::time::timeout(timeout, tunnel).await {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err(error)) if error.is_refusal() => {
                return Err(AcquireError::Proxy(Cause::new(error)));
            }
            Ok(Err(error)) => return Err(AcquireError::Connect(Cause::new(error))),
            Err(_) => {
                let error = ProxyError::Unreachable {
                    proxy: hop.shown.clone(),
                    source: crate::proxy::timed_out(timeout),
                };
                return Err(AcquireError::Connect(Cause::new(error)));
            }
        };
        match &self.settings.tls {
            // TLS inside the tunnel, end to end with the target.
            Some(tls) => {
                let stream = secure(tls, TokioIo::new(upgraded), deadline, handshake).await?;
                let handshake = self.after_alpn(handshake, &stream);
                self.start(TokioIo::new(stream), slot, handshake).await
            }
            None => self.start(upgraded, slot, handshake).await,
        }
    }

    /// A TCP connection to the target itself, within `timeout`.
    async fn dial_target(&self, timeout: Duration) -> Result<tokio::net::TcpStream, AcquireError> {
        let connect = tokio::net::TcpStream::connect(self.authority.as_str());
        let stream = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(AcquireError::Connect(Cause::new(error))),
            Err(_) => {
                let timed_out = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connect timed out after {}",
                        cortex_resilience::human::HumanDuration(timeout)
                    ),
                );
                return Err(AcquireError::Connect(Cause::new(timed_out)));
            }
        };
        // Small requests and answers: don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// The HTTP handshake on `io` (a socket, or a tunnel through a proxy),
    /// and the task that drives the connection.
    async fn start<T>(
        &self,
        io: T,
        slot: OwnedSemaphorePermit,
        handshake: Handshake,
    ) -> Result<Sender, AcquireError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let connect_error = |e| AcquireError::Connect(Cause::new(e));
        if handshake == Handshake::Http2 {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(HTTP2_STREAM_WINDOW)
                .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
                .handshake(io)
                .await
                .map_err(connect_error)?;
            self.drive(connection, slot);
            let id = self.next_shared.fetch_add(1, Ordering::Relaxed);
            return Ok(Sender::Http2 { sender, id });
        }
        let mut builder = http1::Builder::new();
        if handshake == Handshake::Http1SmallReads {
            builder.read_buf_exact_size(Some(STREAM_READ_BUFFER));
        }
        let (sender, connection) = builder.handshake(io).await.map_err(connect_error)?;
        self.drive(connection, slot);
        Ok(Sender::Http1(sender))
    }

    /// Runs a new connection's driver in its own task, which owns the slot:
    /// it is freed when the socket is closed, not merely when we stop
    /// using the connection.
    fn drive(
        &self,
        connection: impl Future<Output = hyper::Result<()>> + Send + 'static,
        slot: OwnedSemaphorePermit,
    ) {
        self.dialed_total.fetch_add(1, Ordering::Relaxed);
        let open = self.open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }

    fn give_back(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut sender = sender;
        let mut waiters = self.waiter_list();
        while let Some(waiter) = waiters.pop_front() {
            match waiter.send(sender) {
                Ok(()) => return,
                // That caller stopped waiting: the next one.
                Err(back) => sender = back,
            }
        }
        self.idle_list().push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Closes idle connections past `idle_timeout`.
    fn sweep_once(&self) {
        let timeout = self.settings.idle_timeout;
        self.idle_list()
            .retain(|idle| !idle.sender.is_closed() && idle.since.elapsed() < timeout);
        // A shared connection without streams is idle too; dropping the
        // last sender of it closes it.
        self.shared_list().retain(|conn| {
            !conn.sender.is_closed() && (conn.streams > 0 || conn.idle_since.elapsed() < timeout)
        });
    }

    /// Closes every idle connection now.
    pub(crate) fn close_idle(&self) {
        self.idle_list().clear();
        self.shared_list().retain(|conn| conn.streams > 0);
    }
}

/// The TLS handshake on `io` until `deadline`. Its failure is the
/// target's (`Connect`): a certificate refused by either side, or a peer
/// that does not speak TLS, says so in the I/O error underneath.
async fn secure<IO>(
    tls: &Tls,
    io: IO,
    deadline: Instant,
    handshake: Handshake,
) -> Result<TlsStream<IO>, AcquireError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let left = deadline.saturating_duration_since(Instant::now());
    tls.handshake(io, left, handshake == Handshake::Http2)
        .await
        .map_err(|e| AcquireError::Connect(Cause::new(e)))
}

/// Runs while the pool lives; wakes often enough that an idle connection is
/// closed within a quarter of `idle_timeout` after it expires.
async fn sweep(pool: Weak<EndpointPool>) {
    let every = match pool.upgrade() {
        Some(pool) => (pool.settings.idle_timeout / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(5)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        match pool.upgrade() {
            Some(pool) => pool.sweep_once(),
            None => return,
        }
    }
}

/// A checked-out connection. [`PooledConn::release`] returns it for reuse;
/// dropping it closes it.
pub(crate) struct PooledConn {
    sender: Option<Sender>,
    pool: Arc<EndpointPool>,
    /// How it was dialled (`Call` for one taken from the idle list).
    dialled_for: Purpose,
    /// Whether [`Self::release`] may put it back for another call: not a
    /// connection dialled for a stream ([`Purpose::Stream`]), nor one a
    /// forwarding proxy did not keep alive ([`proxy_keeps_alive`]).
    reusable: bool,
}

impl std::fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConn")
            .field("authority", &self.pool.authority)
            .finish()
    }
}

impl PooledConn {
    /// Sends one request. The connection is not reusable until the
    /// response body has been read to the end and [`Self::release`] called.
    pub(crate) async fn send(
        &mut self,
        mut request: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, SendError> {
        let sender = match self.sender.as_mut() {
            None => return Err(SendError::Closed),
            Some(Sender::Http2 { sender, .. }) => {
                return send_shared(&self.pool, sender, request).await;
            }
            Some(Sender::Http1(sender)) => sender,
        };
        let forward = self.pool.settings.forwarded_to();
        if let Some(hop) = forward {
            to_proxy(&mut request, hop)?;
        }
        // Nothing is written until the connection is ready.
        sender
            .ready()
            .await
            .map_err(|e| SendError::NotSent(Cause::new(e)))?;
        let tls = self.pool.settings.tls.as_ref();
        let small_reads = self.dialled_for == Purpose::Stream;
        let large_stream_heads = &self.pool.large_stream_heads;
        let response = sender.send_request(request).await.map_err(|error| {
            // An answer a stream connection could not read: most likely its
            // head did not fit the small buffer (hyper names that cause
            // only when built as a server too, which this crate is not).
            // Stream connections to this endpoint get full-size buffers
            // from now on, and the request may be asked again; a head that
            // is malformed fails again there, as any other.
            if small_reads && error.is_parse() {
                large_stream_heads.store(true, Ordering::Relaxed);
                return SendError::Unsuited(Unsuited::LargeHead, error);
            }
            // A TLS server's refusal of the handshake that arrives after
            // our side of it (TLS 1.3 checks the client's certificate then)
            // means its TLS layer accepted nothing.
            if let Some(refusal) = tls.and_then(|tls| tls.refusal(&error)) {
                return SendError::NotSent(Cause::new(refusal));
            }
            // hyper cancels a request it never dispatched (the connection
            // closed first); anything else may have reached the service.
            if error.is_canceled() {
                SendError::NotSent(Cause::new(error))
            } else {
                SendError::MaybeSent(error)
            }
        })?;
        if forward.is_some() {
            self.reusable &= proxy_keeps_alive(&response);
        }
        // A forwarded request's 407 is the proxy's: the request went no
        // further. (The target's own 401 passes, as any answer does.)
        if let Some(hop) = forward
            && response.status() == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED
        {
            return Err(SendError::Proxy(Cause::new(ProxyError::AuthRequired {
                proxy: hop.shown.clone(),
                status: response.status().as_u16(),
                credentials_sent: hop.auth.is_some(),
            })));
        }
        Ok(response)
    }

    /// Returns the connection to the idle list (unless it may not be
    /// reused: then it is closed).
    pub(crate) fn release(mut self) {
        match self.sender.take() {
            Some(Sender::Http1(sender)) if self.reusable => self.pool.give_back(sender),
            // Not reusable: closed (or, shared, its share given up) on drop.
            other => self.sender = other,
        }
    }
}

/// Whether a forwarding proxy said that it keeps the connection open after
/// `response` (`Connection` or `Proxy-Connection: keep-alive`, and no
/// `close`). Only then is the connection reused. HTTP/1.1 would let a
/// silent answer mean "kept open", but forwarding proxies often close
/// after each answer without saying so (tinyproxy does): a connection put
/// back then fails the next call that takes it, before hyper has seen it
/// close, and counts against the target's breaker. A tunnel is not
/// affected: the target's own keep-alive applies inside it.
fn proxy_keeps_alive(response: &http::Response<Incoming>) -> bool {
    let mut keep_alive = false;
    let headers = response.headers();
    let values = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .chain(headers.get_all("proxy-connection"));
    for value in values {
        for token in value.to_str().unwrap_or_default().split(',') {
            let token = token.trim();
            if token.eq_ignore_ascii_case("close") {
                return false;
            }
            keep_alive |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    keep_alive
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        self.pool.in_use.fetch_sub(1, Ordering::Relaxed);
        // An HTTP/1 sender still here was not released: its response was not
        // read to the end, so the connection is dropped (and closed) with it.
        // A share of an HTTP/2 connection ends only its stream (hyper resets
        // it if unfinished); the connection carries the others on.
        if let Some(Sender::Http2 { id, .. }) = &self.sender {
            self.pool.stream_ended(*id);
        }
    }
}

/// Sends a stream's request on a shared HTTP/2 connection. The first
/// request to an endpoint that fails there, before any has succeeded,
/// marks the endpoint as not speaking h2c: an HTTP/1-only server answers
/// the preface with an error or a close, and that must not count against
/// it. Its streams then use HTTP/1.1.
async fn send_shared(
    pool: &EndpointPool,
    sender: &mut http2::SendRequest<Full<Bytes>>,
    mut request: http::Request<Full<Bytes>>,
) -> Result<http::Response<Incoming>, SendError> {
    // HTTP/2 names the target in `:scheme` and `:authority`, which hyper
    // takes from an absolute URI.
    let authority = pool.authority.parse().map_err(|e: http::uri::InvalidUri| {
        SendError::NotSent(Cause::new(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{}` is not a URI authority: {e}", pool.authority),
        )))
    })?;
    let scheme = if pool.settings.tls.is_some() {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    };
    *request.uri_mut() = absolute_uri(&request, scheme, authority).map_err(|e| {
        SendError::NotSent(Cause::new(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot form the request URI: {e}"),
        )))
    })?;
    let untried = *pool.http2() == Http2::Untried;
    let sent = match sender.ready().await {
        Ok(()) => sender.send_request(request).await,
        Err(error) => Err(error),
    };
    match sent {
        Ok(response) => {
            if untried {
                pool.http2_works();
            }
            Ok(response)
        }
        Err(error) => Err(shared_failure(pool, error, untried)),
    }
}

/// Why a request on a shared HTTP/2 connection failed.
fn shared_failure(pool: &EndpointPool, error: hyper::Error, untried: bool) -> SendError {
    // A TLS server's refusal of our certificate (or of its absence) comes
    // with the first request, as over HTTP/1.1 (`PooledConn::send`); it
    // reached no service, and the same handshake would be refused again.
    let tls = pool.settings.tls.as_ref();
    if let Some(refusal) = tls.and_then(|tls| tls.refusal_over_h2(&error)) {
        return SendError::NotSent(Cause::new(refusal));
    }
    let frame = ServerFrame::of(&error);
    // An HTTP/2 frame from the server (a `GOAWAY`, a reset) proves that it
    // speaks HTTP/2, whatever it says about the stream. Over TLS the
    // server chose HTTP/2 in the handshake. Otherwise a new connection's
    // first request failing is taken as a server without HTTP/2.
    if untried && frame != ServerFrame::None {
        pool.http2_works();
    } else if untried && tls.is_none() {
        pool.refuse_http2(&error);
        return SendError::Unsuited(Unsuited::NoHttp2, error);
    }
    match frame {
        ServerFrame::GracefulGoAway => SendError::GoingAway(error),
        ServerFrame::Unprocessed => SendError::NotSent(Cause::new(error)),
        // A request hyper never handed to the connection. Anything else, a
        // connection closed under a stream above all, may have been sent.
        _ if error.is_canceled() => SendError::NotSent(Cause::new(error)),
        _ => SendError::MaybeSent(error),
    }
}

/// What the server's own HTTP/2 frame, if any, says about a failed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerFrame {
    /// No frame from the server: this side's error, or the socket's.
    None,
    /// A `GOAWAY` without error left the stream out: the server is closing
    /// the connection (a restart, an idle close) and processed none of it.
    GracefulGoAway,
    /// The server processed none of it: it reset the stream with
    /// `REFUSED_STREAM` (RFC 9113 §8.7), or its `GOAWAY` (with an error)
    /// named a last stream below this one (§6.8).
    Unprocessed,
    /// Any other reset: the server may have acted on the request.
    Other,
}

impl ServerFrame {
    /// h2 gives a `GOAWAY`'s error (remote) only to the streams above the
    /// last one it names, and to requests opened after it; a stream at or
    /// below it that the closing connection then cuts ends with an I/O
    /// error instead, and stays "may have been sent".
    fn of(error: &hyper::Error) -> Self {
        let Some(h2) = h2_from_server(error) else {
            return Self::None;
        };
        match (h2.is_go_away(), h2.reason()) {
            (true, Some(h2::Reason::NO_ERROR)) => Self::GracefulGoAway,
            (true, _) | (false, Some(h2::Reason::REFUSED_STREAM)) => Self::Unprocessed,
            _ => Self::Other,
        }
    }
}

/// The HTTP/2 error behind `error` when it came in a frame from the server
/// (`GOAWAY` or `RST_STREAM`), not from this side or from the socket.
fn h2_from_server(error: &hyper::Error) -> Option<&h2::Error> {
    std::error::Error::source(error)
        .and_then(|cause| cause.downcast_ref::<h2::Error>())
        .filter(|h2| h2.is_remote())
}

/// `request`'s URI in absolute form, `scheme://authority/path?query`.
fn absolute_uri(
    request: &http::Request<Full<Bytes>>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
) -> Result<http::Uri, http::Error> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    parts.path_and_query = Some(
        request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Ok(http::Uri::from_parts(parts)?)
}

/// A request for `hop`'s proxy: its URI in absolute form
/// (`http://host:port/path`, RFC 9112 §3.2.2), which is how a forwarding
/// proxy learns the target, and the proxy's credentials. `Host` is the
/// target's already.
fn to_proxy(request: &mut http::Request<Full<Bytes>>, hop: &Hop) -> Result<(), SendError> {
    // Scheme, authority and path are all there, so this does not fail;
    // if it did, nothing is sent rather than a request the proxy misreads.
    let uri = absolute_uri(request, http::uri::Scheme::HTTP, hop.target.clone()).map_err(|e| {
        SendError::Proxy(Cause::new(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot form the request URI for proxy {}: {e}", hop.shown),
        )))
    })?;
    *request.uri_mut() = uri;
    if let Some(auth) = &hop.auth {
        request
            .headers_mut()
            .insert(http::header::PROXY_AUTHORIZATION, auth.clone());
    }
    Ok(())
}

/// Why a request on a connection failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Failed before the request was written, or before the service could
    /// read it (a TLS refusal): safe to repeat anywhere (whether that may
    /// help is the error's classification). The HTTP or I/O error
    /// underneath.
    NotSent(Cause),
    /// Failed after the request may have reached the service.
    MaybeSent(hyper::Error),
    /// The connection was already given up.
    Closed,
    /// The server is closing the connection gracefully (an HTTP/2
    /// `GOAWAY` without error) and processed none of the request: safe to
    /// repeat, and not the endpoint's failure.
    GoingAway(hyper::Error),
    /// The kind of connection did not suit the endpoint, which is not to
    /// blame: its next stream connection is of the kind that does.
    Unsuited(Unsuited, hyper::Error),
    /// The forwarding proxy refused the request (a `407`; a
    /// [`ProxyError`]): it did not reach the service, and the service is
    /// not to blame.
    Proxy(Cause),
}

/// Why a connection did not suit an endpoint ([`SendError::Unsuited`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsuited {
    /// The answer's head did not fit a stream connection's small read
    /// buffer ([`STREAM_READ_BUFFER`]); the request was sent. Stream
    /// connections read through hyper's default buffers from now on.
    LargeHead,
    /// The endpoint does not speak HTTP/2 with prior knowledge; the request
    /// did not reach a service. Streams use HTTP/1.1 from now on.
    NoHttp2,
}

impl Unsuited {
    /// Whether the request may have reached the service.
    pub(crate) fn sent(self) -> bool {
        self == Self::LargeHead
    }
}

impl std::fmt::Display for Unsuited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::LargeHead => "the answer's head is larger than a stream connection's read buffer",
            Self::NoHttp2 => "the endpoint does not speak HTTP/2; streams use HTTP/1.1 now",
        })
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MaybeSent(error) | Self::Unsuited(_, error) | Self::GoingAway(error) => {
                write!(f, "{error}")
            }
            Self::Closed => f.write_str("connection already closed"),
            Self::NotSent(cause) | Self::Proxy(cause) => write!(f, "{cause}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Arc<EndpointPool> {
        EndpointPool::new(
            "127.0.0.1:9".into(),
            PoolSettings {
                max_connections: 1,
                idle_timeout: Duration::from_secs(60),
                connect_timeout: Duration::from_secs(1),
                stream_http2: true,
                route: Route::Direct,
                tls: None,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_found_without_http2_is_tried_again_after_a_while() {
        let pool = pool();
        assert!(pool.may_try_http2(), "untried");
        pool.refuse_http2(&"the first stream's request failed");
        assert!(!pool.may_try_http2());
        tokio::time::advance(HTTP2_RETRY_AFTER - Duration::from_secs(1)).await;
        assert!(!pool.may_try_http2(), "not yet");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(pool.may_try_http2(), "the finding is forgotten");
        assert_eq!(*pool.http2(), Http2::Untried);
        // Found again: HTTP/1.1 for another while.
        pool.refuse_http2(&"refused again");
        assert!(!pool.may_try_http2());
    }
}
