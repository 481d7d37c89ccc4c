//! Resource streams: `stream_resource` subscribes, then yields one
//! [`StreamEvent`] per `notifications/resources/updated` for its URI. The
//! event's `data` is the resource read again (what a Cortex stream
//! delivers: the new content); its `id` is the SSE event id when the server
//! gave one; its `event` is `notifications/resources/updated`. When the read
//! fails, `data` is the notification's params instead.
//!
//! - Handshake eras: `resources/subscribe` on the session, whose GET event
//!   stream (one per session, shared by every subscription: see [`super::hub`])
//!   carries the updates. If the server forgets the session, or the stream
//!   cannot be resumed, the resource stream ends with an error. The last
//!   stream of a URI to be dropped unsubscribes (see [`Subscription`]).
//! - Stateless revision: a `subscriptions/listen` request per stream; its
//!   answer is the stream. Not resumable by design: when cut it is asked
//!   again (updates in the gap are lost, as the revision says), after the
//!   client's stream reconnect backoff, the server's `retry:` advice first
//!   (see [`crate::stream::reconnect_policy`]).
//!
//! Updates sent before the stream is open are not delivered; each event
//! reads the resource anew, so nothing is stale.

use std::sync::Arc;
use std::time::Duration;

use cortex_proto::sse::Decoder;
use cortex_resilience::reconnect::Reconnect;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::McpDialect;
use super::hub::{Reader, hub_of};
use super::rpc;
use super::session::HubEvent;
use super::session::{Era, Session};
use super::transport;
use super::wire::Call;
use super::wire::{self, Operation};
use crate::api::{EventStream, StreamEvent};
use crate::engine::{Answer, ServiceState};
use crate::error::McpError;

enum Source {
    Hub {
        events: broadcast::Receiver<HubEvent>,
        /// Kept for its drop: the stream's hold on the subscription.
        _held: Subscription,
    },
    Listen(Option<Box<Reader>>, Arc<Session>),
}

/// A `resources/subscribe` held by one stream. Dropped with the stream: the
/// last stream of a URI sends `resources/unsubscribe`, from a task (a drop
/// cannot wait), as the client and on the session it subscribed on (never
/// opening a new one for it).
struct Subscription {
    client: McpDialect,
    service: Arc<ServiceState>,
    session: Arc<Session>,
    uri: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.session.release(&self.uri) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime left: the session ends with the client
        };
        let (client, service, session, uri) = (
            self.client.clone(),
            self.service.clone(),
            self.session.clone(),
            std::mem::take(&mut self.uri),
        );
        runtime.spawn(crate::forward::as_client(async move {
            unsubscribe(&client, &service, &session, &uri).await;
        }));
    }
}

/// Drops the server's subscription to `uri`; if a new stream of it started
/// meanwhile, subscribes again so that stream is not left deaf.
async fn unsubscribe(client: &McpDialect, service: &ServiceState, session: &Session, uri: &str) {
    let update = |method: &'static str| {
        let id = client.inner.mcp.next_id();
        let prepared = session.prepare(method, &json!({"uri": uri}), Some(id), &[]);
        async move {
            let op = crate::operation::Operation::Read(uri);
            let outcome = transport::post(client, service, &session.endpoint, op, prepared).await;
            if let Err(error) = &outcome {
                tracing::debug!(%error, uri, method, "could not update the subscription");
            }
            outcome.is_ok()
        }
    };
    if update("resources/unsubscribe").await && session.is_held(uri) {
        update("resources/subscribe").await;
    }
}

struct Streaming {
    client: McpDialect,
    service: Arc<ServiceState>,
    uri: String,
    source: Source,
    /// Listens asked again since the last update, and the wait before the next.
    reconnect: Reconnect,
    /// The server's latest `retry:` advice on a listen stream.
    server_retry: Option<Duration>,
    done: bool,
}

/// Subscribes to `uri` and streams its updates.
pub(crate) async fn stream(
    client: &McpDialect,
    service: Arc<ServiceState>,
    uri: String,
) -> Result<EventStream, McpError> {
    let session = match client
        .inner
        .mcp
        .sessions_of(&service.name)
        .into_iter()
        .next()
    {
        Some(session) => session,
        None => {
            rpc::call(
                client,
                &service,
                &Call {
                    method: "ping",
                    params: Value::Null,
                    op: Operation::Other("ping"),
                    idempotent: true,
                    progress: None,
                    headers: Vec::new(),
                },
            )
            .await?
            .0
        }
    };
    let source = if session.era == Era::Modern {
        Source::Listen(
            Some(listen(client, &service, &session, &uri).await?),
            session,
        )
    } else {
        if session.capabilities.pointer("/resources/subscribe") != Some(&Value::Bool(true)) {
            return Err(McpError::ResourceStream {
                service: service.name.clone(),
                uri,
                reason: "the server does not offer resources/subscribe".into(),
            });
        }
        let call = Call {
            method: "resources/subscribe",
            params: json!({"uri": uri}),
            op: Operation::Read(&uri),
            idempotent: true,
            progress: None,
            headers: Vec::new(),
        };
        let (session, _) = rpc::call(client, &service, &call).await?;
        session.hold(&uri);
        let subscription = Subscription {
            client: client.clone(),
            service: service.clone(),
            session: session.clone(),
            uri: uri.clone(),
        };
        Source::Hub {
            events: hub_of(client, &service, &session).await?.subscribe(),
            _held: subscription,
        }
    };
    let state = Streaming {
        client: client.clone(),
        reconnect: Reconnect::new(crate::stream::reconnect_policy(&service.config)),
        service,
        uri,
        source,
        server_retry: None,
        done: false,
    };
    Ok(Box::pin(futures::stream::unfold(
        state,
        |mut state| async move {
            if state.done {
                return None;
            }
            let item = state.next().await;
            state.done = item.is_err();
            Some((item, state))
        },
    )))
}

