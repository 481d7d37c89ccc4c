//! Running a service: the listener and the shutdown signal belong to the caller.
//!
//! The kit runs its own accept loop and serves each connection with hyper's
//! HTTP/1 server, or its HTTP/2 server when the connection opens with
//! HTTP/2's preface (see `preface.rs`). `axum::serve` accepts without limit and has no header,
//! body or idle timeout: idle and slowloris connections piled up until the
//! process ran out of file descriptors and nobody could connect. Here:
//!
//! - **A connection cap** ([`HttpLimits::max_connections`]). At the cap, a
//!   new connection closes the connections idle longest (between requests,
//!   or still sending their first head; a batch at a time, so a flood does
//!   not wait on each one); only when every connection is busy
//!   is it accepted into one of a few health-only slots
//!   ([`HttpLimits::health_connections`]), and past those the loop stops
//!   accepting until a connection ends (new ones wait in the listen
//!   backlog). The cap is lowered at start to fit the open-file limit.
//! - **Timeouts per phase** (see `conn.rs`): a head must arrive
//!   within `header_timeout`, a body within `body_timeout`, a kept-alive
//!   connection is closed after `idle_timeout` without a request, and a
//!   response the peer stops reading is dropped after `idle_timeout`.
//! - **Head size**: hyper refuses a head over `max_header_bytes` with 431,
//!   which (like its 400 and 414) goes out with the error envelope.
//! - **TLS** ([`ServiceConfig::tls`]): the handshake runs in the
//!   connection's task, after admission, within the header timeout from
//!   accept (see [`crate::tls`]); the loop itself never waits on a peer.
//!
//! [`HttpLimits::max_connections`]: crate::config::HttpLimits::max_connections
//! [`HttpLimits::health_connections`]: crate::config::HttpLimits::health_connections

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::{Listener, ListenerExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::bounds::{ConnMeta, fit_connections, open_files_limit};
use crate::config::{HttpLimits, ServiceConfig};
use crate::conn::{ConnIo, ConnState, Expiry, TimedBody, TrackedBody};
use crate::metrics::CountedListener;
use crate::preface::{Protocol, sniff};
use crate::rate_log::RateLimitedLog;
use crate::registry::Service;
use crate::routes::{ShutdownSignals, router};
use crate::tls::TlsConfig;

/// How long the accept loop waits for a connection it asked to close to
/// free its slot.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// How many idle connections are closed at once when the cap is reached: a
/// flood of new connections then finds slots free instead of waiting on
/// each closing one in turn (which, with the CPU busy, left the listen
/// backlog full for long enough that connects timed out).
const EVICTION_BATCH: usize = 16;

/// How long a connection asked to close gracefully, with nothing in
/// progress, may take before it is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The streams one HTTP/2 connection may carry at once (its
/// `SETTINGS_MAX_CONCURRENT_STREAMS`; hyper's default). `max_streams` still
/// bounds resource streams across all connections.
const HTTP2_STREAMS: u32 = 200;

pin_project_lite::pin_project! {
    /// A connection being served, in the HTTP it speaks.
    #[project = ServedProj]
    enum Served<I, S>
    where
        S: hyper::service::HttpService<Incoming>,
    {
        Http1 { #[pin] conn: hyper::server::conn::http1::Connection<I, S> },
        Http2 { #[pin] conn: hyper::server::conn::http2::Connection<I, S, TokioExecutor> },
    }
}

impl<I, S, B> Served<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Stops taking requests and ends once those in progress are answered:
    /// HTTP/1 after the answer in progress, HTTP/2 with a `GOAWAY`.
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        match self.project() {
            ServedProj::Http1 { conn } => conn.graceful_shutdown(),
            ServedProj::Http2 { conn } => conn.graceful_shutdown(),
        }
    }
}

impl<I, S, B> Future for Served<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = hyper::Result<()>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            ServedProj::Http1 { conn } => conn.poll(cx),
            ServedProj::Http2 { conn } => conn.poll(cx),
        }
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops
/// accepting, ends open streams, and lets in-flight calls finish for up to
/// `config.grace_period` before closing what is left.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    mut config: ServiceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stopping_tx, stopping) = watch::channel(false);
    let (expired_tx, expired) = watch::channel(false);
    let grace = config.grace_period;
    let name = service.name().to_string();
    let open_connections = service.open_connections();
    let bound = listener.local_addr()?;
    let wanted = config.limits.max_connections;
    let files = open_files_limit();
    config.limits.max_connections =
        fit_connections(wanted, config.limits.health_connections, files);
    if config.limits.max_connections < wanted {
        tracing::warn!(
            service = %name,
            wanted,
            cap = config.limits.max_connections,
            open_files_limit = files,
            "connection cap lowered to fit the open-file limit"
        );
    }
    let limits = Arc::new(config.limits.clone());
    let tls = config.tls.clone();
    if let Some(tls) = &tls {
        tracing::info!(service = %name, ?tls, "serving over TLS");
        // Certificate rotation: new handshakes use renewed files; the
        // served chain's expiry on `/metrics` and in the log.
        let expiry = service.tls_expiry(tls.certificate_path());
        tokio::spawn(
            tls.clone()
                .watch_files(name.to_string(), expiry, stopping.clone()),
        );
    }
    let app = router(
        service,
        config,
        ShutdownSignals {
            stopping: stopping.clone(),
            expired,
        },
    );
    // Nagle would hold back the second write of a two-part answer for ~40 ms
    // on a kept-alive connection.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
    });
    let listener = CountedListener {
        listener,
        open: open_connections,
    };
    let server = accept_loop(listener, app, limits, tls, bound, stopping.clone());
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        () = shutdown => {
            tracing::info!(service = %name, "shutting down: finishing in-flight calls");
            let _ = stopping_tx.send(true);
        }
    }
    if let Ok(result) = tokio::time::timeout(grace, &mut server).await {
        return result;
    }
    tracing::warn!(service = %name, grace_secs = grace.as_secs_f64(), "grace period over; stopping the calls still running");
    let _ = expired_tx.send(true);
    // Stopped calls answer at once; give the answers a moment to be written.
    // Returning drops the loop and with it every connection still open.
    match tokio::time::timeout(Duration::from_secs(1), server).await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// The slot a connection holds while it is open.
