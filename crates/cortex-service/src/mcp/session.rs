//! Sessions of the session-based revisions: created by `initialize`, ended
//! by `DELETE`, by idling past the TTL, or by shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::ask::{ClientCapabilities, Pending};
use crate::outbox::Outbox;

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
    /// The user who opened it, when authentication is on; only that user
    /// may use it (see `mcp::http::session_of`).
    pub(crate) owner: std::sync::OnceLock<String>,
    /// The client it counts against for `max_sessions_per_client`: the
    /// token's user, else the peer's IP address.
    client: Arc<str>,
    open_streams: AtomicUsize,
    /// The level of log messages sent to it (`logging/setLevel`).
    pub(crate) log_level: Arc<std::sync::atomic::AtomicU8>,
    /// What the client declared at `initialize` that it can be asked.
    pub(crate) client_capabilities: std::sync::OnceLock<ClientCapabilities>,
    /// Requests to the client waiting for its answer.
    pub(crate) pending: Arc<Pending>,
    /// Response streams of calls a client may resume, oldest first, at
    /// most `max_resumable`: each holds what its call sent (bounded by its
    /// outbox) until the stream that delivers the call's answer ends.
    call_streams: Mutex<VecDeque<(u64, Arc<Outbox>)>>,
    max_resumable: usize,
    next_stream: AtomicU64,
}

impl Session {
    fn new(revision: Revision, limits: &CallLimits, client: Arc<str>) -> Self {
        let buffer = limits.buffer;
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            revision,
            last_used: Mutex::new(Instant::now()),
            outbox: Arc::new(Outbox::new(buffer)),
            subscriptions: Mutex::new(HashMap::new()),
            stream_generation: watch::Sender::new(0),
            closed: watch::Sender::new(false),
            owner: std::sync::OnceLock::new(),
            client,
            open_streams: AtomicUsize::new(0),
            log_level: crate::notify::session_level(),
            client_capabilities: std::sync::OnceLock::new(),
            pending: Arc::new(Pending::new(limits.client_requests)),
            call_streams: Mutex::new(VecDeque::new()),
            max_resumable: limits.resumable.max(1),
            next_stream: AtomicU64::new(1),
        }
    }

    /// What the client declared it can be asked (nothing before `initialize`
    /// recorded it).
    pub(crate) fn capabilities(&self) -> ClientCapabilities {
        self.client_capabilities.get().copied().unwrap_or_default()
    }

    fn call_streams(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Arc<Outbox>)>> {
        self.call_streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new key for a call's response stream.
    pub(crate) fn next_stream_key(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    /// Keeps a call's response stream for a client to resume; the oldest
    /// kept is forgotten beyond the cap.
    pub(crate) fn keep_call_stream(&self, key: u64, outbox: Arc<Outbox>) {
        let mut streams = self.call_streams();
        while streams.len() >= self.max_resumable {
            streams.pop_front();
        }
        streams.push_back((key, outbox));
    }

    /// The kept response stream `key`.
    pub(crate) fn call_stream(&self, key: u64) -> Option<Arc<Outbox>> {
        self.call_streams()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, outbox)| outbox.clone())
    }

    /// Forgets the response stream `key` (its answer was delivered).
    pub(crate) fn forget_call_stream(&self, key: u64) {
        self.call_streams().retain(|(k, _)| *k != key);
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
        self.pending.close();
        self.call_streams().clear();
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
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// The table holds `max_sessions`, none of them expired.
    Table,
    /// The client holds `max_sessions_per_client`, each with an open stream.
    Client,
}

/// The open sessions, by id and by client.
#[derive(Default)]
struct Table {
    by_id: HashMap<String, Arc<Session>>,
    /// The ids of each client's sessions, so its count and its least
    /// recently used session are found without scanning the table.
    by_client: HashMap<Arc<str>, Vec<String>>,
}

impl std::ops::Deref for Table {
    type Target = HashMap<String, Arc<Session>>;

    fn deref(&self) -> &Self::Target {
        &self.by_id
    }
}

impl Table {
    fn insert(&mut self, session: Arc<Session>) {
        self.by_client
            .entry(session.client.clone())
            .or_default()
            .push(session.id.clone());
        self.by_id.insert(session.id.clone(), session);
    }

    fn remove(&mut self, id: &str) -> Option<Arc<Session>> {
        let session = self.by_id.remove(id)?;
        if let Some(ids) = self.by_client.get_mut(&session.client) {
            ids.retain(|other| other != id);
            if ids.is_empty() {
                self.by_client.remove(&session.client);
            }
        }
        Some(session)
    }

    /// Removes the sessions `drop` picks; returns them.
    fn remove_where(&mut self, drop: impl Fn(&Session) -> bool) -> Vec<Arc<Session>> {
        let ids: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, s)| drop(s))
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter().filter_map(|id| self.remove(id)).collect()
    }

    fn drain(&mut self) -> Vec<Arc<Session>> {
        self.by_client.clear();
        self.by_id.drain().map(|(_, s)| s).collect()
    }
}

