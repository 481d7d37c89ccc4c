//! A user's output stream: their log from a position, then live, each event
//! once and in order, with `status` events when a dependency goes down or
//! comes back.
//!
//! # Exactly once, in order
//! The stream subscribes to the live feed before it reads the log, so an
//! event committed in between is in one or the other; it sends only the
//! event whose id is one past the last it sent. A live event further ahead
//! (the feed dropped some: a lagging reader) sends it back to the log,
//! which has everything. Ids are per user and dense, so "one past" is
//! exact.
//!
//! `status` events carry no id: they describe now, not the log, and a
//! resumed stream starts with the current state instead of replaying old
//! ones.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use cortex_proto::sse;
use cortex_service::ServiceError;
use futures::stream::BoxStream;
use tokio::sync::{broadcast, watch};

use crate::deps::DependencyState;
use crate::outbox::{Event, MAX_EVENTS_PER_READ, Outbox};

/// A user's output as server-sent events (what the kit's streams take).
pub type Output = BoxStream<'static, Result<sse::Event, ServiceError>>;

/// Opens `user_id`'s output after `after` (see the module documentation).
pub(crate) fn open(
    outbox: Outbox,
    deps: watch::Receiver<Vec<DependencyState>>,
    user_id: &str,
    after: i64,
    slot: StreamSlot,
) -> Output {
    let live = outbox.subscribe();
    let mut deps = deps;
    // The current state first: what the reader needs to know now.
    let snapshot = deps.borrow_and_update().clone();
    let pending_status = snapshot
        .iter()
        .filter(|s| s.up.is_some())
        .map(status_event)
        .collect();
    let state = State {
        outbox,
        user_id: user_id.to_string(),
        last: after.max(0),
        backlog: VecDeque::new(),
        caught_up: false,
        live,
        deps,
        seen: snapshot,
        pending_status,
        _slot: slot,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    }))
}

struct State {
    outbox: Outbox,
    user_id: String,
    /// The id of the last event sent.
    last: i64,
    backlog: VecDeque<Event>,
    /// Whether the log has nothing after `last` that the feed will not bring.
    caught_up: bool,
    live: broadcast::Receiver<Event>,
    deps: watch::Receiver<Vec<DependencyState>>,
    /// The dependency states last told.
    seen: Vec<DependencyState>,
    pending_status: VecDeque<sse::Event>,
    _slot: StreamSlot,
}

impl State {
    async fn next(&mut self) -> Option<Result<sse::Event, ServiceError>> {
        loop {
            if let Some(status) = self.pending_status.pop_front() {
                return Some(Ok(status));
            }
            if let Some(event) = self.backlog.pop_front() {
                if event.event_id == self.last + 1 {
                    self.last = event.event_id;
                    return Some(Ok(log_event(&event)));
                }
                continue;
            }
            if !self.caught_up {
                match self
                    .outbox
                    .events_after(&self.user_id, self.last, MAX_EVENTS_PER_READ)
                    .await
                {
                    Ok(events) if events.is_empty() => self.caught_up = true,
                    Ok(events) => self.backlog.extend(events),
                    Err(error) => {
                        tracing::error!(%error, "the output log cannot be read");
                        return Some(Err(ServiceError::internal(
                            "core cannot read the output log; resume later",
                        )));
                    }
                }
                continue;
            }
            tokio::select! {
                received = self.live.recv() => match received {
                    Ok(event) if event.user_id != self.user_id => {}
                    Ok(event) if event.event_id <= self.last => {}
                    Ok(event) if event.event_id == self.last + 1 => {
                        self.last = event.event_id;
                        return Some(Ok(log_event(&event)));
                    }
                    // A gap or a lag: the log has what the feed dropped.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.caught_up = false,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                changed = self.deps.changed() => {
                    if changed.is_err() {
                        // Core is stopping: the stream ends with it.
                        return None;
                    }
                    let now = self.deps.borrow_and_update().clone();
                    for state in &now {
                        let before = self.seen.iter().find(|s| s.service == state.service);
                        if state.up.is_some() && before.map(|b| b.up) != Some(state.up) {
                            self.pending_status.push_back(status_event(state));
                        }
                    }
                    self.seen = now;
                }
            }
        }
    }
}

/// A log event on the wire: its kind as the event type, its per-user id.
fn log_event(event: &Event) -> sse::Event {
    sse::Event::message(event.data.to_string())
        .with_event(event.kind.clone())
        .with_id(event.event_id.to_string())
}

fn status_event(state: &DependencyState) -> sse::Event {
    let up = state.up.unwrap_or(false);
    sse::Event::message(
        serde_json::json!({
            "service": state.service,
            "state": if up { "up" } else { "down" },
            "detail": state.detail,
        })
        .to_string(),
    )
    .with_event("status")
}

/// The caps on open output streams: in all, and per user (one user must not
/// hold every slot).
#[derive(Clone)]
pub(crate) struct StreamSlots {
    inner: Arc<Slots>,
}

struct Slots {
    max: usize,
    per_user: usize,
    open: Mutex<Open>,
}

/// Streams open: in all, and per user with any open.
#[derive(Default)]
struct Open {
    total: usize,
    per_user: HashMap<String, usize>,
}

impl StreamSlots {
    pub(crate) fn new(max: usize, per_user: usize) -> Self {
        Self {
            inner: Arc::new(Slots {
                max,
                per_user,
                open: Mutex::new(Open::default()),
            }),
        }
    }

    /// A slot for a stream of `user_id`, held until dropped.
    pub(crate) fn take(&self, user_id: &str) -> Result<StreamSlot, ServiceError> {
        let mut open = self
            .inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let total = open.total;
        if total >= self.inner.max {
            return Err(ServiceError::unavailable(format!(
                "core has {total} output streams open (its limit); retry later"
            )));
        }
        let mine = open.per_user.entry(user_id.to_string()).or_insert(0);
        if *mine >= self.inner.per_user {
            return Err(ServiceError::unavailable(format!(
                "this user already has {} output streams open (the limit); close one first",
                self.inner.per_user
            )));
        }
        *mine += 1;
        open.total += 1;
        Ok(StreamSlot {
            slots: self.inner.clone(),
            user_id: user_id.to_string(),
        })
    }
}

/// One open stream's place under the caps.
pub(crate) struct StreamSlot {
    slots: Arc<Slots>,
    user_id: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_user.get_mut(&self.user_id) {
            *count -= 1;
            if *count == 0 {
                open.per_user.remove(&self.user_id);
            }
        }
    }
}
