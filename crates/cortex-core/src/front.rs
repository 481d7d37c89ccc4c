//! The front door's logic, apart from HTTP: accepting an input, a user's
//! output stream and history, and what `/health` reports.
//!
//! # Accepting an input
//! Core stores an input in memory while the caller waits when it can, and
//! otherwise keeps it in the outbox for the drain, so an answer of 2xx
//! always means the input is durable somewhere:
//!
//! 1. Its id: derived from the caller's `Idempotency-Key` (and the user),
//!    so a retried request is the same input; else a new one.
//! 2. An id core already has is answered from the outbox as it stands.
//! 3. A user with inputs still waiting queues behind them: their order holds.
//! 4. Otherwise memory is asked, under the input id as its idempotency
//!    key, within [`CoreConfig::store_deadline`]. Stored: recorded with its
//!    `input` event, 200. Memory down, failing or slow: queued with its
//!    `pending` event, 202, and the drain woken. Memory refusing the input
//!    itself (invalid): the caller's error, nothing kept.
//!
//! # Whose identity reaches memory
//! Core stores as itself (a `service` token), on both paths: memory scopes
//! idempotency keys per calling identity, so the store made while the
//! caller waits and the drain's repeat of it after a lost acknowledgement
//! must come from the same identity to be recognised as one. The caller is
//! authenticated and authorized by core first, and the user id is always
//! the caller's own.

use std::sync::Arc;
use std::time::Duration;

use cortex_client::{
    CognitionServiceClient, ContextQuery, HistoryPage, McpError, MemoryServiceClient,
    NetworkMcpClient,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use crate::deps::Dependencies;
use crate::drain::{Drainer, refused_for_good};
use crate::outbox::{Input, InputState, Outbox, OutboxError};
use crate::stream::{Output, StreamSlots};

use crate::tickets::Tickets;

/// The longest `content` core accepts, in bytes: memory takes a request of
/// at most 1 MiB, and an input must never be accepted that memory would
/// refuse later.
pub const MAX_CONTENT_BYTES: usize = 256 * 1024;

/// The most `metadata` core accepts, in bytes of JSON: with the content,
/// well inside memory's 1 MiB request.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// The longest `Idempotency-Key`, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// How core behaves; [`CoreConfig::default`] suits most.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// How long `POST /input` waits for memory before queueing the input
    /// (the answer is then 202; memory may still store it, and the drain's
    /// repeat under the same key stores nothing new).
    pub store_deadline: Duration,
    /// The `Retry-After` of a 503 when the outbox is full.
    pub full_retry_after: Duration,
    /// How long a stream ticket is valid.
    pub ticket_ttl: Duration,
    /// Output streams one user may hold open at once.
    pub max_streams_per_user: usize,
    /// Output streams open at once in all.
    pub max_streams: usize,
    /// How often the dependencies' health is checked.
    pub health_interval: Duration,
    /// Items in each `context` event.
    pub context_limit: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            store_deadline: Duration::from_secs(3),
            full_retry_after: Duration::from_secs(5),
            ticket_ttl: Duration::from_secs(60),
            max_streams_per_user: 8,
            max_streams: 1024,
            health_interval: Duration::from_millis(500),
            context_limit: 5,
        }
    }
}

/// An input as a caller sends it (`POST /input`'s body).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInput {
    /// The text.
    #[serde(default)]
    pub content: Option<String>,
    /// The text, under the seed's other name.
    #[serde(default)]
    pub message: Option<String>,
    /// Its media type (memory's default: `text/plain`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// The conversation it belongs to.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Anything else the caller keeps with it.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

