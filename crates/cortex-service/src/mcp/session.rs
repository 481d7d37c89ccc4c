//! Sessions of the session-based revisions: created by `initialize`, ended
//! by `DELETE`, by idling past the TTL, or by shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::outbox::Outbox;

/// A negotiated session-based revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Revision {
    V2025_03_26,
    V2025_06_18,
    V2025_11_25,
}

impl Revision {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "2025-03-26" => Some(Self::V2025_03_26),
            "2025-06-18" => Some(Self::V2025_06_18),
            "2025-11-25" => Some(Self::V2025_11_25),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::V2025_03_26 => "2025-03-26",
            Self::V2025_06_18 => "2025-06-18",
            Self::V2025_11_25 => "2025-11-25",
        }
    }

    /// JSON-RPC batches were allowed in 2025-03-26 and removed in 2025-06-18.
    pub(crate) fn allows_batches(self) -> bool {
        self == Self::V2025_03_26
    }

    /// `structuredContent` arrived in 2025-06-18.
    pub(crate) fn has_structured_content(self) -> bool {
        self >= Self::V2025_06_18
    }

    /// SSE priming events (an id with empty data first, SEP-1699) arrived in
    /// 2025-11-25; older clients may not expect an event without JSON.
    pub(crate) fn primes_streams(self) -> bool {
        self >= Self::V2025_11_25
    }
}

/// One session.
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) revision: Revision,
    last_used: Mutex<Instant>,
    /// Notifications for the session's GET stream.
    pub(crate) outbox: Arc<Outbox>,
    subscriptions: Mutex<HashMap<String, AbortHandle>>,
    /// Bumped by each GET: the stream that holds an older number ends, so
    /// one stream at a time carries the session's notifications.
    pub(crate) stream_generation: watch::Sender<u64>,
    /// True once the session ended: its stream ends.
    pub(crate) closed: watch::Sender<bool>,
    open_streams: AtomicUsize,
}