struct Slot {
    /// One of `health_connections` (`/health` only, one request), not one
    /// of `max_connections`.
    health_only: bool,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn normal(permit: OwnedSemaphorePermit) -> Self {
        Self {
            health_only: false,
            _permit: permit,
        }
    }

    fn health(permit: OwnedSemaphorePermit) -> Self {
        Self {
            health_only: true,
            _permit: permit,
        }
    }
}

/// The connections holding a normal slot, for choosing which one to close
/// when the cap is reached.
#[derive(Default)]
struct OpenConnections {
    next: AtomicU64,
    states: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl OpenConnections {
    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(self: &Arc<Self>, state: Arc<ConnState>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.states().insert(id, state);
        Registered {
            id,
            open: self.clone(),
        }
    }

    /// Asks the (at most) `n` connections idle longest to close; how many
    /// it asked.
    fn evict_idle_longest(&self, n: usize) -> usize {
        let mut idle: Vec<(Instant, Arc<ConnState>)> = self
            .states()
            .values()
            .filter_map(|state| state.idle_since().map(|since| (since, state.clone())))
            .collect();
        let n = n.min(idle.len());
        if n == 0 {
            return 0;
        }
        if n < idle.len() {
            idle.select_nth_unstable_by_key(n - 1, |(since, _)| *since);
        }
        for (_, state) in &idle[..n] {
            state.evict();
        }
        n
    }
}

/// Removes a connection from [`OpenConnections`] when it ends.
struct Registered {
    id: u64,
    open: Arc<OpenConnections>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.open.states().remove(&self.id);
    }
}