impl NewInput {
    /// What memory's `store_input` takes as `input_data`, after the checks
    /// memory would make (so nothing is accepted that memory refuses later).
    fn into_data(self) -> Result<Value, CoreError> {
        let content = match (self.content, self.message) {
            (Some(content), _) => content,
            (None, Some(message)) => message,
            (None, None) => {
                return Err(CoreError::Invalid {
                    field: "content",
                    message: "the input needs `content` (or `message`) holding its text".into(),
                });
            }
        };
        if content.len() > MAX_CONTENT_BYTES {
            return Err(CoreError::Invalid {
                field: "content",
                message: format!(
                    "is {} bytes; at most {MAX_CONTENT_BYTES} are accepted",
                    content.len()
                ),
            });
        }
        let mut data = Map::new();
        data.insert("content".into(), Value::String(content));
        if let Some(kind) = self.content_type {
            check_short("content_type", &kind)?;
            data.insert("content_type".into(), Value::String(kind));
        }
        if let Some(conversation) = self.conversation_id {
            check_short("conversation_id", &conversation)?;
            if conversation.is_empty() || conversation.contains('/') {
                return Err(CoreError::Invalid {
                    field: "conversation_id",
                    message: "must be non-empty and without `/`".into(),
                });
            }
            data.insert("conversation_id".into(), Value::String(conversation));
        }
        if let Some(metadata) = self.metadata {
            let size = serde_json::to_string(&metadata).map_or(usize::MAX, |text| text.len());
            if size > MAX_METADATA_BYTES {
                return Err(CoreError::Invalid {
                    field: "metadata",
                    message: format!(
                        "is {size} bytes as JSON; at most {MAX_METADATA_BYTES} are accepted"
                    ),
                });
            }
            data.insert("metadata".into(), Value::Object(metadata));
        }
        Ok(Value::Object(data))
    }
}

fn check_short(field: &'static str, value: &str) -> Result<(), CoreError> {
    if value.len() > cortex_service::MAX_SEGMENT_ID_BYTES {
        return Err(CoreError::Invalid {
            field,
            message: format!(
                "is {} bytes; at most {} are accepted",
                value.len(),
                cortex_service::MAX_SEGMENT_ID_BYTES
            ),
        });
    }
    Ok(())
}

/// What became of an accepted input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Memory has it: 200.
    Stored {
        /// Core's id of the input.
        input_id: String,
        /// Memory's item.
        item_id: i64,
    },
    /// The outbox has it; memory will: 202.
    Pending {
        /// Core's id of the input.
        input_id: String,
    },
}

impl Accepted {
    /// The answer's body.
    pub fn body(&self) -> Value {
        match self {
            Self::Stored { input_id, item_id } => {
                json!({"status": "stored", "input_id": input_id, "item_id": item_id})
            }
            Self::Pending { input_id } => {
                json!({"status": "storage_pending", "input_id": input_id})
            }
        }
    }
}

/// Why an input was not accepted. Nothing of it was kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// The input is malformed: 400.
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The outbox holds as many inputs as it may while memory is away: 503
    /// with `Retry-After`.
    #[error("memory is unavailable and {pending} inputs already wait to be stored; retry later")]
    Full {
        /// Inputs waiting.
        pending: usize,
        /// When to try again.
        retry_after: Duration,
    },
    /// Memory refused the input itself (not its own state): its status.
    #[error("memory refused the input: {0}")]
    Refused(#[source] McpError),
    /// An earlier request with this `Idempotency-Key` sent an input memory
    /// refused for good.
    #[error("the input with this Idempotency-Key was refused by memory: {0}")]
    Failed(String),
    /// Core's own storage failed: 500.
    #[error(transparent)]
    Outbox(OutboxError),
}

impl From<OutboxError> for CoreError {
    fn from(error: OutboxError) -> Self {
        match error {
            OutboxError::Full { pending } => Self::Full {
                pending,
                retry_after: Duration::ZERO,
            },
            other => Self::Outbox(other),
        }
    }
}

impl CoreError {
    /// As the service kit's error (the envelope and status it is sent with).
    pub fn service_error(&self) -> cortex_service::ServiceError {
        use cortex_service::ServiceError;
        match self {
            Self::Invalid { field, message } => ServiceError::invalid_argument(field, message),
            Self::Full { .. } => ServiceError::unavailable(self.to_string()),
            Self::Refused(McpError::Tool {
                status, message, ..
            }) => {
                let code = match status {
                    413 => cortex_proto::ErrorCode::PayloadTooLarge,
                    403 => cortex_proto::ErrorCode::Forbidden,
                    _ => cortex_proto::ErrorCode::InvalidArguments,
                };
                ServiceError::new(code, format!("memory refused the input: {message}"))
            }
            Self::Refused(error) => ServiceError::invalid_request(error.to_string()),
            Self::Failed(reason) => ServiceError::invalid_request(format!(
                "the input with this Idempotency-Key was refused by memory: {reason}"
            )),
            Self::Outbox(error) => {
                tracing::error!(%error, "the outbox failed");
                ServiceError::internal("core could not keep the input (its storage failed)")
            }
        }
    }
}

