//! A session's server-to-client event stream: one task reads it and hands
//! replies (legacy HTTP+SSE transport) and `notifications/resources/updated`
//! out; what the server asks (`ping`) is answered. A stream of the
//! handshake eras is resumed with `Last-Event-ID`, backing off by the
//! client's stream reconnect policy (the server's `retry:` advice first,
//! see [`crate::stream::reconnect_policy`]); the HTTP+SSE transport's
//! stream cannot be (its session ends with it). Also opening a session on
//! that transport (2024-11-05).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cortex_proto::sse::{Decoder, Event};
use cortex_resilience::reconnect::Reconnect;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use super::rpc;
use super::session::{self, Era, INITIALIZE_ID, Session};
use super::wire::{self, HANDSHAKE_VERSIONS, Operation, Reply};
use super::{McpDialect, McpInner};
use crate::engine::{Answer, Prepared, ServiceState, lock};
use crate::error::McpError;
use crate::pool::PooledConn;
use cortex_discovery::Endpoint;

/// What a hub hands out besides replies.
#[derive(Debug, Clone)]
pub(crate) enum HubEvent {
    Updated { id: Option<String>, params: Value },
    Closed(String),
}

/// A session's server-to-client event stream, read by one task.
pub(crate) struct Hub {
    /// Replies awaited (legacy SSE transport): `None` until it arrives.
    replies: Mutex<HashMap<u64, Option<Reply>>>,
    arrived: Notify,
    events: broadcast::Sender<HubEvent>,
    closed: AtomicBool,
    /// The session it serves (weak: the session owns the hub).
    session: Mutex<Weak<Session>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Hub {
    /// Starts reading `body`; `resumable` streams reconnect with
    /// `Last-Event-ID` (the SSE transport's cannot: its session ends).
    fn start(
        client: &McpDialect,
        service: Arc<ServiceState>,
        session: &Arc<Session>,
        reader: Reader,
        resumable: bool,
    ) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            replies: Mutex::new(HashMap::new()),
            arrived: Notify::new(),
            events: broadcast::channel(256).0,
            closed: AtomicBool::new(false),
            session: Mutex::new(Arc::downgrade(session)),
            task: Mutex::new(None),
        });
        // Weak: the hub lives in the client's state and must not keep it alive.
        let inner = Arc::downgrade(&client.inner);
        let task = tokio::spawn(run(inner, service, hub.clone(), reader, resumable));
        *lock(&hub.task) = Some(task.abort_handle());
        hub
    }

    pub(crate) fn expect(&self, id: u64) {
        lock(&self.replies).entry(id).or_insert(None);
    }

    pub(crate) async fn reply(&self, id: u64, deadline: Instant) -> Option<Reply> {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut replies = lock(&self.replies);
                if matches!(replies.get(&id), Some(Some(_))) || self.closed.load(Ordering::Acquire)
                {
                    return replies.remove(&id).flatten();
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                lock(&self.replies).remove(&id);
                return None;
            }
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.events.subscribe()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn stop(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        self.close("the client closed the session".into());
    }

    fn close(&self, reason: String) {
        self.closed.store(true, Ordering::Release);
        self.arrived.notify_waiters();
        let _ = self.events.send(HubEvent::Closed(reason));
    }

    fn dispatch(&self, client: &McpDialect, service: &ServiceState, event: &Event) {
        let Ok(message) = serde_json::from_str::<Value>(&event.data) else {
            return;
        };
        let method = message.get("method").and_then(Value::as_str);
        match (method, message.get("id").and_then(Value::as_u64)) {
            (None, Some(id)) => {
                if let Some(reply) = wire::parse_reply(message) {
                    lock(&self.replies).insert(id, Some(reply));
                    self.arrived.notify_waiters();
                }
            }
            (Some("notifications/resources/updated"), _) => {
                let params = message.get("params").cloned().unwrap_or(Value::Null);
                let _ = self.events.send(HubEvent::Updated {
                    id: event.id.clone().filter(|i| !i.is_empty()),
                    params,
                });
            }
            _ => {
                if let Some(session) = lock(&self.session).upgrade() {
                    session.on_server_message(client, service, &message);
                }
            }
        }
    }
}

/// An open SSE body and the connection it holds.
pub(crate) struct Reader {
    pub(crate) body: Incoming,
    pub(crate) _conn: PooledConn,
    pub(crate) decoder: Decoder,
}