/// Per-session bounds on what calls hold.
#[derive(Debug, Clone)]
pub(crate) struct CallLimits {
    /// Notifications kept per outbox.
    pub(crate) buffer: usize,
    /// Requests to the client waited on at once.
    pub(crate) client_requests: usize,
    /// Resumable call streams kept.
    pub(crate) resumable: usize,
}

/// Every open session.
pub(crate) struct Sessions {
    map: Mutex<Table>,
    ttl: Duration,
    max: usize,
    max_per_client: usize,
    limits: CallLimits,
    sweeper_started: AtomicBool,
}

impl Sessions {
    pub(crate) fn new(ttl: Duration, max: usize, max_per_client: usize, buffer: usize) -> Self {
        Self {
            map: Mutex::new(Table::default()),
            ttl,
            max,
            max_per_client: max_per_client.max(1),
            limits: CallLimits {
                buffer,
                client_requests: 16,
                resumable: 16,
            },
            sweeper_started: AtomicBool::new(false),
        }
    }

    /// Sets the bounds on what each session's calls hold.
    pub(crate) fn with_call_limits(mut self, limits: CallLimits) -> Self {
        self.limits = limits;
        self
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Table> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for `client`. A client at its own cap loses its
    /// least recently used session without an open stream (so one client
    /// cannot fill the table for everyone, nor lock itself out until its
    /// leaked sessions expire); a full table is first cleared of expired
    /// sessions.
    pub(crate) fn create(&self, revision: Revision, client: &str) -> Result<Arc<Session>, Full> {
        let session = Arc::new(Session::new(revision, &self.limits, Arc::from(client)));
        let mut ended = Vec::new();
        let result = {
            let mut map = self.map();
            let own = map.by_client.get(client).cloned().unwrap_or_default();
            if own.len() >= self.max_per_client {
                let oldest = own
                    .iter()
                    .filter_map(|id| map.get(id))
                    .filter(|s| s.open_streams.load(Ordering::Relaxed) == 0)
                    .max_by_key(|s| s.idle_for())
                    .map(|s| s.id.clone());
                match oldest.and_then(|id| map.remove(&id)) {
                    Some(old) => ended.push(old),
                    None => return Err(Full::Client),
                }
            }
            if map.len() >= self.max {
                let ttl = self.ttl;
                ended.extend(map.remove_where(|s| s.expired(ttl)));
            }
            if map.len() >= self.max {
                Err(Full::Table)
            } else {
                map.insert(session.clone());
                Ok(session)
            }
        };
        for old in ended {
            tracing::debug!(session = %old.id, "MCP session ended to make room");
            old.close();
        }
        result
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
        let expired: Vec<Arc<Session>> = self.map().remove_where(|s| s.expired(ttl));
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
        let all: Vec<Arc<Session>> = self.map().drain();
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
        let sessions = Sessions::new(Duration::from_millis(20), 2, 8, 4);
        let a = sessions.create(Revision::V2025_11_25, "a").expect("first");
        let _b = sessions.create(Revision::V2025_11_25, "b").expect("second");
        assert_eq!(
            sessions.create(Revision::V2025_11_25, "c").err(),
            Some(Full::Table)
        );
        std::thread::sleep(Duration::from_millis(40));
        assert!(sessions.get(&a.id).is_none(), "expired");
        assert!(*a.closed.borrow());
        assert!(sessions.create(Revision::V2025_11_25, "c").is_ok());
        assert_eq!(sessions.sweep(), 1, "the other expired session");
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn an_open_stream_keeps_a_session_alive() {
        let sessions = Sessions::new(Duration::from_millis(10), 4, 4, 4);
        let a = sessions
            .create(Revision::V2025_06_18, "a")
            .expect("created");
        let guard = a.stream_guard();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(sessions.sweep(), 0);
        drop(guard);
        assert!(
            sessions.get(&a.id).is_some(),
            "touched when the stream closed"
        );
    }

    #[test]
    fn a_client_at_its_cap_loses_its_least_recently_used_session() {
        let sessions = Sessions::new(Duration::from_secs(60), 100, 2, 4);
        let first = sessions.create(Revision::V2025_11_25, "a").expect("first");
        std::thread::sleep(Duration::from_millis(5));
        let second = sessions.create(Revision::V2025_11_25, "a").expect("second");
        std::thread::sleep(Duration::from_millis(5));
        first.touch();
        let third = sessions.create(Revision::V2025_11_25, "a").expect("third");
        assert!(sessions.get(&second.id).is_none(), "least recently used");
        assert!(*second.closed.borrow());
        assert!(sessions.get(&first.id).is_some());
        assert!(sessions.get(&third.id).is_some());
        assert!(
            sessions.create(Revision::V2025_11_25, "b").is_ok(),
            "others unaffected"
        );

        // Sessions with open streams are in use: the client is refused.
        let _guards = [first.stream_guard(), third.stream_guard()];
        assert_eq!(
            sessions.create(Revision::V2025_11_25, "a").err(),
            Some(Full::Client)
        );
        assert_eq!(sessions.len(), 3);
    }
}