impl Session {
    fn new(revision: Revision, buffer: usize) -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            revision,
            last_used: Mutex::new(Instant::now()),
            outbox: Arc::new(Outbox::new(buffer)),
            subscriptions: Mutex::new(HashMap::new()),
            stream_generation: watch::Sender::new(0),
            closed: watch::Sender::new(false),
            open_streams: AtomicUsize::new(0),
        }
    }

    /// Marks the session as used now.
    pub(crate) fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    fn expired(&self, ttl: Duration) -> bool {
        self.open_streams.load(Ordering::Relaxed) == 0 && self.idle_for() > ttl
    }

    /// Counts an open GET stream until the guard drops; a session with an
    /// open stream does not expire.
    pub(crate) fn stream_guard(self: &Arc<Self>) -> StreamGuard {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    fn subscriptions(&self) -> std::sync::MutexGuard<'_, HashMap<String, AbortHandle>> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when `uri` has a running subscription.
    pub(crate) fn is_subscribed(&self, uri: &str) -> bool {
        self.subscriptions()
            .get(uri)
            .is_some_and(|task| !task.is_finished())
    }

    /// Running subscriptions.
    pub(crate) fn subscription_count(&self) -> usize {
        self.subscriptions()
            .values()
            .filter(|task| !task.is_finished())
            .count()
    }

    /// Records a subscription's task (stopping one it replaces).
    pub(crate) fn add_subscription(&self, uri: String, task: AbortHandle) {
        if let Some(old) = self.subscriptions().insert(uri, task) {
            old.abort();
        }
    }

    /// Stops a subscription; true if there was one.
    pub(crate) fn remove_subscription(&self, uri: &str) -> bool {
        match self.subscriptions().remove(uri) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Ends the session: its stream ends, its subscriptions stop.
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
        for (_, task) in self.subscriptions().drain() {
            task.abort();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// Keeps a session alive while its GET stream is open.
pub(crate) struct StreamGuard(Arc<Session>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Why a session could not be created.
#[derive(Debug)]
pub(crate) struct Full;

/// Every open session.
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    ttl: Duration,
    max: usize,
    buffer: usize,
    sweeper_started: AtomicBool,
}

impl Sessions {
    pub(crate) fn new(ttl: Duration, max: usize, buffer: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
            max,
            buffer,
            sweeper_started: AtomicBool::new(false),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session, after removing expired ones if the table is full.
    pub(crate) fn create(&self, revision: Revision) -> Result<Arc<Session>, Full> {
        let session = Arc::new(Session::new(revision, self.buffer));
        let mut map = self.map();
        if map.len() >= self.max {
            let ttl = self.ttl;
            map.retain(|_, s| !s.expired(ttl));
            if map.len() >= self.max {
                return Err(Full);
            }
        }
        map.insert(session.id.clone(), session.clone());
        Ok(session)
    }

    /// The live session with this id; an expired one is removed and ended.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Session>> {
        let mut map = self.map();
        let session = map.get(id)?.clone();
        if session.expired(self.ttl) {
            map.remove(id);
            drop(map);
            tracing::debug!(session = id, "MCP session expired");
            session.close();
            return None;
        }
        Some(session)
    }

    /// Removes and ends a session; false if there was none.
    pub(crate) fn remove(&self, id: &str) -> bool {
        let removed = self.map().remove(id);
        match removed {
            Some(session) => {
                session.close();
                true
            }
            None => false,
        }
    }

    /// Removes and ends every expired session.
    pub(crate) fn sweep(&self) -> usize {
        let ttl = self.ttl;
        let expired: Vec<Arc<Session>> = {
            let mut map = self.map();
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, s)| s.expired(ttl))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for session in &expired {
            session.close();
        }
        if !expired.is_empty() {
            tracing::debug!(count = expired.len(), "MCP sessions expired");
        }
        expired.len()
    }

    /// Ends every session (shutdown).
    pub(crate) fn close_all(&self) {
        let all: Vec<Arc<Session>> = self.map().drain().map(|(_, s)| s).collect();
        for session in all {
            session.close();
        }
    }

    /// Starts (once) a task that sweeps expired sessions until `owner` is
    /// gone or shutdown starts. Must run inside a tokio runtime.
    pub(crate) fn start_sweeper<T, F>(
        &self,
        owner: Weak<T>,
        sessions_of: F,
        mut stopping: watch::Receiver<bool>,
    ) where
        T: Send + Sync + 'static,
        F: Fn(&T) -> &Sessions + Send + 'static,
    {
        if self.sweeper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let period = (self.ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopping.wait_for(|s| *s) => {
                        if let Some(owner) = owner.upgrade() {
                            sessions_of(&owner).close_all();
                        }
                        return;
                    }
                }
                let Some(owner) = owner.upgrade() else { return };
                sessions_of(&owner).sweep();
            }
        });
    }

    /// Open sessions.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_table_refuses_until_a_session_expires() {
        let sessions = Sessions::new(Duration::from_millis(20), 2, 4);
        let a = sessions.create(Revision::V2025_11_25).expect("first");
        let _b = sessions.create(Revision::V2025_11_25).expect("second");
        assert!(sessions.create(Revision::V2025_11_25).is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert!(sessions.get(&a.id).is_none(), "expired");
        assert!(*a.closed.borrow());
        assert!(sessions.create(Revision::V2025_11_25).is_ok());
        assert_eq!(sessions.sweep(), 1, "the other expired session");
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn an_open_stream_keeps_a_session_alive() {
        let sessions = Sessions::new(Duration::from_millis(10), 4, 4);
        let a = sessions.create(Revision::V2025_06_18).expect("created");
        let guard = a.stream_guard();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(sessions.sweep(), 0);
        drop(guard);
        assert!(
            sessions.get(&a.id).is_some(),
            "touched when the stream closed"
        );
    }
}
