//! The cognition tools and resources on the service kit.

use std::collections::BTreeSet;
use std::sync::Arc;

use cortex_service::{CallContext, Caller, Params, Resource, ResourceContent, ServiceError, Tool};
use serde_json::{Map, Value, json};

use crate::entities::{self, EntityCounter};
use crate::memory::{Memory, MemoryFailure, MemoryItem};
use crate::text::{self, TermCount};
use crate::{
    CognitionConfig, MAX_LIMIT, QUERY_FETCH_CAP, QUERY_FETCH_FACTOR, SUMMARY_DEFAULT_LIMIT,
    TOP_TERMS,
};

/// The state every handler shares: the memory service and the configuration.
#[derive(Clone)]
pub(crate) struct Cognition {
    memory: Memory,
    config: Arc<CognitionConfig>,
}

/// What `get_context` (and the context resources) is asked.
struct ContextRequest {
    user_id: String,
    query: Option<String>,
    conversation_id: Option<String>,
    limit: usize,
}

impl Cognition {
    pub(crate) fn new(memory: Memory, config: CognitionConfig) -> Self {
        Self {
            memory,
            config: Arc::new(config),
        }
    }

    /// Whether memory answers (the `memory` health check).
    pub(crate) async fn check_memory(&self) -> Result<(), String> {
        self.memory.check().await
    }

    async fn context(&self, request: ContextRequest) -> Result<Value, ServiceError> {
        let ContextRequest {
            user_id,
            query,
            conversation_id,
            limit,
        } = request;
        let terms = query.as_deref().map(text::query_terms).unwrap_or_default();
        let uri = match &conversation_id {
            Some(cid) => Memory::conversation_uri(&user_id, cid),
            None if terms.is_empty() => Memory::history_uri(&user_id, limit),
            None => Memory::history_uri(&user_id, fetch_size(limit)),
        };
        let deadline = self.config.context_deadline;
        let items = match self.memory.items(&uri, Some(deadline)).await {
            Ok(items) => items,
            Err(MemoryFailure::Unavailable(reason)) => {
                return Ok(json!({
                    "user_id": user_id,
                    "context": [],
                    "query": query,
                    "count": 0,
                    "degraded": true,
                    "reason": format!("memory service is unavailable: {reason}"),
                }));
            }
            Err(MemoryFailure::Failed(error)) => return Err(error),
        };
        let context = rank(items, &terms, limit);
        Ok(json!({
            "user_id": user_id,
            "count": context.len(),
            "context": context,
            "query": query,
            "degraded": false,
        }))
    }

    async fn read(&self, uri: &str) -> Result<Vec<MemoryItem>, ServiceError> {
        self.memory
            .items(uri, None)
            .await
            .map_err(MemoryFailure::into_service_error)
    }
}

/// How many items a ranked read fetches to choose `limit` from.
fn fetch_size(limit: usize) -> usize {
    limit
        .saturating_mul(QUERY_FETCH_FACTOR)
        .min(QUERY_FETCH_CAP)
        .max(limit)
}

/// The top `limit` items: by overlap with `terms` (most first) when there
/// are terms, newest first among equals and when there are none.
fn rank(items: Vec<MemoryItem>, terms: &[String], limit: usize) -> Vec<Value> {
    let mut scored: Vec<(Option<usize>, MemoryItem)> = items
        .into_iter()
        .map(|item| {
            let score = (!terms.is_empty()).then(|| text::overlap(terms, &item.content));
            (score, item)
        })
        .collect();
    // Items arrive newest first and the sort is stable: ties stay by recency.
    scored.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
    scored.truncate(limit);
    scored
        .into_iter()
        .map(|(score, item)| {
            json!({
                "item_id": item.item_id,
                "content": item.content,
                "conversation_id": item.conversation_id,
                "timestamp": item.timestamp,
                "score": score,
            })
        })
        .collect()
}

/// Statistics over items sorted newest first.
struct Stats {
    first_timestamp: Option<String>,
    last_timestamp: Option<String>,
    conversations: usize,
    average_length: f64,
    top_terms: Vec<TermCount>,
}

