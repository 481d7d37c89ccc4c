//! What the client keeps about requests in flight, in both directions:
//! the progress of its own calls (handed to the caller's handler, and
//! pushing the deadline out when asked), and the server's requests being
//! answered (so a `notifications/cancelled` can stop one).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::engine::lock;
use crate::progress::{CallOptions, PROGRESS_QUEUE, Progress, ProgressFn};

/// How long a call that has its result waits for its progress handler to
/// take what arrived before it.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// At most this many server requests are answered at once per client;
/// beyond, one is refused at once (a server cannot make the client hold
/// an unbounded number of handlers).
pub(crate) const MAX_HANDLING: usize = 256;

/// The progress of one call.
pub(crate) struct Tracker {
    queue: Arc<Queue>,
    drain: Mutex<Option<JoinHandle<()>>>,
    /// Each progress starts the timeout over: `(timeout, latest deadline)`.
    reset: Option<(Duration, Instant)>,
    /// When the latest progress arrived.
    last: Mutex<Option<Instant>>,
}

/// Progress waiting for the handler: bounded, the oldest dropped first.
struct Queue {
    items: Mutex<VecDeque<Progress>>,
    ready: Notify,
    closed: AtomicBool,
}

impl Tracker {
    /// The tracker of a call that started now with `timeout`, or `None`
    /// when the options ask for no progress.
    pub(crate) fn new(options: &CallOptions, timeout: Duration) -> Option<Arc<Self>> {
        if !options.wants_progress() {
            return None;
        }
        let queue = Arc::new(Queue {
            items: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let drain = options
            .on_progress
            .clone()
            .map(|handler| tokio::spawn(drain(queue.clone(), handler)));
        let now = Instant::now();
        Some(Arc::new(Self {
            queue,
            drain: Mutex::new(drain),
            reset: options
                .reset_timeout_on_progress
                .map(|max| (timeout, now + max.max(timeout))),
            last: Mutex::new(None),
        }))
    }

    /// A `notifications/progress`'s params; malformed ones (no numeric
    /// `progress`) are dropped.
    pub(crate) fn push(&self, params: &Value) {
        let Some(progress) = params.get("progress").and_then(Value::as_f64) else {
            tracing::debug!(%params, "a progress notification without a numeric progress was dropped");
            return;
        };
        let total = params.get("total").and_then(Value::as_f64);
        let message = params
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string);
        *lock(&self.last) = Some(Instant::now());
        if lock(&self.drain).is_none() {
            return; // no handler: only the deadline cares
        }
        {
            let mut items = lock(&self.queue.items);
            if items.len() >= PROGRESS_QUEUE {
                items.pop_front();
            }
            items.push_back(Progress::new(progress, total, message));
        }
        self.queue.ready.notify_one();
    }

    /// Something other than a notification showed progress (a task that
    /// changed between polls): counts as progress for the deadline.
    pub(crate) fn touch(&self) {
        *lock(&self.last) = Some(Instant::now());
    }

    /// The call's deadline given its current one: later than `deadline`
    /// when progress reset it, never past the most the call may take.
    pub(crate) fn deadline(&self, deadline: Instant) -> Instant {
        match (self.reset, *lock(&self.last)) {
            (Some((timeout, latest)), Some(last)) => deadline.max((last + timeout).min(latest)),
            _ => deadline,
        }
    }

    /// The call has its outcome: lets the handler take what is queued,
    /// waiting for it a short while at most.
    pub(crate) async fn finish(&self) {
        self.queue.closed.store(true, Ordering::Release);
        self.queue.ready.notify_one();
        let drain = lock(&self.drain).take();
        if let Some(drain) = drain {
            let abort = drain.abort_handle();
            if tokio::time::timeout(DRAIN_WAIT, drain).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("reset", &self.reset)
            .finish_non_exhaustive()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // A call dropped before its outcome: the handler gets nothing more.
        if let Some(drain) = lock(&self.drain).take() {
            drain.abort();
        }
    }
}

async fn drain(queue: Arc<Queue>, handler: ProgressFn) {
    loop {
        let next = lock(&queue.items).pop_front();
        match next {
            Some(progress) => handler(progress),
            None if queue.closed.load(Ordering::Acquire) => return,
            None => queue.ready.notified().await,
        }
    }
}

/// The server's requests being answered, by (service, endpoint, id).
#[derive(Default)]
pub(crate) struct Handling {
    tasks: Mutex<HashMap<(String, String, String), AbortHandle>>,
}

impl Handling {
    /// Runs `answer` for request `id` unless [`MAX_HANDLING`] are running
    /// (then `refuse` runs instead); a cancellation of `id` aborts it.
    pub(crate) fn spawn<F, R>(&self, key: (String, String, String), answer: F, refuse: R)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
        R: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut tasks = lock(&self.tasks);
        if tasks.len() >= MAX_HANDLING {
            drop(tasks);
            tokio::spawn(refuse);
            return;
        }
        // Inserted under the lock the task takes to remove itself, so it
        // cannot finish (and remove) before it is inserted.
        let handle = tokio::spawn(answer);
        tasks.insert(key, handle.abort_handle());
    }

    /// Request `key` got its answer (or was cancelled).
    pub(crate) fn done(&self, key: &(String, String, String)) {
        lock(&self.tasks).remove(key);
    }

    /// A `notifications/cancelled` for `key`: its handler is stopped and
    /// nothing is answered; true when it was running.
    pub(crate) fn cancel(&self, key: &(String, String, String)) -> bool {
        match lock(&self.tasks).remove(key) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(start_paused = true)]
    async fn progress_resets_the_deadline_within_the_maximum() {
        let options = CallOptions::new().reset_timeout_on_progress(Duration::from_secs(25));
        let tracker =
            Tracker::new(&options, Duration::from_secs(10)).unwrap_or_else(|| panic!("tracker"));
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        assert_eq!(tracker.deadline(deadline), deadline, "no progress yet");
        tokio::time::advance(Duration::from_secs(8)).await;
        tracker.push(&json!({"progress": 1}));
        assert_eq!(tracker.deadline(deadline), start + Duration::from_secs(18));
        tokio::time::advance(Duration::from_secs(12)).await;
        tracker.push(&json!({"progress": 2}));
        assert_eq!(
            tracker.deadline(deadline),
            start + Duration::from_secs(25),
            "capped"
        );
        // Malformed progress does not count.
        tokio::time::advance(Duration::from_secs(1)).await;
        let before = tracker.deadline(deadline);
        tracker.push(&json!({"progress": "much"}));
        assert_eq!(tracker.deadline(deadline), before);

        let plain = CallOptions::new().on_progress(|_| {});
        let tracker =
            Tracker::new(&plain, Duration::from_secs(10)).unwrap_or_else(|| panic!("tracker"));
        tracker.push(&json!({"progress": 1}));
        assert_eq!(tracker.deadline(deadline), deadline, "no reset asked");
        assert!(Tracker::new(&CallOptions::new(), Duration::from_secs(1)).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_handler_holds_a_bounded_queue_and_sees_the_latest() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (s, c) = (seen.clone(), calls.clone());
        let options = CallOptions::new().on_progress(move |p| {
            c.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            lock(&s).push(p.progress);
        });
        let tracker =
            Tracker::new(&options, Duration::from_secs(10)).unwrap_or_else(|| panic!("tracker"));
        for i in 0..10_000 {
            tracker.push(&json!({"progress": i, "total": 10_000}));
            assert!(lock(&tracker.queue.items).len() <= PROGRESS_QUEUE);
        }
        tracker.finish().await;
        let seen = lock(&seen).clone();
        assert!(seen.len() < 10_000, "the oldest were dropped");
        assert_eq!(
            seen.last().copied(),
            Some(9_999.0),
            "the latest was delivered"
        );
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order");
    }
}
