//! The memory service's tools and resources on the service kit.
//!
//! | tool | arguments | result |
//! |---|---|---|
//! | `store_input` | `user_id`, `input_data{content or message, content_type?, conversation_id?, timestamp?, …}` | `{status:"stored", user_id, item_id}` |
//! | `get_item` | `item_id` | the item |
//! | `update_item` | `item_id`, `content?`, `content_type?`, `conversation_id?`, `input_data?` | the item |
//! | `delete_item` | `item_id` | `{status:"deleted", item_id}` |
//!
//! Resources: `history/{user_id}` (newest first), `history/{user_id}/limit/{n}`,
//! `history/{user_id}/conversation/{conversation_id}`, `item/{item_id}`, and
//! `history/{user_id}/stream` (backlog in id order, then live; the event id
//! is the item id, so `Last-Event-ID` resumes exactly after it).

use std::sync::Arc;

use cortex_proto::sse::Event;
use cortex_service::{
    BuildError, CallContext, EventStream, IdempotencyStore, Params, Resource, ResourceContent,
    Service, ServiceError, Tool,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::store::{Item, ItemUpdate, NewItem, Store, StoreError};

/// How many backlog items a stream reads from the database at a time.
const BACKLOG_PAGE: usize = 500;

/// The memory service over `store`.
pub fn build(store: Store) -> Result<Service, BuildError> {
    let health_store = store.clone();
    Service::builder("memory", env!("CARGO_PKG_VERSION"))
        .idempotency_store(Arc::new(StoreIdempotency(store.clone())))
        .health_check("database", move || {
            let store = health_store.clone();
            async move { store.ping().await.map_err(|e| e.to_string()) }
        })
        .tool(store_input(store.clone()))
        .tool(get_item(store.clone()))
        .tool(update_item(store.clone()))
        .tool(delete_item(store.clone()))
        .resource(history(store.clone()))
        .resource(history_limit(store.clone()))
        .resource(conversation(store.clone()))
        .resource(item(store.clone()))
        .resource(history_stream(store))
        .build()
}

fn store_error(error: StoreError) -> ServiceError {
    match error {
        StoreError::NotFound(id) => {
            ServiceError::resource_not_found(format!("item {id} not found"))
                .with_details(json!({ "item_id": id }))
        }
        other => {
            tracing::error!(error = %other, "store failed");
            ServiceError::unavailable("the memory store is unavailable")
        }
    }
}

/// Keyed calls other than `store_input` (which records its key in the same
/// transaction as the item) are remembered in the same database.
struct StoreIdempotency(Store);

impl IdempotencyStore for StoreIdempotency {
    fn get<'a>(
        &'a self,
        tool: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, ServiceError>> {
        Box::pin(async move { self.0.idempotency_get(tool, key).await.map_err(store_error) })
    }

    fn put<'a>(
        &'a self,
        tool: &'a str,
        key: &'a str,
        result: Value,
    ) -> BoxFuture<'a, Result<Value, ServiceError>> {
        Box::pin(async move {
            self.0
                .idempotency_put(tool, key, result)
                .await
                .map_err(store_error)
        })
    }
}

const USER_ID_SCHEMA: &str = r#"{"type": "string", "minLength": 1, "pattern": "^[^/]+$"}"#;

fn user_id_schema() -> Value {
    serde_json::from_str(USER_ID_SCHEMA).unwrap_or(Value::Null)
}

fn check_user_id(user_id: &str) -> Result<(), ServiceError> {
    cortex_service::check_segment_id("user_id", user_id)
}

fn optional_string(
    input: &Map<String, Value>,
    field: &str,
) -> Result<Option<String>, ServiceError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ServiceError::invalid_argument(
            &format!("input_data.{field}"),
            "must be a string",
        )),
    }
}

/// Reads `input_data`: the content is `content`, or `message` as the seed's
/// examples send it; every other field is kept as received.
fn new_item(user_id: String, input: Map<String, Value>) -> Result<NewItem, ServiceError> {
    let content = match (input.get("content"), input.get("message")) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => s.clone(),
        (Some(Value::Null) | None, None) | (Some(Value::Null), Some(Value::Null)) => {
            return Err(ServiceError::invalid_argument(
                "input_data.content",
                "input_data needs `content` (or `message`) holding the text to store",
            ));
        }
        (Some(_), _) => {
            return Err(ServiceError::invalid_argument(
                "input_data.content",
                "must be a string",
            ));
        }
        (_, Some(_)) => {
            return Err(ServiceError::invalid_argument(
                "input_data.message",
                "must be a string",
            ));
        }
    };
    Ok(NewItem {
        user_id,
        conversation_id: optional_string(&input, "conversation_id")?,
        content,
        content_type: optional_string(&input, "content_type")?
            .unwrap_or_else(|| "text/plain".into()),
        timestamp: optional_string(&input, "timestamp")?,
        input_data: Value::Object(input),
    })
}

