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
//!
//! # Pages
//!
//! A history read is one page, bounded in items and bytes
//! ([`MemoryConfig`]): `history/{user_id}` is the newest page, and the page
//! after one ending with item `N` is `history/{user_id}/before/N` (or
//! `…/before/N/limit/{n}`; for a conversation,
//! `…/conversation/{conversation_id}/before/N`). An empty page is the end.
//! The cursor is an item id, like the stream's event ids: items stored
//! while a reader pages are newer than its cursor and never shift a page.
//! User and conversation ids are at most 256 bytes, so whatever is stored
//! can be read back through a URI.
//!
//! # Who may do what
//!
//! With a verified caller (authentication on), a call naming a `user_id`
//! (`store_input`, every `history/…` resource, the stream when it opens)
//! must come from that user, or from a caller with the role `admin` or
//! `service`: otherwise `403 forbidden`. A call naming an item
//! (`get_item`, `update_item`, `delete_item`, `item/{item_id}`) answers
//! another user's item exactly as a missing one, `404`, so item ids reveal
//! nothing. Without a caller (authentication off, or a call from inside
//! the process) everything is allowed.

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

use crate::store::{Feed, Item, ItemUpdate, NewItem, PageLimit, Store, StoreError};

/// How many backlog items a stream reads from the database at a time.
const BACKLOG_PAGE: usize = 500;

/// The bounds of history reads. One read of a user's whole history once
/// took a service from 20 MB to over 500 MB resident; a read is now one
/// page, bounded in items and in bytes, and the next page is asked for by
/// the id of the last item read (`…/before/{item_id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Items in a page when the URI names no count (`history/{user_id}`,
    /// `…/before/{item_id}`, `…/conversation/{conversation_id}`).
    pub default_page: usize,
    /// Most items in a page; `…/limit/{n}` with a larger `n` reads this many.
    pub max_page: usize,
    /// Most bytes of item text in a page (content, `input_data`, and the
    /// other text fields as stored); a page stops before the item that
    /// would pass it, but always holds one item. Also bounds each backlog
    /// read of a history stream.
    pub max_page_bytes: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            default_page: 100,
            // What cognition asks for at most (its `MAX_LIMIT`).
            max_page: 1000,
            max_page_bytes: 4 * 1024 * 1024,
        }
    }
}

impl MemoryConfig {
    /// The bounds of a page of `n` items (capped at `max_page`).
    fn page(&self, n: usize) -> PageLimit {
        PageLimit {
            items: n.min(self.max_page).max(1),
            bytes: self.max_page_bytes,
        }
    }
}

/// The memory service over `store`, with the default page bounds.
pub fn build(store: Store) -> Result<Service, BuildError> {
    build_with(store, MemoryConfig::default())
}

/// The memory service over `store`, with history reads bounded by `config`.
pub fn build_with(store: Store, config: MemoryConfig) -> Result<Service, BuildError> {
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
        .resource(history(store.clone(), config))
        .resource(history_limit(store.clone(), config))
        .resource(history_before(store.clone(), config))
        .resource(history_before_limit(store.clone(), config))
        .resource(conversation(store.clone(), config))
        .resource(conversation_limit(store.clone(), config))
        .resource(conversation_before(store.clone(), config))
        .resource(item(store.clone()))
        .resource(history_stream(store, config))
        .build()
}

/// `item` when the caller may see it; another user's item is "not found",
/// word for word as a missing one, so its id reveals nothing.
fn visible(ctx: &CallContext, item: Item) -> Result<Item, ServiceError> {
    if ctx.may_act_for(&item.user_id) {
        Ok(item)
    } else {
        Err(store_error(StoreError::NotFound(item.item_id)))
    }
}