impl Streaming {
    async fn next(&mut self) -> Result<StreamEvent, McpError> {
        let (id, params) = self.next_update().await?;
        let data = match super::read(&self.client, &self.service, &self.uri).await {
            Ok(resource) => resource.content,
            Err(error) => {
                tracing::debug!(%error, uri = %self.uri, "re-reading an updated resource failed; passing the notification on");
                params
            }
        };
        Ok(StreamEvent {
            id,
            event: "notifications/resources/updated".into(),
            data,
        })
    }

    async fn next_update(&mut self) -> Result<(Option<String>, Value), McpError> {
        let uri = self.uri.clone();
        let matches =
            |params: &Value| params.get("uri").and_then(Value::as_str) == Some(uri.as_str());
        let gone = |reason: String| McpError::ResourceStream {
            service: self.service.name.clone(),
            uri: self.uri.clone(),
            reason,
        };
        loop {
            match &mut self.source {
                Source::Hub { events, .. } => match events.recv().await {
                    Ok(HubEvent::Updated { id, params }) if matches(&params) => {
                        return Ok((id, params));
                    }
                    Ok(HubEvent::Updated { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        continue;
                    }
                    Ok(HubEvent::Closed(reason)) => return Err(gone(reason)),
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(gone("the session ended".into()));
                    }
                },
                Source::Listen(reader, session) => {
                    if let Some(open) = reader.as_mut() {
                        let idle = self.service.config.stream_idle_timeout;
                        match tokio::time::timeout(idle, open.body.frame()).await {
                            Ok(Some(Ok(frame))) => {
                                let Ok(data) = frame.into_data() else {
                                    continue;
                                };
                                let events = open.decoder.feed(&data).unwrap_or_default();
                                if let Some(retry) = open.decoder.retry() {
                                    // Kept past this stream: it paces the next listen.
                                    self.server_retry = Some(Duration::from_millis(retry));
                                }
                                for event in events {
                                    let Ok(message) = serde_json::from_str::<Value>(&event.data)
                                    else {
                                        continue;
                                    };
                                    let params =
                                        message.get("params").cloned().unwrap_or(Value::Null);
                                    if message.get("method").and_then(Value::as_str)
                                        == Some("notifications/resources/updated")
                                        && matches(&params)
                                    {
                                        self.reconnect.reset();
                                        return Ok((event.id.filter(|i| !i.is_empty()), params));
                                    }
                                }
                                continue;
                            }
                            _ => *reader = None, // cut, ended or silent: listen again
                        }
                    }
                    if self.reconnect.wait(self.server_retry).await.is_none() {
                        return Err(gone(format!(
                            "gave up listening after {} attempt(s)",
                            self.reconnect.attempts()
                        )));
                    }
                    let session = session.clone();
                    match listen(&self.client, &self.service, &session, &uri).await {
                        Ok(open) => *reader = Some(open),
                        Err(error) if error.is_retryable() => continue,
                        Err(error) => return Err(error),
                    }
                }
            }
        }
    }
}

/// A `subscriptions/listen` request for `uri`: its answer is the stream.
async fn listen(
    client: &McpDialect,
    service: &ServiceState,
    session: &Session,
    uri: &str,
) -> Result<Box<Reader>, McpError> {
    let id = client.inner.mcp.next_id();
    let params = json!({"notifications": {"resourceSubscriptions": [uri]}});
    let prepared = session.prepare("subscriptions/listen", &params, Some(id), &[]);
    match transport::post(
        client,
        service,
        &session.endpoint,
        crate::operation::Operation::Read(uri),
        prepared,
    )
    .await?
    {
        Answer::Streaming { body, conn, .. } => Ok(Box::new(Reader {
            body,
            _conn: conn,
            decoder: Decoder::new(),
        })),
        other => {
            let call = Call {
                method: "subscriptions/listen",
                params,
                op: Operation::Read(uri),
                idempotent: true,
                progress: None,
                headers: Vec::new(),
            };
            let reply =
                transport::read_answer(client, service, session, &call, id, other, Instant::now())
                    .await?;
            Err(wire::error(&service.name, &call.op, reply))
        }
    }
}
