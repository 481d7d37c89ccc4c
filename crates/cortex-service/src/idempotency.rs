//! Keyed tool calls execute once.
//!
//! A caller that may repeat a tool call (a retry after a timeout, say) sends
//! the same `Idempotency-Key` on every attempt. The kit serializes attempts
//! that share a key inside this process (so concurrent repeats wait for the
//! first instead of racing it), and asks an [`IdempotencyStore`] whether the
//! key already has a result. A service that owns data supplies a durable store
//! and, where it can, records the key in the same transaction as the data
//! (the handler sees the key in its context), so a crash between the two can
//! never store an input twice.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use serde_json::Value;

use crate::error::ServiceError;

/// Remembers the result of each keyed tool call.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// The remembered result of `tool` under `key`, if any.
    fn get<'a>(
        &'a self,
        tool: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, ServiceError>>;

    /// Remembers `result` unless the key already has one; returns the result
    /// that is remembered afterwards (the first writer wins).
    fn put<'a>(
        &'a self,
        tool: &'a str,
        key: &'a str,
        result: Value,
    ) -> BoxFuture<'a, Result<Value, ServiceError>>;
}

/// A bounded in-memory store: the default for services that own no data.
/// It forgets on restart and evicts the oldest key past its capacity.
#[derive(Debug)]
pub struct InMemoryIdempotencyStore {
    inner: Mutex<Remembered>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Remembered {
    results: HashMap<KeyId, Value>,
    order: VecDeque<KeyId>,
}

impl InMemoryIdempotencyStore {
    /// A store that remembers at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Remembered::default()),
            capacity: capacity.max(1),
        }
    }
}

impl Default for InMemoryIdempotencyStore {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl IdempotencyStore for InMemoryIdempotencyStore {
    fn get<'a>(
        &'a self,
        tool: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, ServiceError>> {
        let found = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .results
            .get(&(tool.to_string(), key.to_string()))
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn put<'a>(
        &'a self,
        tool: &'a str,
        key: &'a str,
        result: Value,
    ) -> BoxFuture<'a, Result<Value, ServiceError>> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let id = (tool.to_string(), key.to_string());
        let stored = match inner.results.get(&id) {
            Some(existing) => existing.clone(),
            None => {
                inner.results.insert(id.clone(), result.clone());
                inner.order.push_back(id);
                while inner.order.len() > self.capacity {
                    if let Some(old) = inner.order.pop_front() {
                        inner.results.remove(&old);
                    }
                }
                result
            }
        };
        Box::pin(async move { Ok(stored) })
    }
}

/// A tool name and an idempotency key.
type KeyId = (String, String);

/// Per-key locks for the calls in flight in this process.
#[derive(Debug, Default)]
pub(crate) struct KeyLocks {
    locks: Mutex<HashMap<KeyId, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyLocks {
    /// Waits until no other call with this key runs, then holds the key
    /// until the guard drops.
    pub(crate) async fn lock(self: &Arc<Self>, tool: &str, key: &str) -> KeyGuard {
        let id = (tool.to_string(), key.to_string());
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.clone()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        KeyGuard {
            owner: self.clone(),
            id,
            lock,
            guard: Some(guard),
        }
    }
}

/// Holds one key; removes the entry when nobody else waits on it, so the map
/// does not grow with every key ever seen.
pub(crate) struct KeyGuard {
    owner: Arc<KeyLocks>,
    id: KeyId,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.guard.take();
        let mut locks = self.owner.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Two references: ours and the map's. More means someone waits.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.id);
        }
    }
}
