//! Resumable resource streams.
//!
//! A stream reads SSE from one connection. When the connection fails, goes
//! silent for longer than `stream_idle_timeout` (services send keep-alive
//! comments every 15 s, so silence means a dead peer), or the service sends
//! an `error` event, it reconnects with `Last-Event-ID` set to the last
//! event it delivered, so no event is delivered twice or lost. Reconnects
//! back off by [`reconnect_policy`], the one policy of every stream this
//! client resumes: from the service's `retry:` advice (or `initial_backoff`),
//! doubled on each failed reconnect, capped at `stream_max_backoff`, with
//! full jitter when `jitter` is on, and reset by every event (the seed's
//! `stream_with_reconnect`). After `stream_max_reconnects` failed reconnects
//! in a row the stream yields one [`McpError::ResourceStream`] and ends.
//!
//! A stream that the service ends normally (the HTTP body completes) is
//! complete, not an error. Dropping the stream drops its connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cortex_proto::sse::Decoder;
use cortex_resilience::backoff::Jitter;
use cortex_resilience::reconnect::{Reconnect, ReconnectPolicy};
use futures::StreamExt;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::api::{EventStream, StreamEvent};
use crate::config::ClientConfig;
use crate::engine::{Answer, Engine, Exchange, ServiceState};
use crate::error::McpError;
use crate::operation::Operation;
use crate::pool::PooledConn;

/// Growth of the stream reconnect backoff: the seed's `min(2^n, cap)`.
/// Fixed rather than `backoff_factor`, which paces the retries of calls.
const STREAM_BACKOFF_FACTOR: f64 = 2.0;

/// The seed's stream backoff (1 s doubling to 60 s), for a configuration
/// whose numbers the policy refuses: validation rules that out, but a stream
/// is no place to panic. Checked when the crate is built.
const SEED_RECONNECT: ReconnectPolicy = match ReconnectPolicy::try_new(
    Duration::from_secs(1),
    STREAM_BACKOFF_FACTOR,
    Duration::from_secs(60),
    Jitter::Full,
) {
    Ok(policy) => policy,
    Err(_) => panic!("the seed's stream backoff is a valid policy"),
};

/// How every stream of a service reconnects (resource streams here, and the
/// MCP event, listen and answer streams): from `initial_backoff` (or the
/// server's `retry:`), doubling, capped at `stream_max_backoff`, full jitter
/// per `jitter`, at most `stream_max_reconnects` failures in a row.
pub(crate) fn reconnect_policy(config: &ClientConfig) -> ReconnectPolicy {
    let max = config.stream_max_backoff;
    let jitter = if config.jitter {
        Jitter::Full
    } else {
        Jitter::None
    };
    // Validation allows a cap below `initial_backoff` (they are separate
    // options); the cap wins, as it always did.
    let initial = config.initial_backoff.min(max);
    let policy = match ReconnectPolicy::try_new(initial, STREAM_BACKOFF_FACTOR, max, jitter) {
        Ok(policy) => policy,
        Err(error) => {
            tracing::warn!(%error, "invalid stream reconnect backoff; using the seed's");
            SEED_RECONNECT
        }
    };
    policy.with_max_attempts(config.stream_max_reconnects)
}

/// Opens a stream of `uri` after `last_event_id`, with at most
/// `max_attempts` attempts.
pub(crate) async fn open(
    engine: &Engine,
    service: &ServiceState,
    uri: &str,
    last_event_id: Option<String>,
    max_attempts: u32,
) -> Result<(HeaderMap, Incoming, PooledConn), McpError> {
    let exchange = Exchange {
        accept: "text/event-stream",
        last_event_id,
        max_attempts,
        shared_stream: true,
        ..Exchange::get(
            Operation::Stream(uri),
            format!("/resource/{}", cortex_proto::path::encode_resource_uri(uri)),
        )
    };
    match engine.execute(service, &exchange).await? {
        (
            _,
            Answer::Streaming {
                headers,
                body,
                conn,
            },
        ) => Ok((headers, body, conn)),
        (state, _) => Err(McpError::ResourceStream {
            service: service.name.clone(),
            uri: uri.to_string(),
            reason: format!("{} answered without a stream", state.endpoint.url),
        }),
    }
}

struct Connected {
    body: Incoming,
    conn: PooledConn,
    decoder: Decoder,
}

struct State {
    engine: Arc<Engine>,
    service: Arc<ServiceState>,
    uri: String,
    connected: Option<Connected>,
    pending: VecDeque<StreamEvent>,
    /// Id of the last event handed to the consumer (or queued for it).
    last_id: Option<String>,
    /// The service's latest `retry:` advice.
    server_retry: Option<Duration>,
    /// Failed reconnects since the last event, and the wait before the next.
    reconnect: Reconnect,
    /// Why the last connection ended, for the final error.
    last_reason: String,
    done: bool,
}

