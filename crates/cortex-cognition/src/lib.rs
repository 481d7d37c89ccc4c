//! The Cortex cognition service: context for agents, conversation analysis,
//! entity extraction and history summaries, computed from the memory
//! service.
//!
//! Cognition stores nothing. Every call reads the memory service (by default
//! the service named `memory` in discovery) through an
//! [`McpClient`], normally a
//! [`NetworkMcpClient`] with its retries,
//! breakers and deadlines, and computes its answer from the items read. The
//! analysis is **extractive statistics only** — word tokens, counts, simple
//! rules; there is no machine-learning model, no embedding and no generated
//! text. (The "summary" of `summarize_history` is one sentence assembled
//! from the numbers it reports.)
//!
//! [`build`] returns a [`cortex_service::Service`]; serve it with
//! [`cortex_service::serve`], by convention on port [`DEFAULT_PORT`] (9100).
//! [`build_networked`] does the same over a
//! [`NetworkMcpClient`] and adds that
//! client's metrics (breaker state per memory endpoint, retries, calls) to
//! the service's `GET /metrics`.
//!
//! # Tools
//!
//! `user_id` is always a non-empty string without `/`; `limit` an integer
//! from 1 to [`MAX_LIMIT`]. Arguments are checked against each tool's schema
//! and a violation is a 400 `invalid_arguments` naming the field.
//!
//! | tool | arguments | result |
//! |---|---|---|
//! | `get_context` | `user_id`, `query?`, `conversation_id?`, `limit?` (default [`CognitionConfig::default_limit`]) | `{user_id, context: [{item_id, content, conversation_id, timestamp, score}], query, count, degraded}` |
//! | `analyze_conversation` | `user_id`, `conversation_id` | `{user_id, conversation_id, message_count, first_timestamp, last_timestamp, average_length, top_terms: [{term, count}]}`; 404 `resource_not_found` for a conversation without items |
//! | `extract_entities` | `text` — or `user_id`, `limit?` (default `default_limit`) | `{entities: [{text, kind, count}]}` (with `user_id`: also `user_id`, `item_count`) |
//! | `summarize_history` | `user_id`, `limit?` (default [`SUMMARY_DEFAULT_LIMIT`]) | `{user_id, item_count, conversations, first_timestamp, last_timestamp, top_terms, summary}` |
//!
//! Resources: `context/{user_id}` is `get_context` with its defaults;
//! `context/{user_id}/query/{query}` adds a (percent-encoded) query.
//!
//! ## Ranking (`get_context`)
//! Without a query (or with one that has no word in it) the context is the
//! newest `limit` items, read from `history/{user_id}/limit/{limit}`, and
//! every `score` is `null`. With a query, cognition reads the newest
//! `min(5 × limit, 200)` items (never fewer than `limit`), scores each by
//! term overlap — how many of the query's distinct lower-cased word tokens,
//! stop words aside, occur among the item's tokens (see [`text`]) — and keeps
//! the `limit` best, ties (including zero scores) newest first. With a
//! `conversation_id`, the items are the conversation's newest [`MAX_LIMIT`],
//! read from `history/{user_id}/conversation/{conversation_id}/limit/{MAX_LIMIT}`
//! (memory reads history a bounded page at a time), ranked the same way;
//! `analyze_conversation` reads the same.
//!
//! ## Statistics
//! Timestamps are the items' own; "first" is the earliest stored item's and
//! "last" the newest's (memory's storage order). `average_length` is in
//! characters, rounded to two decimals. `top_terms` are the ten most
//! frequent terms (tokens of two or more characters, stop words removed),
//! most frequent first, then alphabetical. `conversations` counts distinct
//! conversation ids among the items read. Entity rules are in [`entities`].
//!
//! # Degraded mode
//!
//! When memory cannot answer — connection refused or reset, a timeout, an
//! open circuit breaker, a 5xx or 429 answer, discovery not knowing it (every
//! error [`McpError::is_retryable`](cortex_client::McpError::is_retryable)
//! accepts, plus those two) — the tools answer differently:
//!
//! - **`get_context` answers 200 with a clearly marked degraded result**:
//!   `{"degraded": true, "context": [], "count": 0, "reason": "memory service
//!   is unavailable: …", …}`. Context is an enhancement: an agent asking for
//!   it should still be able to answer its user's turn, only less informed,
//!   rather than fail the turn because memory is down. The memory read runs
//!   under [`tokio::time::timeout`] with [`CognitionConfig::context_deadline`]
//!   (2 s by default), so the answer — full or degraded — always arrives
//!   within that deadline, whatever the client's own retry settings are. The
//!   context resources behave the same.
//! - **`analyze_conversation`, `extract_entities` (with `user_id`) and
//!   `summarize_history` answer 503 `unavailable`** (`memory service is
//!   unavailable: <reason>`): their whole answer is derived from memory, so
//!   an empty result would be a wrong answer, not a lesser one; the caller
//!   may retry. They are bounded by the memory client's `request_timeout`.
//!
//! Errors that are not about availability are passed on with the same code
//! whatever the tool: a request memory refuses (400 `invalid_arguments`, 403
//! `forbidden`, …) keeps its code and message, and a missing resource is 404.
//! The mapping is one function, [`memory::classify`].
//!
//! `GET /health` includes a `memory` check (memory's own health), so a
//! deployment can see that cognition runs degraded.
//!
//! # Authorization
//!
//! With authentication on (`ServiceConfig::auth`), every tool and resource
//! naming a `user_id` answers `403 forbidden` unless the caller is that
//! user or holds the role `admin` or `service`; this is checked before
//! memory is read. `extract_entities` on a `text` names no user.
//!
//! Memory is read as the caller: every handler runs inside
//! [`cortex_client::with_authorization`] with the caller's `Authorization`
//! header, so each request to memory made for that call carries it instead
//! of the client's own token (its `TokenProvider`), which is used only for
//! callers that sent none; memory checks it again. (`cortex up` and
//! `cortex serve cognition` give the client no token of its own.)
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use cortex_client::{NetworkMcpClient, StaticDiscovery};
//! use cortex_cognition::CognitionConfig;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let discovery = Arc::new(StaticDiscovery::new().with("memory", "http://127.0.0.1:9000"));
//! let memory = NetworkMcpClient::new(discovery)?;
//! let service = cortex_cognition::build_networked(memory, CognitionConfig::default())?;
//! let listener = tokio::net::TcpListener::bind(("0.0.0.0", cortex_cognition::DEFAULT_PORT)).await?;
//! cortex_service::serve(listener, service, Default::default(), cortex_service::shutdown_signal()).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use cortex_client::{McpClient, NetworkMcpClient};
use cortex_service::{BuildError, Service, ServiceBuilder};