/// Accepts until `stopping`, then waits for the open connections to end
/// (each closes once it owes no answer).
async fn accept_loop<L, I>(
    mut listener: L,
    app: Router,
    limits: Arc<HttpLimits>,
    tls: Option<TlsConfig>,
    bound: SocketAddr,
    mut stopping: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    L: Listener<Io = I, Addr = SocketAddr>,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let health_slots = Arc::new(Semaphore::new(limits.health_connections));
    let open = Arc::new(OpenConnections::default());
    let mut tasks = JoinSet::new();
    loop {
        let (io, peer) = tokio::select! {
            biased;
            _ = stopping.wait_for(|s| *s) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let slot = tokio::select! {
            biased;
            _ = stopping.wait_for(|s| *s) => break,
            slot = admit(&slots, &health_slots, &open) => slot,
        };
        let Some(slot) = slot else { break };
        let state = Arc::new(ConnState::new());
        let registered = (!slot.health_only).then(|| open.register(state.clone()));
        let conn = Conn {
            peer,
            bound,
            _registered: registered,
            slot,
            state,
        };
        let (app, limits, stopping) = (app.clone(), limits.clone(), stopping.clone());
        match &tls {
            None => tasks.spawn(connection(io, conn, app, limits, stopping)),
            Some(tls) => tasks.spawn(tls_connection(io, tls.clone(), conn, app, limits, stopping)),
        };
    }
    // Dropping the listener closes its socket: new connections are refused.
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// A slot for a connection just accepted (see the module documentation);
/// `None` only if the slots were closed, which they never are.
async fn admit(
    slots: &Arc<Semaphore>,
    health_slots: &Arc<Semaphore>,
    open: &OpenConnections,
) -> Option<Slot> {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return Some(Slot::normal(slot));
    }
    if open.evict_idle_longest(EVICTION_BATCH) > 0 {
        tracing::debug!("connection cap reached; closing the connections idle longest");
        if let Ok(Ok(slot)) =
            tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned()).await
        {
            return Some(Slot::normal(slot));
        }
    }
    if let Ok(slot) = health_slots.clone().try_acquire_owned() {
        return Some(Slot::health(slot));
    }
    static SATURATED: RateLimitedLog = RateLimitedLog::new();
    if SATURATED.allow() {
        tracing::warn!(
            "every connection is busy; new connections wait in the listen backlog \
             (logged at most every 10 s)"
        );
    }
    tokio::select! {
        Ok(slot) = slots.clone().acquire_owned() => Some(Slot::normal(slot)),
        Ok(slot) = health_slots.clone().acquire_owned() => Some(Slot::health(slot)),
        else => None,
    }
}

/// One accepted connection and what it holds until it ends. Fields drop
/// in order: it leaves [`OpenConnections`] before its slot is freed, so the
/// accept loop never picks a connection that is already gone.
struct Conn {
    peer: SocketAddr,
    bound: SocketAddr,
    _registered: Option<Registered>,
    slot: Slot,
    state: Arc<ConnState>,
}

/// Runs the TLS handshake on a connection just admitted, then serves it
/// as [`connection`] does. The handshake must end within the header
/// timeout from accept (the first request head has what is left of it);
/// a connection closed to make room, or shutdown, ends it at once.
async fn tls_connection<I>(
    io: I,
    tls: TlsConfig,
    conn: Conn,
    app: Router,
    limits: Arc<HttpLimits>,
    mut stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = conn.state.clone();
    let handshake = tls.accept(io);
    let Some(stream) = before_first_request(
        handshake,
        &state,
        &limits,
        &mut stopping,
        conn.peer,
        "TLS handshake",
    )
    .await
    else {
        return;
    };
    connection(stream, conn, app, limits, stopping).await;
}

/// Runs `step` (the TLS handshake; reading which HTTP the peer speaks)
/// within a new connection's deadline, its header timeout from accept,
/// unless it is closed to make room or shutdown begins; `None` when the
/// step failed or was cut short (logged, naming `what`).
async fn before_first_request<T, E: std::fmt::Display>(
    step: impl Future<Output = Result<T, E>>,
    state: &ConnState,
    limits: &HttpLimits,
    stopping: &mut watch::Receiver<bool>,
    peer: SocketAddr,
    what: &str,
) -> Option<T> {
    let deadline = state
        .deadline(limits.header_timeout, limits.idle_timeout)
        .map_or_else(|| Instant::now() + limits.header_timeout, |(at, _)| at);
    tokio::select! {
        result = step => match result {
            Ok(done) => Some(done),
            Err(error) => {
                tracing::debug!(%peer, %error, "{what} failed; connection closed");
                None
            }
        },
        () = tokio::time::sleep_until(deadline) => {
            tracing::debug!(
                %peer,
                timeout_secs = limits.header_timeout.as_secs_f64(),
                "no {what} within the header timeout; closing"
            );
            None
        }
        () = state.evict.notified() => None,
        _ = stopping.wait_for(|s| *s) => None,
    }
}

