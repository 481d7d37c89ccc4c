//! A bounded, numbered queue of server→client notifications.
//!
//! Subscription tasks push; an SSE stream reads everything after a cursor and
//! waits on [`Outbox::watch`] for more. The queue keeps at most `capacity`
//! notifications: when full, the oldest is dropped (with a log line), so a
//! reader that never comes costs bounded memory. An update for a URI that
//! already has one waiting unread is not queued again: `resources/updated`
//! says "read it again", and one unread signal says that already. So a burst
//! of events (a backlog replayed at subscribe time, a fast writer) costs one
//! entry per subscribed URI, not one per event.
//!
//! Delivered notifications stay in the queue (until pushed out) so a GET
//! stream that reconnects with `Last-Event-ID` gets exactly the ones after it.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::Value;
use tokio::sync::watch;

/// One queued notification.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Its SSE event id: 1, 2, 3, … within the queue.
    pub(crate) id: u64,
    /// The JSON-RPC notification.
    pub(crate) message: Value,
    coalesce: Option<String>,
}

#[derive(Debug)]
struct State {
    entries: VecDeque<Entry>,
    next_id: u64,
    /// The highest id a reader has taken.
    delivered: u64,
    dropped: u64,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    latest: watch::Sender<u64>,
    capacity: usize,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                entries: VecDeque::new(),
                next_id: 1,
                delivered: 0,
                dropped: 0,
            }),
            latest: watch::Sender::new(0),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `message`, unless one with the same `coalesce` key is queued
    /// and not yet delivered. Returns whether it was queued.
    pub(crate) fn push(&self, message: Value, coalesce: Option<String>) -> bool {
        let id = {
            let mut state = self.lock();
            let delivered = state.delivered;
            if let Some(key) = &coalesce {
                let waiting = state
                    .entries
                    .iter()
                    .any(|e| e.id > delivered && e.coalesce.as_ref() == Some(key));
                if waiting {
                    return false;
                }
            }
            let full = state.entries.len() >= self.capacity;
            if let Some(oldest) = full.then(|| state.entries.pop_front()).flatten() {
                state.dropped += 1;
                if oldest.id > delivered {
                    tracing::warn!(
                        id = oldest.id,
                        dropped = state.dropped,
                        capacity = self.capacity,
                        "MCP notification buffer full: dropped the oldest undelivered notification"
                    );
                } else {
                    tracing::debug!(
                        id = oldest.id,
                        "MCP notification buffer full: forgot the oldest delivered notification"
                    );
                }
            }
            let id = state.next_id;
            state.next_id += 1;
            state.entries.push_back(Entry {
                id,
                message,
                coalesce,
            });
            id
        };
        self.latest.send_replace(id);
        true
    }

    /// The notifications after `cursor`, which then count as delivered.
    pub(crate) fn take_after(&self, cursor: u64) -> Vec<Entry> {
        let mut state = self.lock();
        let out: Vec<Entry> = state
            .entries
            .iter()
            .filter(|e| e.id > cursor)
            .cloned()
            .collect();
        if let Some(last) = out.last() {
            state.delivered = state.delivered.max(last.id);
        }
        out
    }

    /// Where a new reader that names no `Last-Event-ID` starts: after what
    /// earlier readers took.
    pub(crate) fn delivered(&self) -> u64 {
        self.lock().delivered
    }

    /// Changes whenever a notification is queued.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Notifications queued and not yet taken.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        let state = self.lock();
        state
            .entries
            .iter()
            .filter(|e| e.id > state.delivered)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn coalesces_unread_updates_per_key() {
        let outbox = Outbox::new(8);
        assert!(outbox.push(json!(1), Some("a".into())));
        assert!(!outbox.push(json!(2), Some("a".into())));
        assert!(outbox.push(json!(3), Some("b".into())));
        assert_eq!(outbox.pending(), 2);
        let taken = outbox.take_after(0);
        assert_eq!(taken.len(), 2);
        // Once read, the next update for `a` is queued again.
        assert!(outbox.push(json!(4), Some("a".into())));
        assert_eq!(outbox.take_after(outbox.delivered()).len(), 1);
    }

    #[test]
    fn drops_the_oldest_when_full_and_replays_after_a_cursor() {
        let outbox = Outbox::new(3);
        for i in 0..5 {
            outbox.push(json!(i), None);
        }
        let ids: Vec<u64> = outbox.take_after(0).iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![3, 4, 5]);
        let ids: Vec<u64> = outbox.take_after(3).iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![4, 5]);
        assert_eq!(outbox.pending(), 0);
    }
}
