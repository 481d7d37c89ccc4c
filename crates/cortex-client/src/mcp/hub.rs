//! A session's server-to-client event stream: one task reads it and hands
//! replies (legacy HTTP+SSE transport) and `notifications/resources/updated`
//! out; what the server asks (`ping`) is answered. A stream of the
//! handshake eras is resumed with `Last-Event-ID`, backing off by the
//! client's stream reconnect policy (the server's `retry:` advice first,
//! see [`crate::stream::reconnect_policy`]); the HTTP+SSE transport's
//! stream cannot be (its session ends with it).

use std::sync::{Arc, Weak};
use std::time::Duration;

use cortex_proto::sse::{Decoder, Event};
use cortex_resilience::reconnect::Reconnect;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::session::{Hub, Session};
use super::transport;
use super::wire::{self, Operation};
use super::{McpDialect, McpInner};
use crate::engine::{Answer, ServiceState, lock};
use crate::error::McpError;
use crate::pool::PooledConn;

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
                            dispatch(&hub, &client, &service, event);
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
        let session = hub.session();
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
            match transport::get(
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
    let answer = crate::forward::as_client(transport::get(
        client,
        service,
        &session.endpoint,
        "events",
        session.prepare_get(),
        None,
    ))
    .await?;
    let Answer::Streaming { body, conn, .. } = answer else {
        return Err(transport::failure(
            &service.name,
            &Operation::Other("events"),
            &session.endpoint.url,
            "the server offers no event stream (GET), so resource updates cannot arrive".into(),
        ));
    };
    let hub = start(
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

/// Starts reading `body`; `resumable` streams reconnect with
/// `Last-Event-ID` (the SSE transport's cannot: its session ends).
pub(crate) fn start(
    client: &McpDialect,
    service: Arc<ServiceState>,
    session: &Arc<Session>,
    reader: Reader,
    resumable: bool,
) -> Arc<Hub> {
    let hub = Hub::new(session);
    // Weak: the hub lives in the client's state and must not keep it alive.
    let inner = Arc::downgrade(&client.inner);
    let task = tokio::spawn(run(inner, service, hub.clone(), reader, resumable));
    hub.set_task(task.abort_handle());
    hub
}

fn dispatch(hub: &Hub, client: &McpDialect, service: &ServiceState, event: &Event) {
    let Ok(message) = serde_json::from_str::<Value>(&event.data) else {
        return;
    };
    let method = message.get("method").and_then(Value::as_str);
    match (method, message.get("id").and_then(Value::as_u64)) {
        (None, Some(id)) => {
            if let Some(reply) = wire::parse_reply(message) {
                hub.deliver(id, reply);
            }
        }
        (Some("notifications/resources/updated"), _) => {
            let params = message.get("params").cloned().unwrap_or(Value::Null);
            hub.updated(event.id.clone().filter(|i| !i.is_empty()), params);
        }
        _ => {
            if let Some(session) = hub.session() {
                transport::on_server_message(&session, client, service, &message);
            }
        }
    }
}