/// The core application: cheap to clone.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

struct Inner {
    outbox: Outbox,
    memory: MemoryServiceClient,
    cognition: CognitionServiceClient,
    drainer: Drainer,
    wake: Arc<Notify>,
    deps: Dependencies,
    tickets: Tickets,
    streams: StreamSlots,
    config: CoreConfig,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("outbox", &self.inner.outbox)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Core over `outbox`, reaching the services `memory` and `cognition`
    /// through `client` (which should send core's own `service` token when
    /// the services check tokens).
    pub fn new(outbox: Outbox, client: Arc<NetworkMcpClient>, config: CoreConfig) -> Self {
        let memory = MemoryServiceClient::new(client.clone());
        let drainer = Drainer::new(outbox.clone(), memory.clone());
        Self {
            inner: Arc::new(Inner {
                wake: drainer.waker(),
                drainer,
                cognition: CognitionServiceClient::new(client.clone()),
                deps: Dependencies::new(client, &["memory", "cognition"]),
                tickets: Tickets::new(config.ticket_ttl),
                streams: StreamSlots::new(config.max_streams, config.max_streams_per_user),
                outbox,
                memory,
                config,
            }),
        }
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    /// The settings.
    pub fn config(&self) -> &CoreConfig {
        &self.inner.config
    }

    /// The stream tickets.
    pub fn tickets(&self) -> &Tickets {
        &self.inner.tickets
    }

    /// Runs what works in the background until `stop` resolves: the drain,
    /// the dependencies' health checks (which wake the drain when memory
    /// comes back) and the `context` events.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        let drain_stop = Arc::new(Notify::new());
        let drainer = self.inner.drainer.clone();
        let stopped = drain_stop.clone();
        let drain = drainer.run(async move { stopped.notified().await });
        let deps = self.inner.deps.run(self.inner.config.health_interval, {
            let wake = self.inner.wake.clone();
            move |service, up| {
                if service == "memory" && up {
                    wake.notify_one();
                }
            }
        });
        let core = self.clone();
        let context = crate::context::run(self.inner.outbox.clone(), move |user, data| {
            let core = core.clone();
            async move { core.context_for(&user, &data).await }
        });
        tokio::select! {
            () = stop => {}
            () = drain => {}
            () = deps => {}
            () = context => {}
        }
        drain_stop.notify_one();
    }