impl Stats {
    fn of(items: &[MemoryItem]) -> Self {
        let total_chars: usize = items.iter().map(|i| i.content.chars().count()).sum();
        let average_length = if items.is_empty() {
            0.0
        } else {
            (total_chars as f64 / items.len() as f64 * 100.0).round() / 100.0
        };
        let conversations: BTreeSet<&str> = items
            .iter()
            .filter_map(|i| i.conversation_id.as_deref())
            .collect();
        Self {
            first_timestamp: items.last().map(|i| i.timestamp.clone()),
            last_timestamp: items.first().map(|i| i.timestamp.clone()),
            conversations: conversations.len(),
            average_length,
            top_terms: text::top_terms(items.iter().map(|i| i.content.as_str()), TOP_TERMS),
        }
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// One plain sentence built from the numbers of `summarize_history`.
fn summary_sentence(user_id: &str, count: usize, limit: usize, stats: &Stats) -> String {
    if count == 0 {
        return format!("User {user_id} has no stored items.");
    }
    let mut sentence = if count < limit {
        format!(
            "User {user_id} has {}",
            plural(count, "stored item", "stored items")
        )
    } else if count == 1 {
        format!("The newest item of user {user_id} is")
    } else {
        format!("The newest {count} items of user {user_id} are")
    };
    match stats.conversations {
        0 => sentence.push_str(" outside any conversation"),
        n => {
            sentence.push_str(" in ");
            sentence.push_str(&plural(n, "conversation", "conversations"));
        }
    }
    match (&stats.first_timestamp, &stats.last_timestamp) {
        (Some(first), Some(last)) if first == last && !first.is_empty() => {
            sentence.push_str(&format!(", at {first}"));
        }
        (Some(first), Some(last)) if !first.is_empty() && !last.is_empty() => {
            sentence.push_str(&format!(", from {first} to {last}"));
        }
        _ => {}
    }
    let terms: Vec<&str> = stats
        .top_terms
        .iter()
        .take(3)
        .map(|t| t.term.as_str())
        .collect();
    match terms.as_slice() {
        [] => {}
        [one] => sentence.push_str(&format!("; the most frequent term is {one}")),
        [init @ .., last] => sentence.push_str(&format!(
            "; the most frequent terms are {} and {last}",
            init.join(", ")
        )),
    }
    sentence.push('.');
    sentence
}

// ---- arguments -------------------------------------------------------------

fn user_id_schema() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "pattern": "^[^/]+$",
        "description": "The user whose memory is read: non-empty, without `/`."
    })
}

fn limit_schema(description: &str) -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "description": description})
}

fn check_user_id(user_id: &str) -> Result<(), ServiceError> {
    cortex_service::check_segment_id("user_id", user_id)
}

/// The `user_id` argument, once `caller` may act for that user (`403`
/// otherwise): checked before memory is read, and memory checks again.
fn user_id_arg(args: &Map<String, Value>, caller: Option<&Caller>) -> Result<String, ServiceError> {
    let user_id = args
        .get("user_id")
        .and_then(Value::as_str)
        .ok_or_else(|| ServiceError::invalid_argument("user_id", "is required: a string"))?;
    check_user_id(user_id)?;
    cortex_service::auth::authorize(caller, user_id)?;
    Ok(user_id.to_string())
}

fn string_arg(args: &Map<String, Value>, field: &str) -> Result<Option<String>, ServiceError> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ServiceError::invalid_argument(field, "must be a string")),
    }
}

fn limit_arg(args: &Map<String, Value>, default: usize) -> Result<usize, ServiceError> {
    let Some(value) = args.get("limit").filter(|v| !v.is_null()) else {
        return Ok(default);
    };
    value
        .as_u64()
        .or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        })
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ServiceError::invalid_argument(
                "limit",
                format!("must be an integer from 1 to {MAX_LIMIT}"),
            )
        })
}

/// The `user_id` of a resource URI, once `caller` may act for that user.
fn user_param(params: &Params, caller: Option<&Caller>) -> Result<String, ServiceError> {
    let user_id = params.get("user_id")?.to_string();
    check_user_id(&user_id)?;
    cortex_service::auth::authorize(caller, &user_id)?;
    Ok(user_id)
}

// ---- tools -----------------------------------------------------------------

pub(crate) fn get_context(cognition: Cognition) -> Tool {
    let schema = json!({
        "type": "object",
        "properties": {
            "user_id": user_id_schema(),
            "query": {
                "type": "string",
                "description": "Rank items by how many of the query's words (stop words aside) they contain; ties by recency."
            },
            "conversation_id": {
                "type": "string",
                "minLength": 1,
                "description": "Only items of this conversation."
            },
            "limit": limit_schema("How many items to return (default: the service's default_limit, 10).")
        },
        "required": ["user_id"]
    });
    Tool::new(
        "get_context",
        "The items of a user's memory most relevant to a query (or the newest), for an agent's context. \
         When memory is down it answers within its deadline with `degraded: true`, an empty context and a `reason`.",
        schema,
        move |ctx, args| {
            let cognition = cognition.clone();
            let caller = ctx.caller.clone();
            as_caller(&ctx, async move {
                let request = ContextRequest {
                    user_id: user_id_arg(&args, caller.as_ref())?,
                    query: string_arg(&args, "query")?,
                    conversation_id: string_arg(&args, "conversation_id")?,
                    limit: limit_arg(&args, cognition.config.default_limit)?,
                };
                cognition.context(request).await
            })
        },
    )
    .read_only()
}

