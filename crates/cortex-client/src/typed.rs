//! Typed wrappers over [`McpClient`] for the Cortex services (the seed's
//! `MemoryServiceClient`), and [`call_batch`].

use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::api::{EventStream, McpClient};
use crate::error::McpError;

/// Percent-encodes one URI segment (a user or conversation id), so that a
/// `/`, `%`, `?` or space inside it stays inside the segment.
pub fn segment(value: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, SEGMENT).to_string()
}

/// What `store_input` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreReceipt {
    /// `stored`.
    pub status: String,
    /// The owner.
    pub user_id: String,
    /// The new item's id (also its event id on the history stream).
    pub item_id: i64,
}

fn decode<T: for<'de> Deserialize<'de>>(
    service: &str,
    tool: &str,
    value: Value,
) -> Result<T, McpError> {
    serde_json::from_value(value).map_err(|e| McpError::ServiceCall {
        service: service.into(),
        tool: tool.into(),
        endpoint: String::new(),
        attempts: 1,
        status: 200,
        message: format!("unexpected answer shape: {e}"),
    })
}

fn items(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// One page of a user's history, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The items, newest first.
    pub items: Vec<Value>,
    /// Where the next page starts: the `item_id` of the last item here, to
    /// pass as `before`; `None` when the page is empty, which is the end.
    pub next_before: Option<i64>,
}

/// The memory service, typed.
#[derive(Clone)]
pub struct MemoryServiceClient {
    client: Arc<dyn McpClient>,
    service: String,
}

impl std::fmt::Debug for MemoryServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryServiceClient")
            .field("service", &self.service)
            .finish()
    }
}

impl MemoryServiceClient {
    /// The service called `memory` through `client`.
    pub fn new(client: Arc<dyn McpClient>) -> Self {
        Self::named(client, "memory")
    }

    /// A memory service registered under another name.
    pub fn named(client: Arc<dyn McpClient>, service: impl Into<String>) -> Self {
        Self {
            client,
            service: service.into(),
        }
    }

    /// Stores one input; `input_data` holds `content` (or `message`) and any
    /// other fields.
    pub async fn store_input(
        &self,
        user_id: &str,
        input_data: Value,
    ) -> Result<StoreReceipt, McpError> {
        let answer = self
            .client
            .call_tool(
                &self.service,
                "store_input",
                json!({"user_id": user_id, "input_data": input_data}),
            )
            .await?;
        decode(&self.service, "store_input", answer)
    }

    /// As [`store_input`](Self::store_input), once per `idempotency_key`:
    /// a repeat with the same key (after a lost answer, or from a restarted
    /// caller) stores nothing and returns the first receipt. The memory
    /// service keeps keys durably, with the item.
    pub async fn store_input_with_key(
        &self,
        user_id: &str,
        input_data: Value,
        idempotency_key: &str,
    ) -> Result<StoreReceipt, McpError> {
        let answer = self
            .client
            .call_tool_with_key(
                &self.service,
                "store_input",
                json!({"user_id": user_id, "input_data": input_data}),
                idempotency_key,
            )
            .await?;
        decode(&self.service, "store_input", answer)
    }

    /// One item by id.
    pub async fn get_item(&self, item_id: i64) -> Result<Value, McpError> {
        self.client
            .call_tool(&self.service, "get_item", json!({"item_id": item_id}))
            .await
    }

    /// Changes the given fields (`content`, `content_type`,
    /// `conversation_id`, `input_data`) of an item; returns the item.
    pub async fn update_item(
        &self,
        item_id: i64,
        changes: Map<String, Value>,
    ) -> Result<Value, McpError> {
        let mut arguments = changes;
        arguments.insert("item_id".into(), json!(item_id));
        self.client
            .call_tool(&self.service, "update_item", Value::Object(arguments))
            .await
    }

    /// Deletes an item.
    pub async fn delete_item(&self, item_id: i64) -> Result<(), McpError> {
        self.client
            .call_tool(&self.service, "delete_item", json!({"item_id": item_id}))
            .await
            .map(|_| ())
    }

    /// A user's newest items, newest first: the service's first page (100
    /// items by default). [`get_history_page`](Self::get_history_page)
    /// reads further back.
    pub async fn get_history(&self, user_id: &str) -> Result<Vec<Value>, McpError> {
        let uri = format!("history/{}", segment(user_id));
        Ok(items(
            self.client
                .read_resource(&self.service, &uri)
                .await?
                .content,
        ))
    }

