//! The HTTP answers of `/mcp`: JSON-RPC results and errors, `202`, `406`,
//! `Accept` matching, and the SSE streams fed from an outbox (a session's
//! stream, a call's response stream, a `subscriptions/listen` stream). The
//! stateful endpoint ([`super::http`]) and the stateless revision
//! ([`super::stateless`]) both answer through these.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cortex_proto::sse::{self, Event};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream};
use serde_json::Value;
use tokio::sync::watch;

use super::dispatch::Shared;
use super::jsonrpc::{self, INVALID_REQUEST, RpcError};
use super::session::Session;
use crate::outbox::Outbox;

/// A header as text, if present and readable.
pub(crate) fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// True unless `Accept` is present and rules `media` out.
pub(crate) fn accepts(headers: &HeaderMap, media: &str) -> bool {
    let mut present = false;
    let (kind, _) = media.split_once('/').unwrap_or((media, ""));
    for value in headers.get_all(header::ACCEPT).iter() {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            present = true;
            let mut parts = range.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let matches = name.eq_ignore_ascii_case(media)
                || name == "*/*"
                || name
                    .strip_suffix("/*")
                    .is_some_and(|range| range.eq_ignore_ascii_case(kind));
            if matches && q > 0.0 {
                return true;
            }
        }
    }
    !present
}

/// A JSON-RPC error with an HTTP status.
pub(crate) fn rpc_error(status: StatusCode, id: Option<&Value>, error: &RpcError) -> Response {
    let response = jsonrpc::Response::error(id.cloned(), error.clone());
    (status, axum::Json(response)).into_response()
}

/// A JSON-RPC result, 200.
pub(crate) fn rpc_result(id: &Value, result: Value) -> Response {
    axum::Json(jsonrpc::Response::result(id.clone(), result)).into_response()
}

/// 202 with no body: a notification or response was accepted.
pub(crate) fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

/// 406.
pub(crate) fn not_acceptable(what: &str) -> Response {
    rpc_error(
        StatusCode::NOT_ACCEPTABLE,
        None,
        &RpcError::new(INVALID_REQUEST, format!("Not Acceptable: {what}")),
    )
}

/// The event ids a stream sends.
pub(crate) enum EventIds {
    /// None: the stream cannot be resumed.
    None,
    /// The outbox's numbers (the session's stream).
    Plain,
    /// `c<key>-<n>`: a call's response stream, resumable by a `GET`.
    Call(u64),
}

impl EventIds {
    fn of(&self, position: u64) -> Option<String> {
        match self {
            Self::None => None,
            Self::Plain => Some(position.to_string()),
            Self::Call(key) => Some(format!("c{key}-{position}")),
        }
    }
}

/// What an SSE notification stream carries.
pub(crate) struct StreamPlan {
    /// Messages sent first (the listen acknowledgement).
    pub(crate) prelude: Vec<Value>,
    pub(crate) outbox: Arc<Outbox>,
    /// Entries after this id are sent.
    pub(crate) cursor: u64,
    /// The event ids sent.
    pub(crate) ids: EventIds,
    /// Send a priming event (an id and empty data) first, so the client can
    /// resume before the first message (SEP-1699).
    pub(crate) prime: bool,
    /// The session whose stream this is: the stream ends when the session
    /// ends and, when the flag is set, when a newer `GET` stream replaces it.
    pub(crate) session: Option<(Arc<Session>, bool)>,
    /// Dropped when the stream is.
    pub(crate) guard: Box<dyn Send>,
    /// End after sending a JSON-RPC response (a POST answered as a stream).
    pub(crate) ends_with_response: bool,
    /// End, after what is queued, once this turns true.
    pub(crate) end_early: Option<watch::Receiver<bool>>,
    /// Runs once the response was sent.
    pub(crate) on_answered: Option<Box<dyn FnOnce() + Send>>,
}

fn frame(message: &Value, id: Option<String>) -> Bytes {
    let mut event = Event::message(message.to_string());
    if let Some(id) = id {
        event = event.with_id(id);
    }
    Bytes::from(sse::encode(&event).unwrap_or_default())
}