/// Wraps an opened stream so that it resumes after faults.
pub(crate) fn resumable(
    engine: Arc<Engine>,
    service: Arc<ServiceState>,
    uri: String,
    last_id: Option<String>,
    body: Incoming,
    conn: PooledConn,
) -> EventStream {
    let reconnect = Reconnect::new(reconnect_policy(&service.config));
    let state = State {
        engine,
        service,
        uri,
        connected: Some(Connected {
            body,
            conn,
            decoder: Decoder::new(),
        }),
        pending: VecDeque::new(),
        last_id,
        server_retry: None,
        reconnect,
        last_reason: String::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    })
    .boxed()
}

enum Read {
    Chunk(Bytes),
    End,
    Lost(String),
}

impl State {
    async fn next(&mut self) -> Option<Result<StreamEvent, McpError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let Some(connected) = self.connected.as_mut() else {
                // Boxed, and only now: reconnecting (backoff, the engine's
                // whole attempt) is a large future, and held inline it would
                // be part of every stream's state for all the time the
                // stream only waits for its next bytes.
                if let Err(error) = Box::pin(self.reconnect()).await {
                    self.done = true;
                    return Some(Err(error));
                }
                continue;
            };
            let idle = self.service.config.stream_idle_timeout;
            let read = match tokio::time::timeout(idle, connected.body.frame()).await {
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Read::Chunk(data),
                    Err(_) => continue, // trailers
                },
                Ok(None) => Read::End,
                Ok(Some(Err(error))) => Read::Lost(format!("connection lost: {error}")),
                Err(_) => Read::Lost(format!(
                    "no data for {} (not even a keep-alive)",
                    cortex_resilience::human::HumanDuration(idle)
                )),
            };
            match read {
                Read::Chunk(data) => {
                    let decoded = connected.decoder.feed(&data);
                    if let Some(retry) = connected.decoder.retry() {
                        self.server_retry = Some(Duration::from_millis(retry));
                    }
                    match decoded {
                        Ok(events) => {
                            for event in events {
                                if event.event.as_deref() == Some("error") {
                                    // The service failed mid-stream; resume.
                                    self.last_reason =
                                        format!("the service sent an error event: {}", event.data);
                                    self.connected = None;
                                    break;
                                }
                                let event = StreamEvent::from_sse(event);
                                if event.id.is_some() {
                                    self.last_id = event.id.clone();
                                }
                                self.reconnect.reset();
                                self.pending.push_back(event);
                            }
                        }
                        Err(error) => {
                            self.last_reason = format!("bad SSE from the service: {error}");
                            self.connected = None;
                        }
                    }
                }
                Read::End => {
                    // The service ended the stream: complete. The connection
                    // goes back to the pool, unless it was dialled for a
                    // stream (then it is closed: see `pool::Purpose`).
                    if let Some(connected) = self.connected.take() {
                        connected.conn.release();
                    }
                    self.done = true;
                }
                Read::Lost(reason) => {
                    tracing::debug!(service = %self.service.name, uri = %self.uri, %reason, "stream interrupted; resuming");
                    self.last_reason = reason;
                    self.connected = None; // drops (closes) the connection
                }
            }
        }
    }

    /// Reconnects after `last_id`, backing off; an error once reconnects are
    /// exhausted or the resource is gone.
    async fn reconnect(&mut self) -> Result<(), McpError> {
        loop {
            if self.reconnect.wait(self.server_retry).await.is_none() {
                return Err(McpError::ResourceStream {
                    service: self.service.name.clone(),
                    uri: self.uri.clone(),
                    reason: format!(
                        "gave up after {} reconnect attempt(s); last: {}",
                        self.reconnect.attempts(),
                        self.last_reason
                    ),
                });
            }
            self.engine.metrics.retry(
                &self.service.name,
                &crate::metrics::resource_operation("stream", &self.uri),
            );
            match open(
                &self.engine,
                &self.service,
                &self.uri,
                self.last_id.clone(),
                1,
            )
            .await
            {
                Ok((_, body, conn)) => {
                    tracing::info!(service = %self.service.name, uri = %self.uri, last_id = ?self.last_id, "stream resumed");
                    self.connected = Some(Connected {
                        body,
                        conn,
                        decoder: Decoder::new(),
                    });
                    return Ok(());
                }
                Err(error) if error.is_retryable() => {
                    self.last_reason = error.to_string();
                }
                Err(error) => return Err(error),
            }
        }
    }
}