/// Before changing item `id`: the caller may change it (see [`visible`]).
/// Without a caller there is nothing to check, and no read is spent.
async fn check_owner(store: &Store, ctx: &CallContext, id: i64) -> Result<(), ServiceError> {
    if ctx.caller.is_none() {
        return Ok(());
    }
    // The owner of an item never changes and ids are never reused, so the
    // answer cannot go stale before the change runs.
    let item = store.get(id).await.map_err(store_error)?;
    visible(ctx, item).map(drop)
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
    let conversation_id = optional_string(&input, "conversation_id")?;
    if let Some(cid) = &conversation_id {
        // It is read back through `history/{user_id}/conversation/{cid}`.
        cortex_service::check_id_length("input_data.conversation_id", cid)?;
    }
    Ok(NewItem {
        user_id,
        conversation_id,
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
                ctx.authorize_user(&user_id)?;
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
        move |ctx, args| {
            let store = store.clone();
            async move {
                let id = item_id_arg(&args)?;
                let item = store.get(id).await.map_err(store_error)?;
                visible(&ctx, item).map(|item| to_json(&item))
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
        move |ctx, args| {
            let store = store.clone();
            async move {
                let id = item_id_arg(&args)?;
                check_owner(&store, &ctx, id).await?;
                let text = |f: &str| args.get(f).and_then(Value::as_str).map(str::to_string);
                let update = ItemUpdate {
                    content: text("content"),
                    content_type: text("content_type"),
                    conversation_id: text("conversation_id"),
                    input_data: args.get("input_data").cloned(),
                };
                if let Some(cid) = &update.conversation_id {
                    cortex_service::check_id_length("conversation_id", cid)?;
                }
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
        move |ctx, args| {
            let store = store.clone();
            async move {
                let id = item_id_arg(&args)?;
                check_owner(&store, &ctx, id).await?;
                store.delete(id).await.map_err(store_error)?;
                Ok(json!({"status": "deleted", "item_id": id}))
            }
        },
    )
}

fn items_json(items: Vec<Item>) -> ResourceContent {
    ResourceContent::Json(Value::Array(items.iter().map(to_json).collect()))
}

/// The `user_id` of a resource URI, once the caller may act for that user.
fn user_param(ctx: &CallContext, params: &Params) -> Result<String, ServiceError> {
    let user_id = params.get("user_id")?.to_string();
    check_user_id(&user_id)?;
    ctx.authorize_user(&user_id)?;
    Ok(user_id)
}

/// The `n` of a `…/limit/{n}` URI.
fn count_param(params: &Params) -> Result<usize, ServiceError> {
    params.get_parsed("n")
}

/// The `item_id` of a `…/before/{item_id}` URI: the last item of the page
/// read before.
fn before_param(params: &Params) -> Result<i64, ServiceError> {
    params.get_parsed("item_id")
}

/// One page of a user's history (of one conversation when `conversation`
/// names it), newest first, below `before`; `n` items at most (0: none).
async fn history_page(
    store: &Store,
    config: MemoryConfig,
    user_id: &str,
    conversation: Option<&str>,
    before: Option<i64>,
    n: usize,
) -> Result<ResourceContent, ServiceError> {
    if n == 0 {
        return Ok(items_json(Vec::new()));
    }
    let limit = config.page(n);
    let page = match conversation {
        None => store.history_page(user_id, before, limit).await,
        Some(cid) => store.conversation_page(user_id, cid, before, limit).await,
    };
    page.map(|page| items_json(page.items)).map_err(store_error)
}

fn history(store: Store, config: MemoryConfig) -> Resource {
    Resource::new(
        "history/{user_id}",
        "The newest items of a user, newest first: one page (100 items by default, at most 4 MiB). The next page is history/{user_id}/before/{item_id of its last item}.",
        move |ctx, params| {
            let store = store.clone();
            async move {
                let user_id = user_param(&ctx, &params)?;
                history_page(&store, config, &user_id, None, None, config.default_page).await
            }
        },
    )
}

fn history_limit(store: Store, config: MemoryConfig) -> Resource {
    Resource::new(
        "history/{user_id}/limit/{n}",
        "The newest n items of a user (n at most 1000), newest first.",
        move |ctx, params| {
            let store = store.clone();
            async move {
                let user_id = user_param(&ctx, &params)?;
                let n = count_param(&params)?;
                history_page(&store, config, &user_id, None, None, n).await
            }
        },
    )
}

fn history_before(store: Store, config: MemoryConfig) -> Resource {
    Resource::new(
        "history/{user_id}/before/{item_id}",
        "The next page of a user's history: the items older than item_id, newest first. An empty list is the end.",
        move |ctx, params| {
            let store = store.clone();
            async move {
                let user_id = user_param(&ctx, &params)?;
                let before = before_param(&params)?;
                history_page(
                    &store,
                    config,
                    &user_id,
                    None,
                    Some(before),
                    config.default_page,
                )
                .await
            }
        },
    )
}

fn history_before_limit(store: Store, config: MemoryConfig) -> Resource {
    Resource::new(
        "history/{user_id}/before/{item_id}/limit/{n}",
        "The next n items (n at most 1000) of a user's history older than item_id, newest first.",
        move |ctx, params| {
            let store = store.clone();
            async move {
                let user_id = user_param(&ctx, &params)?;
                let before = before_param(&params)?;
                let n = count_param(&params)?;
                history_page(&store, config, &user_id, None, Some(before), n).await
            }
        },
    )
}

fn conversation(store: Store, config: MemoryConfig) -> Resource {
    Resource::new(
        "history/{user_id}/conversation/{conversation_id}",
        "The newest items of one conversation, newest first: one page, as for history/{user_id}.",
        move |ctx, params| {
            let store = store.clone();
            async move {
                let user_id = user_param(&ctx, &params)?;
                let cid = params.get("conversation_id")?.to_string();
                history_page(
                    &store,
                    config,
                    &user_id,
                    Some(&cid),
                    None,
                    config.default_page,
                )
                .await
            }
        },
    )
}

fn conversation_limit(store: Store, config: MemoryConfig) -> Resource {
    Resource::new(
        "history/{user_id}/conversation/{conversation_id}/limit/{n}",
        "The newest n items (n at most 1000) of one conversation, newest first.",
        move |ctx, params| {
            let store = store.clone();
            async move {
                let user_id = user_param(&ctx, &params)?;
                let cid = params.get("conversation_id")?.to_string();
                let n = count_param(&params)?;
                history_page(&store, config, &user_id, Some(&cid), None, n).await
            }
        },
    )
}

fn conversation_before(store: Store, config: MemoryConfig) -> Resource {
    Resource::new(
        "history/{user_id}/conversation/{conversation_id}/before/{item_id}",
        "The next page of a conversation: its items older than item_id, newest first.",
        move |ctx, params| {
            let store = store.clone();
            async move {
                let user_id = user_param(&ctx, &params)?;
                let cid = params.get("conversation_id")?.to_string();
                let before = before_param(&params)?;
                let n = config.default_page;
                history_page(&store, config, &user_id, Some(&cid), Some(before), n).await
            }
        },
    )
}

fn item(store: Store) -> Resource {
    Resource::new("item/{item_id}", "One item by id.", move |ctx, params| {
        let store = store.clone();
        async move {
            let id: i64 = params.get_parsed("item_id")?;
            let item = store.get(id).await.map_err(store_error)?;
            visible(&ctx, item).map(|item| ResourceContent::Json(to_json(&item)))
        }
    })
}

fn history_stream(store: Store, config: MemoryConfig) -> Resource {
    let read_store = store.clone();
    Resource::new(
        "history/{user_id}/stream",
        "A user's items in id order: the backlog, then each new item as it is stored. Resumable with Last-Event-ID. Read without SSE: the oldest page.",
        move |ctx, params| {
            let store = read_store.clone();
            async move {
                let user_id = user_param(&ctx, &params)?;
                store
                    .items_after_page(&user_id, 0, config.page(config.default_page))
                    .await
                    .map(|page| items_json(page.items))
                    .map_err(store_error)
            }
        },
    )
    // Checked when the stream opens: a stream only ever carries the items
    // of the user its URI names.
    .with_stream(move |ctx, params, last_event_id| {
        let store = store.clone();
        async move {
            let user_id = user_param(&ctx, &params)?;
            let after = match last_event_id.as_deref() {
                None | Some("") => 0,
                Some(id) => id.parse::<i64>().map_err(|_| {
                    ServiceError::invalid_request(format!("Last-Event-ID `{id}` is not an item id"))
                })?,
            };
            Ok(live_history(store, user_id, after, config.max_page_bytes))
        }
    })
}

/// The backlog after `after`, then live items, each exactly once and in id
/// order.
///
/// It takes the store's feed before reading the backlog, so an item
/// committed while the backlog is read arrives on the feed too; `last`
/// drops it there. With an item feed (SQLite), live items are delivered as
/// they come, and a lagging subscription re-reads from the database
/// instead of losing items. With a wake-up feed (PostgreSQL, any replica),
/// the database is the only source: a wake-up for this user, a lag, or
/// `poll` without a wake-up makes the stream re-read after `last`.
fn live_history(store: Store, user_id: String, after: i64, max_page_bytes: usize) -> EventStream {
    let backlog_page = PageLimit {
        items: BACKLOG_PAGE,
        bytes: max_page_bytes,
    };
    struct State {
        store: Store,
        user_id: String,
        last: i64,
        feed: Feed,
        pending: std::collections::VecDeque<Item>,
        catching_up: bool,
        failed: bool,
    }
    let state = State {
        feed: store.feed(),
        store,
        user_id,
        last: after,
        pending: Default::default(),
        catching_up: true,
        failed: false,
    };
    futures::stream::unfold(state, move |mut state| async move {
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
                    .items_after_page(&state.user_id, state.last, backlog_page)
                    .await
                {
                    Ok(page) => {
                        // A page cut by its byte bound is short but not
                        // the last: `more` says which.
                        state.catching_up = page.more;
                        state.pending.extend(page.items);
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
            match &mut state.feed {
                Feed::Items(subscription) => match subscription.recv().await {
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
                },
                Feed::WakeUps { users, poll } => {
                    match tokio::time::timeout(*poll, users.recv()).await {
                        Ok(Ok(user)) => {
                            state.catching_up = user.is_empty() || *user == *state.user_id;
                        }
                        // A lag or the poll interval: re-read, in case.
                        Ok(Err(RecvError::Lagged(_))) | Err(_) => state.catching_up = true,
                        Ok(Err(RecvError::Closed)) => return None,
                    }
                }
            }
        }
    })
    .boxed()
}