async fn run(
    inner: Weak<McpInner>,
    service: Arc<ServiceState>,
    hub: Arc<Hub>,
    mut reader: Reader,
    resumable: bool,
) {
    let mut reconnect = Reconnect::new(crate::stream::reconnect_policy(&service.config));
    let idle = service.config.stream_idle_timeout;
    loop {
        let reason = match tokio::time::timeout(idle, reader.body.frame()).await {
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let Some(client) = inner.upgrade().map(|inner| McpDialect { inner }) else {
                    return;
                };
                match reader.decoder.feed(&data) {
                    Ok(events) => {
                        for event in &events {
                            reconnect.reset();
                            hub.dispatch(&client, &service, event);
                        }
                        continue;
                    }
                    Err(error) => format!("bad SSE: {error}"),
                }
            }
            Ok(Some(Err(error))) => format!("connection lost: {error}"),
            Ok(None) => "the server ended the stream".into(),
            Err(_) => format!(
                "no data for {}",
                cortex_resilience::human::HumanDuration(idle)
            ),
        };
        let session = lock(&hub.session).upgrade();
        let (Some(client), Some(session), true) = (
            inner.upgrade().map(|inner| McpDialect { inner }),
            session,
            resumable,
        ) else {
            hub.close(reason);
            return;
        };
        // Resume after the last event, the server's `retry:` first.
        let last = reader
            .decoder
            .last_event_id()
            .filter(|id| !id.is_empty())
            .map(str::to_string);
        let hint = reader.decoder.retry().map(Duration::from_millis);
        let mut resumed = None;
        while resumed.is_none() && reconnect.wait(hint).await.is_some() {
            match rpc::get(
                &client,
                &service,
                &session.endpoint,
                "events",
                session.prepare_get(),
                last.clone(),
            )
            .await
            {
                Ok(Answer::Streaming { body, conn, .. }) => resumed = Some((body, conn)),
                Ok(_) => break, // 404 (session gone) or 405: nothing to resume
                Err(error) if error.is_retryable() => {
                    tracing::debug!(%error, "event stream not resumed yet")
                }
                Err(_) => break,
            }
        }
        match resumed {
            Some((body, conn)) => {
                let decoder = std::mem::take(&mut reader.decoder);
                reader = Reader {
                    body,
                    _conn: conn,
                    decoder,
                };
            }
            None => {
                hub.close(format!("{reason}; the event stream could not be resumed"));
                return;
            }
        }
    }
}

/// The session's GET event stream, opened on first use.
pub(crate) async fn hub_of(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    session: &Arc<Session>,
) -> Result<Arc<Hub>, McpError> {
    let _gate = session.hub_gate.lock().await;
    if let Some(hub) = lock(&session.hub).clone().filter(|h| !h.is_closed()) {
        return Ok(hub);
    }
    // Shared by every subscriber of the session: opened as the client.
    let answer = crate::forward::as_client(rpc::get(
        client,
        service,
        &session.endpoint,
        "events",
        session.prepare_get(),
        None,
    ))
    .await?;
    let Answer::Streaming { body, conn, .. } = answer else {
        return Err(rpc::failure(
            &service.name,
            &Operation::Other("events"),
            &session.endpoint.url,
            "the server offers no event stream (GET), so resource updates cannot arrive".into(),
        ));
    };
    let hub = Hub::start(
        client,
        service.clone(),
        session,
        Reader {
            body,
            _conn: conn,
            decoder: Decoder::new(),
        },
        true,
    );
    *lock(&session.hub) = Some(hub.clone());
    Ok(hub)
}

/// Opens a session on the HTTP+SSE transport (2024-11-05): GET the
/// endpoint, wait for its `endpoint` event, then the handshake over it.
pub(crate) async fn open_sse(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    endpoint: &Endpoint,
) -> Result<Arc<Session>, McpError> {
    let fail = |message: String| {
        rpc::failure(
            &service.name,
            &Operation::Other("initialize"),
            &endpoint.url,
            message,
        )
    };
    let answer = rpc::get(client, service, endpoint, "sse", Prepared::default(), None).await?;
    let Answer::Streaming { mut body, conn, .. } = answer else {
        return Err(fail(
            "the endpoint speaks neither Streamable HTTP nor the HTTP+SSE transport".into(),
        ));
    };
    let deadline = Instant::now() + service.config.request_timeout;
    let mut decoder = Decoder::new();
    let post_path = loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| fail("no `endpoint` event".into()))?;
        let Some(Ok(frame)) = frame else {
            return Err(fail(
                "the SSE stream ended before its `endpoint` event".into(),
            ));
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let events = decoder
            .feed(&data)
            .map_err(|e| fail(format!("bad SSE: {e}")))?;
        if let Some(event) = events
            .iter()
            .find(|e| e.event.as_deref() == Some("endpoint"))
        {
            break relative(&event.data);
        }
    };
    let session = Arc::new(Session::new(
        endpoint.clone(),
        Era::Sse {
            version: HANDSHAKE_VERSIONS[0].into(),
            post_path: post_path.clone(),
        },
        &Value::Null,
    ));
    let hub = Hub::start(
        client,
        service.clone(),
        &session,
        Reader {
            body,
            _conn: conn,
            decoder,
        },
        false,
    );
    *lock(&session.hub) = Some(hub.clone());
    let answer = session::initialize(client, service, &session).await?;
    let reply = rpc::read_answer(
        client,
        service,
        &session,
        &session::initialize_call(client.capabilities()),
        INITIALIZE_ID,
        answer,
        deadline,
    )
    .await?;
    let Reply::Result(result) = reply else {
        hub.stop();
        return Err(wire::error(
            &service.name,
            &Operation::Other("initialize"),
            reply,
        ));
    };
    let agreed = Arc::new(session::agreed(
        &service.name,
        endpoint,
        &result,
        |version| Era::Sse { version, post_path },
    )?);
    *lock(&agreed.hub) = Some(hub.clone());
    *lock(&hub.session) = Arc::downgrade(&agreed);
    rpc::notify(
        client,
        service,
        &agreed,
        "notifications/initialized",
        json!({}),
    )
    .await?;
    Ok(agreed)
}

/// The path (and query) of the URL an `endpoint` event names.
fn relative(url: &str) -> String {
    let url = url.trim();
    match url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    {
        Some(rest) => rest
            .find('/')
            .map_or_else(|| "/".to_string(), |i| rest[i..].to_string()),
        None => url.to_string(),
    }
}