/// Serves one connection until the peer closes it, it expires, it is
/// closed to make room, or shutdown closes it.
async fn connection<I>(
    io: I,
    conn: Conn,
    app: Router,
    limits: Arc<HttpLimits>,
    mut stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let health_only = conn.slot.health_only;
    let meta = ConnMeta {
        bound: conn.bound,
        health_only,
    };
    let peer = conn.peer;
    let state = conn.state.clone();
    let body_timeout = limits.body_timeout;
    let service = {
        let state = state.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = state.request_started();
            let mut request = request.map(|body| TimedBody::new(body, body_timeout));
            request.extensions_mut().insert(meta);
            request.extensions_mut().insert(ConnectInfo(peer));
            let call = app.clone().oneshot(request);
            async move {
                let response = match call.await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, in_flight)))
            }
        })
    };
    let io = ConnIo::new(
        io,
        state.clone(),
        limits.idle_timeout,
        limits.max_header_bytes,
    );
    // Which HTTP the peer speaks, within what is left of the first head's
    // deadline.
    let Some((protocol, io)) =
        before_first_request(sniff(io), &state, &limits, &mut stopping, peer, "request").await
    else {
        return;
    };
    let io = TokioIo::new(io);
    let served = match protocol {
        Protocol::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                // A health-only connection serves one request.
                .keep_alive(!health_only)
                // Timeouts are this module's (hyper's one timer would also
                // close kept-alive connections after the header timeout).
                .header_read_timeout(None)
                .max_header_size(limits.max_header_bytes)
                .max_buf_size(limits.max_header_bytes.max(8192));
            Served::Http1 {
                conn: builder.serve_connection(io, service),
            }
        }
        Protocol::Http2 => {
            state.set_http2();
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .max_concurrent_streams(if health_only { 1 } else { HTTP2_STREAMS })
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
            Served::Http2 {
                conn: builder.serve_connection(io, service),
            }
        }
    };
    tokio::pin!(served);
    let mut closing_since: Option<Instant> = None;
    let mut stop_seen = false;
    // Closes the connection as soon as it owes no answer: dropped at once
    // when no answer can be owed, else hyper's graceful close (at once
    // when idle between requests, after the answer in progress otherwise).
    macro_rules! close {
        () => {
            if state.owes_nothing() {
                return;
            }
            if closing_since.is_none() {
                served.as_mut().graceful_shutdown();
                closing_since = Some(Instant::now());
            }
        };
    }
    loop {
        // HTTP/1 ends a health-only connection after its one answer
        // (no keep-alive); HTTP/2 has no such switch.
        if health_only && state.served_any() && !state.busy() {
            close!();
        }
        let deadline = match closing_since {
            Some(since) => (!state.busy()).then_some((since + CLOSE_WAIT, None)),
            None => state
                .deadline(limits.header_timeout, limits.idle_timeout)
                .map(|(at, why)| (at, Some(why))),
        };
        let wake = deadline.map_or_else(far_future, |(at, _)| at);
        tokio::select! {
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            () = state.changed.notified() => {}
            () = state.evict.notified() => {
                if state.busy() {
                    // A request arrived since it was picked: it stays, and
                    // may be picked again once idle.
                    state.keep();
                } else {
                    close!();
                }
            }
            _ = stopping.wait_for(|s| *s), if !stop_seen => {
                stop_seen = true;
                close!();
            }
            () = tokio::time::sleep_until(wake), if deadline.is_some() => {
                if Instant::now() < wake {
                    continue;
                }
                match deadline.and_then(|(_, why)| why) {
                    None => {
                        tracing::debug!(%peer, "connection did not close in time; dropped");
                        return;
                    }
                    Some(Expiry::Header) => {
                        tracing::debug!(
                            %peer,
                            timeout_secs = limits.header_timeout.as_secs_f64(),
                            "no complete request head within the header timeout; closing"
                        );
                        close!();
                    }
                    Some(Expiry::Idle) => {
                        tracing::debug!(%peer, "idle connection closed");
                        close!();
                    }
                }
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Resolves on Ctrl-C or SIGTERM: the signal a process manager sends.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