/// An SSE response fed from an outbox: `retry:` advice, a priming event,
/// the prelude, the queued messages, keep-alive comments while idle; it
/// ends at shutdown, when the session ends (or another stream replaces
/// it), after a response it was waiting for, or when ended early.
pub(crate) fn notification_stream(mcp: &Shared, plan: StreamPlan) -> Response {
    let keep_alive = mcp.config.keep_alive;
    let retry_ms = mcp.config.stream_retry.as_millis() as u64;
    let mut first = format!("retry: {retry_ms}\n\n");
    if plan.prime
        && let Some(id) = plan.ids.of(plan.cursor)
    {
        // A priming event: an id (and no data) the client can resume from.
        first.push_str(&format!("id: {id}\ndata: \n\n"));
    }
    let mut pending: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
    pending.push_back(Bytes::from(first));
    pending.extend(plan.prelude.iter().map(|m| frame(m, None)));
    let mut stopping = mcp.stopping.clone();
    let end: BoxFuture<'static, ()> = match plan.session.clone() {
        Some((session, replaceable)) => {
            let mut generation = session.stream_generation.subscribe();
            let mine = *generation.borrow_and_update();
            let mut closed = session.closed.subscribe();
            Box::pin(async move {
                let replaced = async {
                    if replaceable {
                        let _ = generation.wait_for(|g| *g != mine).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    _ = stopping.wait_for(|s| *s) => {}
                    _ = closed.wait_for(|c| *c) => {}
                    _ = replaced => {}
                }
            })
        }
        None => Box::pin(async move {
            let _ = stopping.wait_for(|s| *s).await;
        }),
    };
    // Ends the stream early when the handler asks; a stream nobody can end
    // early waits on a sender it holds itself.
    let never = watch::Sender::new(false);
    let end_early = plan.end_early.unwrap_or_else(|| never.subscribe());
    struct Feed {
        pending: std::collections::VecDeque<Bytes>,
        outbox: Arc<Outbox>,
        changed: watch::Receiver<u64>,
        cursor: u64,
        ids: EventIds,
        end: BoxFuture<'static, ()>,
        end_early: watch::Receiver<bool>,
        never: watch::Sender<bool>,
        session: Option<Arc<Session>>,
        keep_alive: std::time::Duration,
        ends_with_response: bool,
        answered: bool,
        on_answered: Option<Box<dyn FnOnce() + Send>>,
        _guard: Box<dyn Send>,
    }
    let feed = Feed {
        pending,
        changed: plan.outbox.watch(),
        outbox: plan.outbox,
        cursor: plan.cursor,
        ids: plan.ids,
        end,
        end_early,
        never,
        session: plan.session.map(|(session, _)| session),
        keep_alive,
        ends_with_response: plan.ends_with_response,
        answered: false,
        on_answered: plan.on_answered,
        _guard: plan.guard,
    };
    let body: BoxStream<'static, Result<Bytes, std::io::Error>> =
        stream::unfold(feed, |mut feed| async move {
            loop {
                if let Some(bytes) = feed.pending.pop_front() {
                    return Some((Ok(bytes), feed));
                }
                if feed.answered {
                    if let Some(answered) = feed.on_answered.take() {
                        answered();
                    }
                    return None;
                }
                feed.changed.borrow_and_update();
                let entries = feed.outbox.take_after(feed.cursor);
                if !entries.is_empty() {
                    for entry in entries {
                        feed.cursor = entry.id;
                        if feed.ends_with_response && is_response(&entry.message) {
                            feed.answered = true;
                        }
                        let id = feed.ids.of(entry.id);
                        feed.pending.push_back(frame(&entry.message, id));
                    }
                    continue;
                }
                if *feed.end_early.borrow_and_update() {
                    return None;
                }
                tokio::select! {
                    changed = feed.changed.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                    early = feed.end_early.changed() => {
                        if early.is_err() {
                            // The call is over without ending its stream.
                            feed.end_early = feed.never.subscribe();
                        }
                    }
                    _ = tokio::time::sleep(feed.keep_alive) => {
                        if let Some(session) = &feed.session {
                            session.touch();
                        }
                        return Some((Ok(Bytes::from(sse::comment("keep-alive"))), feed));
                    }
                    _ = &mut feed.end => return None,
                }
            }
        })
        .boxed();
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// A message the client sent a request for: a response, not a request of
/// ours nor a notification.
fn is_response(message: &Value) -> bool {
    message.get("id").is_some() && message.get("method").is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn accept_ranges() {
        let mut headers = HeaderMap::new();
        assert!(accepts(&headers, "application/json"), "absent accepts all");
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        assert!(!accepts(&headers, "application/json"));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        assert!(accepts(&headers, "application/json"));
        assert!(accepts(&headers, "text/event-stream"));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/*;q=0"),
        );
        assert!(!accepts(&headers, "application/json"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(accepts(&headers, "text/event-stream"));
    }
}