fn string_arg(args: &mut Map<String, Value>, field: &str) -> Result<String, ServiceError> {
    match args.remove(field) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(ServiceError::invalid_argument(field, "must be a string")),
    }
}

fn item_id_arg(args: &Map<String, Value>) -> Result<i64, ServiceError> {
    args.get("item_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| ServiceError::invalid_argument("item_id", "must be an integer"))
}

fn to_json(item: &Item) -> Value {
    serde_json::to_value(item).unwrap_or(Value::Null)
}

fn store_input(store: Store) -> Tool {
    let schema = json!({
        "type": "object",
        "properties": {
            "user_id": user_id_schema(),
            "input_data": {
                "type": "object",
                "description": "The input: `content` (or `message`) is the text; `content_type`, `conversation_id`, `timestamp` and any other fields are kept.",
                "properties": {
                    "content": {"type": "string"},
                    "message": {"type": "string"},
                    "content_type": {"type": "string"},
                    "conversation_id": {"type": "string"},
                    "timestamp": {"type": "string"}
                }
            }
        },
        "required": ["user_id", "input_data"]
    });
    Tool::new(
        "store_input",
        "Stores one input of a user. Send an Idempotency-Key to make retries safe: a repeated key stores nothing and returns the first answer.",
        schema,
        move |ctx: CallContext, mut args| {
            let store = store.clone();
            async move {
                let user_id = string_arg(&mut args, "user_id")?;
                check_user_id(&user_id)?;
                let Some(Value::Object(input)) = args.remove("input_data") else {
                    return Err(ServiceError::invalid_argument(
                        "input_data",
                        "must be an object",
                    ));
                };
                let item = new_item(user_id, input)?;
                let response = |item: &Item| json!({"status": "stored", "user_id": item.user_id, "item_id": item.item_id});
                match ctx.idempotency_key {
                    // The key is recorded in the item's own transaction.
                    Some(key) => store
                        .insert_idempotent(item, "store_input", &key, response)
                        .await
                        .map(|(value, _replayed)| value)
                        .map_err(store_error),
                    None => store
                        .insert(item)
                        .await
                        .map(|item| response(&item))
                        .map_err(store_error),
                }
            }
        },
    )
}

fn get_item(store: Store) -> Tool {
    Tool::new(
        "get_item",
        "Returns one stored item by id.",
        json!({"type": "object", "properties": {"item_id": {"type": "integer"}}, "required": ["item_id"]}),
        move |_ctx, args| {
            let store = store.clone();
            async move {
                let id = item_id_arg(&args)?;
                store
                    .get(id)
                    .await
                    .map(|item| to_json(&item))
                    .map_err(store_error)
            }
        },
    )
    .read_only()
}

fn update_item(store: Store) -> Tool {
    let schema = json!({
        "type": "object",
        "properties": {
            "item_id": {"type": "integer"},
            "content": {"type": "string"},
            "content_type": {"type": "string"},
            "conversation_id": {"type": "string"},
            "input_data": {"type": "object"}
        },
        "required": ["item_id"]
    });
    Tool::new(
        "update_item",
        "Changes the given fields of one item; returns the item.",
        schema,
        move |_ctx, args| {
            let store = store.clone();
            async move {
                let id = item_id_arg(&args)?;
                let text = |f: &str| args.get(f).and_then(Value::as_str).map(str::to_string);
                let update = ItemUpdate {
                    content: text("content"),
                    content_type: text("content_type"),
                    conversation_id: text("conversation_id"),
                    input_data: args.get("input_data").cloned(),
                };
                store
                    .update(id, update)
                    .await
                    .map(|item| to_json(&item))
                    .map_err(store_error)
            }
        },
    )
}

fn delete_item(store: Store) -> Tool {
    Tool::new(
        "delete_item",
        "Deletes one item.",
        json!({"type": "object", "properties": {"item_id": {"type": "integer"}}, "required": ["item_id"]}),
        move |_ctx, args| {
            let store = store.clone();
            async move {
                let id = item_id_arg(&args)?;
                store.delete(id).await.map_err(store_error)?;
                Ok(json!({"status": "deleted", "item_id": id}))
            }
        },
    )
}

fn items_json(items: Vec<Item>) -> ResourceContent {
    ResourceContent::Json(Value::Array(items.iter().map(to_json).collect()))
}

fn user_param(params: &Params) -> Result<String, ServiceError> {
    let user_id = params.get("user_id")?.to_string();
    check_user_id(&user_id)?;
    Ok(user_id)
}

fn history(store: Store) -> Resource {
    Resource::new(
        "history/{user_id}",
        "Every item of a user, newest first.",
        move |_ctx, params| {
            let store = store.clone();
            async move {
                let user_id = user_param(&params)?;
                store
                    .history(&user_id, None)
                    .await
                    .map(items_json)
                    .map_err(store_error)
            }
        },
    )
}

fn history_limit(store: Store) -> Resource {
    Resource::new(
        "history/{user_id}/limit/{n}",
        "The newest n items of a user, newest first.",
        move |_ctx, params| {
            let store = store.clone();
            async move {
                let user_id = user_param(&params)?;
                let n: usize = params.get_parsed("n")?;
                store
                    .history(&user_id, Some(n))
                    .await
                    .map(items_json)
                    .map_err(store_error)
            }
        },
    )
}

fn conversation(store: Store) -> Resource {
    Resource::new(
        "history/{user_id}/conversation/{conversation_id}",
        "The items of one conversation, newest first.",
        move |_ctx, params| {
            let store = store.clone();
            async move {
                let user_id = user_param(&params)?;
                let cid = params.get("conversation_id")?.to_string();
                store
                    .conversation(&user_id, &cid)
                    .await
                    .map(items_json)
                    .map_err(store_error)
            }
        },
    )
}

fn item(store: Store) -> Resource {
    Resource::new("item/{item_id}", "One item by id.", move |_ctx, params| {
        let store = store.clone();
        async move {
            let id: i64 = params.get_parsed("item_id")?;
            store
                .get(id)
                .await
                .map(|item| ResourceContent::Json(to_json(&item)))
                .map_err(store_error)
        }
    })
}

fn history_stream(store: Store) -> Resource {
    let read_store = store.clone();
    Resource::new(
        "history/{user_id}/stream",
        "A user's items in id order: the backlog, then each new item as it is stored. Resumable with Last-Event-ID.",
        move |_ctx, params| {
            let store = read_store.clone();
            async move {
                let user_id = user_param(&params)?;
                store.items_after(&user_id, 0, usize::MAX >> 1).await.map(items_json).map_err(store_error)
            }
        },
    )
    .with_stream(move |_ctx, params, last_event_id| {
        let store = store.clone();
        async move {
            let user_id = user_param(&params)?;
            let after = match last_event_id.as_deref() {
                None | Some("") => 0,
                Some(id) => id.parse::<i64>().map_err(|_| {
                    ServiceError::invalid_request(format!("Last-Event-ID `{id}` is not an item id"))
                })?,
            };
            Ok(live_history(store, user_id, after))
        }
    })
}

/// The backlog after `after`, then live items, each exactly once and in id
/// order.
///
/// It subscribes before reading the backlog, so an item committed while the
/// backlog is read arrives on the subscription too; `last` drops it there.
/// When the subscription lags (a slow reader), it re-reads from the database
/// instead of losing items.
fn live_history(store: Store, user_id: String, after: i64) -> EventStream {
    struct State {
        store: Store,
        user_id: String,
        last: i64,
        subscription: tokio::sync::broadcast::Receiver<Item>,
        pending: std::collections::VecDeque<Item>,
        catching_up: bool,
        failed: bool,
    }
    let state = State {
        subscription: store.subscribe(),
        store,
        user_id,
        last: after,
        pending: Default::default(),
        catching_up: true,
        failed: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.failed {
            return None;
        }
        loop {
            if let Some(item) = state.pending.pop_front() {
                if item.item_id <= state.last {
                    continue;
                }
                state.last = item.item_id;
                let event = Event::message(to_json(&item).to_string())
                    .with_id(item.item_id.to_string())
                    .with_event("item");
                return Some((Ok(event), state));
            }
            if state.catching_up {
                match state
                    .store
                    .items_after(&state.user_id, state.last, BACKLOG_PAGE)
                    .await
                {
                    Ok(page) => {
                        state.catching_up = page.len() == BACKLOG_PAGE;
                        state.pending.extend(page);
                        continue;
                    }
                    Err(error) => {
                        // The reader sees an error event, the stream ends,
                        // and the reader reconnects with its Last-Event-ID.
                        state.failed = true;
                        return Some((Err(store_error(error)), state));
                    }
                }
            }
            match state.subscription.recv().await {
                Ok(item) if item.user_id == state.user_id => state.pending.push_back(item),
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(
                        missed,
                        "history stream lagged; re-reading from the database"
                    );
                    state.catching_up = true;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}