    /// One page of a user's history, newest first: the items older than
    /// `before` (the newest when `None`), at most `limit` of them (the
    /// service's default page when `None`; the service caps it, at 1000 by
    /// default). Read a whole history by passing each page's
    /// [`next_before`](HistoryPage::next_before) until it is `None`; memory
    /// on both ends stays bounded by a page.
    pub async fn get_history_page(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: Option<usize>,
    ) -> Result<HistoryPage, McpError> {
        let mut uri = format!("history/{}", segment(user_id));
        if let Some(before) = before {
            uri.push_str(&format!("/before/{before}"));
        }
        if let Some(limit) = limit {
            uri.push_str(&format!("/limit/{limit}"));
        }
        let items = items(
            self.client
                .read_resource(&self.service, &uri)
                .await?
                .content,
        );
        let next_before = items
            .last()
            .and_then(|item| item.get("item_id"))
            .and_then(Value::as_i64);
        Ok(HistoryPage { items, next_before })
    }

    /// The newest `limit` items of a user (the service caps `limit`, at
    /// 1000 by default).
    pub async fn get_recent(&self, user_id: &str, limit: usize) -> Result<Vec<Value>, McpError> {
        let uri = format!("history/{}/limit/{limit}", segment(user_id));
        Ok(items(
            self.client
                .read_resource(&self.service, &uri)
                .await?
                .content,
        ))
    }

    /// The items of one conversation, newest first.
    pub async fn get_conversation(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<Vec<Value>, McpError> {
        let uri = format!(
            "history/{}/conversation/{}",
            segment(user_id),
            segment(conversation_id)
        );
        Ok(items(
            self.client
                .read_resource(&self.service, &uri)
                .await?
                .content,
        ))
    }

    /// A user's items in id order, then each new one as it is stored.
    pub async fn stream_history(&self, user_id: &str) -> Result<EventStream, McpError> {
        let uri = format!("history/{}/stream", segment(user_id));
        self.client.stream_resource(&self.service, &uri).await
    }
}

/// What to ask `get_context` for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextQuery {
    /// Rank items by overlap with this text.
    pub query: Option<String>,
    /// Only this conversation.
    pub conversation_id: Option<String>,
    /// At most this many items.
    pub limit: Option<usize>,
}

/// The cognition service, typed.
#[derive(Clone)]
pub struct CognitionServiceClient {
    client: Arc<dyn McpClient>,
    service: String,
}

impl std::fmt::Debug for CognitionServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CognitionServiceClient")
            .field("service", &self.service)
            .finish()
    }
}

impl CognitionServiceClient {
    /// The service called `cognition` through `client`.
    pub fn new(client: Arc<dyn McpClient>) -> Self {
        Self {
            client,
            service: "cognition".into(),
        }
    }

    /// Context for a user's next turn.
    pub async fn get_context(&self, user_id: &str, query: ContextQuery) -> Result<Value, McpError> {
        let mut arguments = Map::new();
        arguments.insert("user_id".into(), json!(user_id));
        if let Some(q) = query.query {
            arguments.insert("query".into(), json!(q));
        }
        if let Some(c) = query.conversation_id {
            arguments.insert("conversation_id".into(), json!(c));
        }
        if let Some(l) = query.limit {
            arguments.insert("limit".into(), json!(l));
        }
        self.client
            .call_tool(&self.service, "get_context", Value::Object(arguments))
            .await
    }

    /// Statistics of one conversation.
    pub async fn analyze_conversation(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<Value, McpError> {
        self.client
            .call_tool(
                &self.service,
                "analyze_conversation",
                json!({"user_id": user_id, "conversation_id": conversation_id}),
            )
            .await
    }

    /// Entities (emails, URLs, mentions, hashtags, names) in a text.
    pub async fn extract_entities(&self, text: &str) -> Result<Value, McpError> {
        self.client
            .call_tool(&self.service, "extract_entities", json!({"text": text}))
            .await
    }

    /// A summary of a user's history.
    pub async fn summarize_history(&self, user_id: &str) -> Result<Value, McpError> {
        self.client
            .call_tool(
                &self.service,
                "summarize_history",
                json!({"user_id": user_id}),
            )
            .await
    }
}

/// One call of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchCall {
    /// The service.
    pub service: String,
    /// The tool.
    pub tool: String,
    /// Its arguments.
    pub arguments: Value,
}

impl BatchCall {
    /// A call of `tool` on `service`.
    pub fn new(service: impl Into<String>, tool: impl Into<String>, arguments: Value) -> Self {
        Self {
            service: service.into(),
            tool: tool.into(),
            arguments,
        }
    }
}

/// Runs `calls` with at most `concurrency` in flight; one result per call,
/// in the order of `calls`. One failure does not stop the others.
pub async fn call_batch(
    client: &dyn McpClient,
    calls: Vec<BatchCall>,
    concurrency: usize,
) -> Vec<Result<Value, McpError>> {
    futures::stream::iter(calls)
        .map(|call| async move {
            client
                .call_tool(&call.service, &call.tool, call.arguments)
                .await
        })
        .buffered(concurrency.max(1))
        .collect()
        .await
}