pub(crate) fn analyze_conversation(cognition: Cognition) -> Tool {
    let schema = json!({
        "type": "object",
        "properties": {
            "user_id": user_id_schema(),
            "conversation_id": {"type": "string", "minLength": 1}
        },
        "required": ["user_id", "conversation_id"]
    });
    Tool::new(
        "analyze_conversation",
        "Statistics of one conversation: message count, first and last timestamps, average length in characters, \
         and the ten most frequent terms (stop words removed). 404 when the conversation has no items.",
        schema,
        move |ctx, args| {
            let cognition = cognition.clone();
            let caller = ctx.caller.clone();
            as_caller(&ctx, async move {
                let user_id = user_id_arg(&args, caller.as_ref())?;
                let conversation_id = string_arg(&args, "conversation_id")?
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| {
                        ServiceError::invalid_argument(
                            "conversation_id",
                            "must be a non-empty string",
                        )
                    })?;
                let items = cognition
                    .read(&Memory::conversation_uri(&user_id, &conversation_id))
                    .await?;
                if items.is_empty() {
                    return Err(ServiceError::resource_not_found(format!(
                        "conversation `{conversation_id}` of user `{user_id}` has no items"
                    ))
                    .with_details(
                        json!({"user_id": user_id, "conversation_id": conversation_id}),
                    ));
                }
                let stats = Stats::of(&items);
                Ok(json!({
                    "user_id": user_id,
                    "conversation_id": conversation_id,
                    "message_count": items.len(),
                    "first_timestamp": stats.first_timestamp,
                    "last_timestamp": stats.last_timestamp,
                    "average_length": stats.average_length,
                    "top_terms": stats.top_terms,
                }))
            })
        },
    )
    .read_only()
}

pub(crate) fn extract_entities(cognition: Cognition) -> Tool {
    let schema = json!({
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "The text to read. Give this or `user_id`."},
            "user_id": user_id_schema(),
            "limit": limit_schema("With `user_id`: how many of the newest items to read (default: default_limit, 10).")
        }
    });
    Tool::new(
        "extract_entities",
        "Finds e-mail addresses, http(s) URLs, @mentions, #hashtags and capitalised multi-word names, by simple rules, \
         in `text` or in the newest items of `user_id`. Ordered by count, then text.",
        schema,
        move |ctx, args| {
            let cognition = cognition.clone();
            let caller = ctx.caller.clone();
            as_caller(&ctx, async move {
                let text = string_arg(&args, "text")?;
                let has_user = args.get("user_id").is_some_and(|v| !v.is_null());
                match (text, has_user) {
                    (Some(_), true) => Err(ServiceError::invalid_argument(
                        "text",
                        "give either `text` or `user_id`, not both",
                    )),
                    (None, false) => Err(ServiceError::invalid_argument(
                        "text",
                        "give `text`, or `user_id` to read the user's newest items",
                    )),
                    (Some(text), false) => {
                        if args.get("limit").is_some_and(|v| !v.is_null()) {
                            return Err(ServiceError::invalid_argument(
                                "limit",
                                "applies only with `user_id`",
                            ));
                        }
                        Ok(json!({"entities": entities::extract(&text)}))
                    }
                    (None, true) => {
                        let user_id = user_id_arg(&args, caller.as_ref())?;
                        let limit = limit_arg(&args, cognition.config.default_limit)?;
                        let items = cognition
                            .read(&Memory::history_uri(&user_id, limit))
                            .await?;
                        let mut counter = EntityCounter::new();
                        for item in &items {
                            counter.add_text(&item.content);
                        }
                        Ok(json!({
                            "user_id": user_id,
                            "item_count": items.len(),
                            "entities": counter.into_entities(),
                        }))
                    }
                }
            })
        },
    )
    .read_only()
}