    /// Accepts `input` from `user_id` (see the module documentation).
    ///
    /// # Errors
    /// [`CoreError`]; nothing of the input is kept.
    pub async fn accept(
        &self,
        user_id: &str,
        input: NewInput,
        idempotency_key: Option<&str>,
    ) -> Result<Accepted, CoreError> {
        // Memory reads a user's items back by a path segment: a user id
        // it could not serve (from a token's `sub`) is refused before
        // anything is kept.
        if user_id.is_empty() || user_id.contains('/') {
            return Err(CoreError::Invalid {
                field: "user_id",
                message: "must be non-empty and contain no `/`".into(),
            });
        }
        check_short("user_id", user_id)?;
        let data = input.into_data()?;
        let input_id = match idempotency_key {
            Some(key) => input_id_for(user_id, key)?,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let outbox = &self.inner.outbox;
        // Only a keyed request can name an input core already has.
        if idempotency_key.is_some()
            && let Some(known) = outbox.input(&input_id).await?
        {
            return answer_for(known);
        }
        let input = Input::with_id(input_id.clone(), user_id, data);
        if outbox.has_pending(user_id).await? {
            return self.queue(&input).await;
        }
        let stored = tokio::time::timeout(
            self.inner.config.store_deadline,
            self.inner
                .memory
                .store_input_with_key(user_id, input.data.clone(), &input_id),
        )
        .await;
        match stored {
            Ok(Ok(receipt)) => {
                let recorded = outbox
                    .record_stored(&input, receipt.item_id, input.data.clone())
                    .await?;
                if recorded.is_none() {
                    // A concurrent repeat recorded it first (or queued it):
                    // the outbox says where it is.
                    if let Some(known) = outbox.input(&input_id).await? {
                        return answer_for(known);
                    }
                }
                Ok(Accepted::Stored {
                    input_id,
                    item_id: receipt.item_id,
                })
            }
            Ok(Err(error)) if refused_for_good(&error) => Err(CoreError::Refused(error)),
            Ok(Err(error)) => {
                tracing::debug!(%error, input = %input_id, "memory cannot take the input now; queued");
                self.queue(&input).await
            }
            Err(_) => {
                tracing::debug!(input = %input_id, "memory did not answer in time; queued");
                self.queue(&input).await
            }
        }
    }

    async fn queue(&self, input: &Input) -> Result<Accepted, CoreError> {
        match self.inner.outbox.enqueue(input).await {
            Ok(Some(_)) => {
                self.inner.wake.notify_one();
                Ok(Accepted::Pending {
                    input_id: input.input_id.clone(),
                })
            }
            // A concurrent repeat got there first: answer as it stands.
            Ok(None) => match self.inner.outbox.input(&input.input_id).await? {
                Some(known) => answer_for(known),
                None => Ok(Accepted::Pending {
                    input_id: input.input_id.clone(),
                }),
            },
            Err(OutboxError::Full { pending }) => Err(CoreError::Full {
                pending,
                retry_after: self.inner.config.full_retry_after,
            }),
            Err(other) => Err(other.into()),
        }
    }

    /// A page of `user_id`'s items in memory, newest first, read as the
    /// caller (`authorization`, their own header, forwarded).
    ///
    /// # Errors
    /// Memory's, as the client reports them.
    pub async fn history(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: Option<usize>,
        authorization: Option<http::HeaderValue>,
    ) -> Result<HistoryPage, McpError> {
        let memory = self.inner.memory.clone();
        let user_id = user_id.to_string();
        cortex_client::with_authorization(authorization, async move {
            memory.get_history_page(&user_id, before, limit).await
        })
        .await
    }

    /// `user_id`'s output after event `after` (0: from the start), then live.
    ///
    /// # Errors
    /// 503 `unavailable` when too many streams are open (by default 8 per
    /// user, 1,024 in all).
    pub fn output(
        &self,
        user_id: &str,
        after: i64,
    ) -> Result<Output, cortex_service::ServiceError> {
        let slot = self.inner.streams.take(user_id)?;
        Ok(crate::stream::open(
            self.inner.outbox.clone(),
            self.inner.deps.watch(),
            user_id,
            after,
            slot,
        ))
    }

    /// Context for a stored input: cognition's `get_context` for its
    /// conversation.
    pub(crate) async fn context_for(&self, user_id: &str, data: &Value) -> Result<Value, McpError> {
        let query = ContextQuery {
            query: data
                .get("content")
                .and_then(Value::as_str)
                .map(str::to_string),
            conversation_id: data
                .get("conversation_id")
                .and_then(Value::as_str)
                .map(str::to_string),
            limit: Some(self.inner.config.context_limit),
        };
        self.inner.cognition.get_context(user_id, query).await
    }

    /// What `/health` reports about memory, cognition and the outbox.
    pub async fn health(&self) -> Value {
        let (depth, oldest) = match self.inner.outbox.depth().await {
            Ok(depth) => depth,
            Err(error) => return json!({"error": error.to_string()}),
        };
        json!({
            "outbox": {
                "pending": depth,
                "oldest_pending_secs": oldest.map(|age| age.as_secs_f64()),
            },
            "dependencies": self.inner.deps.report(),
        })
    }
}

/// The answer for an input core already has (a retried request).
fn answer_for(known: Input) -> Result<Accepted, CoreError> {
    match (known.state, known.item_id) {
        (InputState::Stored, Some(item_id)) => Ok(Accepted::Stored {
            input_id: known.input_id,
            item_id,
        }),
        (InputState::Failed, _) => Err(CoreError::Failed(
            "see the input's `failed` event on the output stream".into(),
        )),
        _ => Ok(Accepted::Pending {
            input_id: known.input_id,
        }),
    }
}

/// The input id of `user_id`'s request with `Idempotency-Key: key`: the same
/// for every retry, different for another user's same key (a name-based
/// UUID, so the id says nothing of the key).
///
/// # Errors
/// [`CoreError::Invalid`] for an empty or overlong key.
pub fn input_id_for(user_id: &str, key: &str) -> Result<String, CoreError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(CoreError::Invalid {
            field: "Idempotency-Key",
            message: format!("must be 1 to {MAX_KEY_BYTES} bytes"),
        });
    }
    // The user's length first: ("ab", "c") and ("a", "bc") never collide.
    let name = format!("{}:{user_id}:{key}", user_id.len());
    Ok(uuid::Uuid::new_v5(&INPUT_NAMESPACE, name.as_bytes()).to_string())
}

