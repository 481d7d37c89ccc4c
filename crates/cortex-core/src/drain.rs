//! Storing the outbox in memory: each user's waiting inputs in order, each
//! under its own idempotency key (its input id), so an input memory stored
//! but whose acknowledgement was lost, or that a killed core had sent just
//! before dying, is not stored twice: memory answers the repeat with the
//! first receipt.
//!
//! # When it runs
//! A pass takes every user with waiting inputs, several users at once, one
//! input of a user at a time. A user whose input memory cannot take now
//! (refused, breaker open, deadline) stops there, so their order holds; the
//! next pass comes after the reconnect backoff, capped at 1 s, so draining
//! starts within a second of memory coming back. The front door wakes the
//! drain at once when it queues an input ([`Drainer::waker`]).
//!
//! An input memory refuses for good (invalid, forbidden) is marked failed
//! and its user told, rather than blocking the inputs behind it forever.

use std::sync::Arc;
use std::time::Duration;

use cortex_client::{McpError, MemoryServiceClient};
use cortex_resilience::backoff::Jitter;
use cortex_resilience::reconnect::{Reconnect, ReconnectPolicy};
use futures::StreamExt;
use tokio::sync::Notify;

use crate::outbox::{Outbox, OutboxError};

/// Users drained at once.
const USERS_AT_ONCE: usize = 8;

/// The wait between passes while memory is away: 50 ms doubling to 1 s,
/// full jitter, never giving up (the inputs are durable; they wait).
const RETRY: ReconnectPolicy = match ReconnectPolicy::try_new(
    Duration::from_millis(50),
    2.0,
    Duration::from_secs(1),
    Jitter::Full,
) {
    Ok(policy) => policy,
    Err(_) => panic!("the drain's retry policy is valid"),
};

/// How often an idle drain looks anyway (inputs queued by another process
/// on the same file, a missed wake-up).
const IDLE_LOOK: Duration = Duration::from_secs(1);

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Inputs stored in memory.
    pub stored: usize,
    /// Inputs memory refused for good (marked failed).
    pub failed: usize,
    /// Users left waiting because memory could not take their next input.
    pub blocked: usize,
    /// Why, for the last blocked user.
    pub last_error: Option<String>,
}

/// Drains one outbox into memory.
#[derive(Clone)]
pub struct Drainer {
    outbox: Outbox,
    memory: MemoryServiceClient,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Drainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drainer")
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

impl Drainer {
    /// A drain of `outbox` into `memory`.
    pub fn new(outbox: Outbox, memory: MemoryServiceClient) -> Self {
        Self {
            outbox,
            memory,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Notify it after queueing an input: the drain looks at once.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Drains until `stop` completes; a pass in progress is finished
    /// first only up to the input being stored (stopping mid-input is safe:
    /// the input stays pending and its key makes the next store a repeat).
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut retry = Reconnect::new(RETRY);
        loop {
            let wait = match self.drain_once().await {
                Ok(pass) if pass.blocked > 0 => {
                    let wait = retry.next_delay(None).unwrap_or(IDLE_LOOK);
                    tracing::debug!(
                        blocked = pass.blocked,
                        error = pass.last_error.as_deref().unwrap_or(""),
                        ?wait,
                        "memory cannot take inputs now; will try again"
                    );
                    wait
                }
                Ok(_) => {
                    retry.reset();
                    IDLE_LOOK
                }
                Err(error) => {
                    tracing::error!(%error, "the outbox cannot be read; will try again");
                    retry.next_delay(None).unwrap_or(IDLE_LOOK)
                }
            };
            tokio::select! {
                () = &mut stop => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass over every user with waiting inputs.
    ///
    /// # Errors
    /// The outbox's own failures; memory's are counted in the [`Pass`].
    pub async fn drain_once(&self) -> Result<Pass, OutboxError> {
        let users = self.outbox.pending_users().await?;
        let passes: Vec<Result<Pass, OutboxError>> = futures::stream::iter(users)
            .map(|user| async move { self.drain_user(&user).await })
            .buffer_unordered(USERS_AT_ONCE)
            .collect()
            .await;
        let mut total = Pass::default();
        for pass in passes {
            let pass = pass?;
            total.stored += pass.stored;
            total.failed += pass.failed;
            total.blocked += pass.blocked;
            total.last_error = pass.last_error.or(total.last_error);
        }
        Ok(total)
    }

    /// `user`'s waiting inputs, oldest first, until none is left or memory
    /// cannot take the next.
    async fn drain_user(&self, user: &str) -> Result<Pass, OutboxError> {
        let mut pass = Pass::default();
        while let Some(input) = self.outbox.next_pending(user).await? {
            match self
                .memory
                .store_input_with_key(&input.user_id, input.data.clone(), &input.input_id)
                .await
            {
                Ok(receipt) => {
                    self.outbox
                        .mark_stored(&input.input_id, receipt.item_id)
                        .await?;
                    pass.stored += 1;
                }
                Err(error) if refused_for_good(&error) => {
                    tracing::warn!(input = %input.input_id, %error, "memory refused an input for good");
                    self.outbox
                        .mark_failed(&input.input_id, &error.to_string())
                        .await?;
                    pass.failed += 1;
                }
                Err(error) => {
                    pass.blocked = 1;
                    pass.last_error = Some(error.to_string());
                    break;
                }
            }
        }
        Ok(pass)
    }
}

/// Whether memory refused this input itself (its arguments, or its user's
/// rights), so that storing it again can never succeed. Anything else, an
/// unreachable or failing memory, a bad credential of core's own, an
/// unknown service, is core's or memory's state, and the input waits.
pub fn refused_for_good(error: &McpError) -> bool {
    matches!(error, McpError::Tool { status, .. } if matches!(status, 400 | 403 | 404 | 409 | 413 | 422))
}