pub(crate) fn summarize_history(cognition: Cognition) -> Tool {
    let schema = json!({
        "type": "object",
        "properties": {
            "user_id": user_id_schema(),
            "limit": limit_schema("How many of the newest items to summarise (default 100).")
        },
        "required": ["user_id"]
    });
    Tool::new(
        "summarize_history",
        "Extractive statistics of a user's newest items (no model): item and conversation counts, first and last \
         timestamps, the ten most frequent terms, and one plain sentence built from those numbers.",
        schema,
        move |ctx, args| {
            let cognition = cognition.clone();
            let caller = ctx.caller.clone();
            as_caller(&ctx, async move {
                let user_id = user_id_arg(&args, caller.as_ref())?;
                let limit = limit_arg(&args, SUMMARY_DEFAULT_LIMIT)?;
                let items = cognition
                    .read(&Memory::history_uri(&user_id, limit))
                    .await?;
                let stats = Stats::of(&items);
                let summary = summary_sentence(&user_id, items.len(), limit, &stats);
                Ok(json!({
                    "user_id": user_id,
                    "item_count": items.len(),
                    "conversations": stats.conversations,
                    "first_timestamp": stats.first_timestamp,
                    "last_timestamp": stats.last_timestamp,
                    "top_terms": stats.top_terms,
                    "summary": summary,
                }))
            })
        },
    )
    .read_only()
}

/// Runs a handler's work as its caller: memory is read with the caller's
/// `Authorization` when it sent one (else with cognition's own token).
fn as_caller<F: std::future::Future>(
    ctx: &CallContext,
    work: F,
) -> impl std::future::Future<Output = F::Output> + use<F> {
    let authorization = ctx.headers.get("authorization").cloned();
    cortex_client::with_authorization(authorization, work)
}

// ---- resources -------------------------------------------------------------

pub(crate) fn context_resource(cognition: Cognition) -> Resource {
    Resource::new(
        "context/{user_id}",
        "get_context with its defaults: the newest default_limit items of a user.",
        move |ctx, params| {
            let cognition = cognition.clone();
            let caller = ctx.caller.clone();
            as_caller(&ctx, async move {
                let request = ContextRequest {
                    user_id: user_param(&params, caller.as_ref())?,
                    query: None,
                    conversation_id: None,
                    limit: cognition.config.default_limit,
                };
                cognition.context(request).await.map(ResourceContent::Json)
            })
        },
    )
}

pub(crate) fn context_query_resource(cognition: Cognition) -> Resource {
    Resource::new(
        "context/{user_id}/query/{query}",
        "get_context for a query (percent-encoded in the URI), default limit.",
        move |ctx, params| {
            let cognition = cognition.clone();
            let caller = ctx.caller.clone();
            as_caller(&ctx, async move {
                let request = ContextRequest {
                    user_id: user_param(&params, caller.as_ref())?,
                    query: Some(params.get("query")?.to_string()),
                    conversation_id: None,
                    limit: cognition.config.default_limit,
                };
                cognition.context(request).await.map(ResourceContent::Json)
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, content: &str, cid: Option<&str>) -> MemoryItem {
        MemoryItem {
            item_id: id,
            user_id: "u".into(),
            conversation_id: cid.map(str::to_string),
            content: content.into(),
            timestamp: format!("t{id}"),
        }
    }

    #[test]
    fn fetch_size_is_five_times_capped_but_never_below_limit() {
        assert_eq!(fetch_size(3), 15);
        assert_eq!(fetch_size(100), 200);
        assert_eq!(fetch_size(500), 500);
    }

    #[test]
    fn rank_orders_by_score_then_recency() {
        let items = vec![
            item(4, "nothing", None),
            item(3, "rust", None),
            item(2, "rust tokio", None),
            item(1, "tokio", None),
        ];
        let terms = text::query_terms("rust tokio");
        let ids: Vec<i64> = rank(items.clone(), &terms, 3)
            .iter()
            .filter_map(|v| v["item_id"].as_i64())
            .collect();
        assert_eq!(ids, [2, 3, 1]);
        let newest: Vec<Value> = rank(items, &[], 2);
        assert_eq!(newest[0]["item_id"], 4);
        assert_eq!(newest[1]["item_id"], 3);
        assert!(newest[0]["score"].is_null());
    }

    #[test]
    fn summary_sentences_read_well() {
        let items = vec![
            item(3, "rust tokio", Some("a")),
            item(2, "rust", Some("b")),
            item(1, "memory", None),
        ];
        let stats = Stats::of(&items);
        assert_eq!(
            summary_sentence("u", 3, 100, &stats),
            "User u has 3 stored items in 2 conversations, from t1 to t3; \
             the most frequent terms are rust, memory and tokio."
        );
        assert_eq!(
            summary_sentence("u", 3, 3, &stats),
            "The newest 3 items of user u are in 2 conversations, from t1 to t3; \
             the most frequent terms are rust, memory and tokio."
        );
        let one = Stats::of(&items[2..]);
        assert_eq!(
            summary_sentence("u", 1, 10, &one),
            "User u has 1 stored item outside any conversation, at t1; the most frequent term is memory."
        );
        assert_eq!(
            summary_sentence("u", 0, 10, &Stats::of(&[])),
            "User u has no stored items."
        );
    }
}