/// The namespace of [`input_id_for`]'s ids.
const INPUT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5c0f_7e2a_91d4_4b8e_a3f6_0c2d_e8b1_7a44);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_input_id_is_the_same_for_a_retry_and_apart_per_user() {
        let a = input_id_for("alice", "k1").unwrap();
        assert_eq!(a, input_id_for("alice", "k1").unwrap());
        assert_ne!(a, input_id_for("bob", "k1").unwrap());
        assert_ne!(a, input_id_for("alice", "k2").unwrap());
        assert_ne!(
            input_id_for("ab", "c").unwrap(),
            input_id_for("a", "bc").unwrap()
        );
        assert!(matches!(
            input_id_for("alice", ""),
            Err(CoreError::Invalid { .. })
        ));
        assert!(matches!(
            input_id_for("alice", &"k".repeat(MAX_KEY_BYTES + 1)),
            Err(CoreError::Invalid { .. })
        ));
    }

    #[test]
    fn an_input_is_checked_as_memory_would() {
        let input = |v: Value| serde_json::from_value::<NewInput>(v).unwrap().into_data();
        assert!(matches!(
            input(json!({})),
            Err(CoreError::Invalid {
                field: "content",
                ..
            })
        ));
        assert_eq!(
            input(json!({"message": "hi"})).unwrap(),
            json!({"content": "hi"})
        );
        let metadata: Map<String, Value> = (0..10_000)
            .map(|i| (format!("k{i}"), Value::String("v".repeat(10))))
            .collect();
        assert!(matches!(
            input(json!({"content": "a", "metadata": metadata})),
            Err(CoreError::Invalid {
                field: "metadata",
                ..
            })
        ));
        let big = "x".repeat(MAX_CONTENT_BYTES + 1);
        assert!(matches!(
            input(json!({"content": big})),
            Err(CoreError::Invalid { .. })
        ));
        assert!(matches!(
            input(json!({"content": "a", "conversation_id": "a/b"})),
            Err(CoreError::Invalid {
                field: "conversation_id",
                ..
            })
        ));
        assert!(
            serde_json::from_value::<NewInput>(json!({"content": "a", "user_id": "x"})).is_err()
        );
    }

    #[tokio::test]
    async fn a_user_id_memory_could_not_read_back_is_refused_and_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path().join("outbox.sqlite3"), 10).unwrap();
        // No service is reachable: a refusal must come before any call.
        let client =
            NetworkMcpClient::new(Arc::new(cortex_client::StaticDiscovery::new())).unwrap();
        let core = Core::new(outbox.clone(), Arc::new(client), CoreConfig::default());
        let input = || serde_json::from_value::<NewInput>(json!({"content": "hi"})).unwrap();
        for user in [
            "",
            "a/b",
            &"u".repeat(cortex_service::MAX_SEGMENT_ID_BYTES + 1),
        ] {
            let refused = core.accept(user, input(), None).await;
            assert!(
                matches!(
                    refused,
                    Err(CoreError::Invalid {
                        field: "user_id",
                        ..
                    })
                ),
                "{user:?}: {refused:?}"
            );
        }
        assert_eq!(outbox.depth().await.unwrap().0, 0);
    }
}
