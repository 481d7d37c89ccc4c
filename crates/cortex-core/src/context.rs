//! `context` events: after each stored input, cognition's context for its
//! conversation, appended to its user's log.
//!
//! Context is advice for the user's next turn, not data: when cognition (or
//! the memory behind it) cannot answer within [`CONTEXT_DEADLINE`], the
//! event still comes, marked `degraded` with the reason, and the input
//! stays stored. It is made once per stored input while core runs; an
//! input stored just before core stops may have none.

use std::future::Future;
use std::time::Duration;

use cortex_client::McpError;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::outbox::{Event, Outbox};

/// How long cognition gets for one input's context.
pub const CONTEXT_DEADLINE: Duration = Duration::from_secs(2);

/// Context requests in flight at once.
const AT_ONCE: usize = 4;

/// Makes `context` events for every input stored in `outbox` from now on,
/// until its feed closes; `context_for(user, input data)` asks cognition.
pub(crate) async fn run<F, Fut>(outbox: Outbox, context_for: F)
where
    F: Fn(String, Value) -> Fut + Clone,
    Fut: Future<Output = Result<Value, McpError>>,
{
    let live = outbox.subscribe();
    let stored = futures::stream::unfold(live, |mut live| async move {
        loop {
            match live.recv().await {
                Ok(event) if matches!(event.kind.as_str(), "input" | "stored") => {
                    return Some((event, live));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(
                        skipped,
                        "context events skipped: core fell behind the output log"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    stored
        .map(|event| {
            let (outbox, context_for) = (outbox.clone(), context_for.clone());
            async move { context_event(&outbox, context_for, event).await }
        })
        .buffered(AT_ONCE)
        .for_each(|_| std::future::ready(()))
        .await;
}

/// Appends the `context` event of the stored input `event` announces.
async fn context_event<F, Fut>(outbox: &Outbox, context_for: F, event: Event)
where
    F: Fn(String, Value) -> Fut,
    Fut: Future<Output = Result<Value, McpError>>,
{
    let Some(input_id) = event.data.get("input_id").and_then(Value::as_str) else {
        return;
    };
    let item_id = event.data.get("item_id").cloned().unwrap_or(Value::Null);
    // An `input` event carries the item; a `stored` one names the input.
    let data = match event.data.get("item") {
        Some(item) => Some(item.clone()),
        None => match outbox.input(input_id).await {
            Ok(input) => input.map(|input| input.data),
            Err(error) => {
                tracing::warn!(%error, "no context: the input cannot be read");
                return;
            }
        },
    };
    let Some(data) = data else { return };
    let context =
        tokio::time::timeout(CONTEXT_DEADLINE, context_for(event.user_id.clone(), data)).await;
    let body = match context {
        Ok(Ok(context)) => json!({
            "input_id": input_id,
            "item_id": item_id,
            "degraded": false,
            "context": context,
        }),
        Ok(Err(error)) => json!({
            "input_id": input_id,
            "item_id": item_id,
            "degraded": true,
            "reason": error.to_string(),
        }),
        Err(_) => json!({
            "input_id": input_id,
            "item_id": item_id,
            "degraded": true,
            "reason": format!("cognition gave no context within {CONTEXT_DEADLINE:?}"),
        }),
    };
    if let Err(error) = outbox.append(&event.user_id, "context", body).await {
        tracing::warn!(%error, "the context event could not be kept");
    }
}