pub mod entities;
pub mod memory;
mod service;
pub mod text;

/// The port cognition listens on by default.
pub const DEFAULT_PORT: u16 = 9100;

/// The service's name.
pub const SERVICE_NAME: &str = "cognition";

/// The largest `limit` any tool accepts.
pub const MAX_LIMIT: usize = 1000;

/// A ranked `get_context` reads this many times `limit` items…
pub const QUERY_FETCH_FACTOR: usize = 5;

/// …but at most this many (and never fewer than `limit`).
pub const QUERY_FETCH_CAP: usize = 200;

/// How many of the newest items `summarize_history` reads by default.
pub const SUMMARY_DEFAULT_LIMIT: usize = 100;

/// How many terms `top_terms` lists.
pub const TOP_TERMS: usize = 10;

/// How cognition reads memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CognitionConfig {
    /// The memory service's name in discovery (default `memory`).
    pub memory_service: String,
    /// How long `get_context` waits for memory before answering degraded
    /// (default 2 s).
    pub context_deadline: Duration,
    /// The `limit` of `get_context`, the context resources and
    /// `extract_entities` when none is given (default 10; clamped to
    /// `1..=MAX_LIMIT`).
    pub default_limit: usize,
}

impl Default for CognitionConfig {
    fn default() -> Self {
        Self {
            memory_service: "memory".into(),
            context_deadline: Duration::from_secs(2),
            default_limit: 10,
        }
    }
}

/// The cognition service, reading memory through `memory`.
pub fn build(memory: Arc<dyn McpClient>, config: CognitionConfig) -> Result<Service, BuildError> {
    builder(memory, config).build()
}

/// [`build`] over a network client, whose metrics — calls to memory by
/// operation, errors by kind, retries, breaker state and pool use per
/// endpoint — are appended to the service's `GET /metrics`.
pub fn build_networked(
    memory: NetworkMcpClient,
    config: CognitionConfig,
) -> Result<Service, BuildError> {
    let client = memory.clone();
    builder(Arc::new(memory), config)
        .extra_metrics(move || client.prometheus())
        .build()
}

fn builder(memory: Arc<dyn McpClient>, config: CognitionConfig) -> ServiceBuilder {
    let config = CognitionConfig {
        default_limit: config.default_limit.clamp(1, MAX_LIMIT),
        ..config
    };
    let reader = memory::Memory::new(memory, config.memory_service.clone());
    let cognition = service::Cognition::new(reader, config);
    let health = cognition.clone();
    Service::builder(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .health_check("memory", move || {
            let cognition = health.clone();
            async move { cognition.check_memory().await }
        })
        .tool(service::get_context(cognition.clone()))
        .tool(service::analyze_conversation(cognition.clone()))
        .tool(service::extract_entities(cognition.clone()))
        .tool(service::summarize_history(cognition.clone()))
        .resource(service::context_resource(cognition.clone()))
        .resource(service::context_query_resource(cognition))
}
