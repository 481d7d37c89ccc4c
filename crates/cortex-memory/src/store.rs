//! Storage of the memory service: one interface, two backends.
//!
//! [`Storage`] is what the service needs from a database; [`Store`] is a
//! cheap, cloneable handle to one. Two backends implement it:
//!
//! * [`sqlite`] (the embedded default): one SQLite file, one process.
//! * [`postgres`] (beyond one machine): PostgreSQL, shared by any number
//!   of memory replicas (see `docs/postgres.md`).
//!
//! [`Store::connect`] picks one from a database address: `postgres://…`
//! or `postgresql://…` is PostgreSQL, anything else a SQLite file path.
//!
//! # Promises every backend keeps
//!
//! * A store that returned `Ok` is committed and durable.
//! * `item_id`s are never reused, and for one user they increase in commit
//!   order: a reader that saw item `N` of a user has already been able to
//!   see every earlier item of that user. That is what makes `item_id` the
//!   resumable event id of a user's stream.
//! * An idempotency key `(tool, key)` is recorded in the same transaction
//!   as the item it answers, so a key stores at most one item, whichever
//!   replica or process it reaches.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast;

pub mod postgres;
pub mod sqlite;

pub use postgres::{PgOptions, PostgresStore};
pub use sqlite::SqliteStore;

/// Content type used when the caller does not specify one.
pub const DEFAULT_CONTENT_TYPE: &str = "text/plain";
/// One stored item.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    /// Never reused identifier; for one user, strictly increasing in commit
    /// order (on every backend and replica). Doubles as the SSE event id.
    pub item_id: i64,
    /// Owner of the item.
    pub user_id: String,
    /// Conversation the item belongs to, if any.
    pub conversation_id: Option<String>,
    /// The stored content.
    pub content: String,
    /// MIME type of `content` (default [`DEFAULT_CONTENT_TYPE`]).
    pub content_type: String,
    /// Caller-supplied timestamp, or RFC 3339 UTC of the store time.
    pub timestamp: String,
    /// The full input object as received (unknown fields kept).
    pub input_data: Value,
    /// RFC 3339 UTC time the item was stored, set by the store.
    pub created_at: String,
    /// RFC 3339 UTC time of the last update, if any.
    pub updated_at: Option<String>,
}

/// An item to insert. Validation is the caller's job.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    /// Owner of the item.
    pub user_id: String,
    /// Conversation the item belongs to, if any.
    pub conversation_id: Option<String>,
    /// The content to store.
    pub content: String,
    /// MIME type of `content`.
    pub content_type: String,
    /// Caller-supplied timestamp; `None` means "the store time".
    pub timestamp: Option<String>,
    /// The full input object as received.
    pub input_data: Value,
}

impl NewItem {
    /// A plain-text item without conversation or timestamp, whose
    /// `input_data` is `{"user_id": …, "content": …}`.
    pub fn new(user_id: impl Into<String>, content: impl Into<String>) -> Self {
        let user_id = user_id.into();
        let content = content.into();
        let input_data = serde_json::json!({ "user_id": user_id, "content": content });
        Self {
            user_id,
            conversation_id: None,
            content,
            content_type: DEFAULT_CONTENT_TYPE.to_owned(),
            timestamp: None,
            input_data,
        }
    }
}

/// The bounds of one page of items: at most `items` items and about
/// `bytes` bytes of item text (content, `input_data` and the other text
/// columns, as stored). A page always holds at least one item when one is
/// left, however large it is, so a reader always gets past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    /// Most items in the page.
    pub items: usize,
    /// Most bytes of item text in the page (one item may exceed it alone).
    pub bytes: usize,
}

/// One page of items, and whether more follow it.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The items, in the order of the read.
    pub items: Vec<Item>,
    /// True when the read stopped at a bound with items left after it.
    pub more: bool,
}

/// Changes applied by [`Store::update`]; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemUpdate {
    /// New content.
    pub content: Option<String>,
    /// New content type.
    pub content_type: Option<String>,
    /// New conversation id (an existing one cannot be cleared).
    pub conversation_id: Option<String>,
    /// New input object.
    pub input_data: Option<Value>,
}

/// Errors returned by the [`Store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No item with this id exists.
    #[error("item {0} not found")]
    NotFound(i64),
    /// SQLite reported an error.
    #[error("database error at {path}: {source}")]
    Database {
        /// Path of the database file.
        path: String,
        /// The underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database cannot be opened or used (missing directory, newer
    /// schema, no WAL support, …).
    #[error("cannot open database at {path}: {reason}")]
    Open {
        /// Path of the database file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// PostgreSQL is unreachable or failed a statement. Retryable: the
    /// call may succeed once the database is back.
    #[error("PostgreSQL at {database}: {reason}")]
    Postgres {
        /// The database (its address without credentials).
        database: String,
        /// What failed, with the driver's message.
        reason: String,
    },
    /// The writer thread is gone; no more writes are possible.
    #[error("the store is closed")]
    Closed,
    /// A bug or a panic inside the store (e.g. in an idempotent response
    /// builder); only the affected request fails.
    #[error("internal store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// True when the same call may succeed later unchanged: the database
    /// was unreachable or failed a statement, as opposed to a missing item,
    /// a refused schema or a bug.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Database { .. } | StoreError::Postgres { .. }
        )
    }
}

/// Builds the remembered answer of an idempotent insert from the new item.
pub type ResponseBuilder = Box<dyn FnOnce(&Item) -> Value + Send>;

/// How committed items reach the live streams of a backend.
#[derive(Debug)]
pub enum Feed {
    /// Every item committed through this handle, in commit order, after
    /// commit (one process owns the database: SQLite). A receiver that lags
    /// re-reads from the database.
    Items(broadcast::Receiver<Item>),
    /// Wake-ups naming a user whose items changed, from any replica
    /// (an empty name wakes every stream). They are hints, not data: a
    /// stream woken re-reads the database after its last event id. One may
    /// be lost (a dropped listener connection), so a stream also re-reads
    /// after `poll` without one.
    WakeUps {
        /// The wake-ups.
        users: broadcast::Receiver<Arc<str>>,
        /// The longest a stream waits before re-reading anyway.
        poll: Duration,
    },
}

/// What the memory service needs from a database. Implemented by
/// [`SqliteStore`] and [`PostgresStore`]; used through [`Store`].
#[async_trait::async_trait]
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Which backend this is (`sqlite`, `postgres`), for health and status.
    fn backend(&self) -> &'static str;
    /// Inserts one item and returns it as stored.
    async fn insert(&self, item: NewItem) -> Result<Item, StoreError>;
    /// Inserts `item` and records `(tool, key)` with `response(&item)` in
    /// the same transaction; when the key exists nothing is inserted and the
    /// remembered answer is returned. Returns `(answer, replayed)`.
    async fn insert_idempotent(
        &self,
        item: NewItem,
        tool: &str,
        key: &str,
        response: ResponseBuilder,
    ) -> Result<(Value, bool), StoreError>;
    /// The answer remembered for `(tool, key)`, if any.
    async fn idempotency_get(&self, tool: &str, key: &str) -> Result<Option<Value>, StoreError>;
    /// Remembers `response` for `(tool, key)` unless one is stored (first
    /// writer wins); returns what is stored after the call.
    async fn idempotency_put(
        &self,
        tool: &str,
        key: &str,
        response: Value,
    ) -> Result<Value, StoreError>;
    /// One item; [`StoreError::NotFound`] if absent.
    async fn get(&self, item_id: i64) -> Result<Item, StoreError>;
    /// Applies `update` (`None` fields are kept) and sets `updated_at`.
    async fn update(&self, item_id: i64, update: ItemUpdate) -> Result<Item, StoreError>;
    /// Deletes one item; its id is never reused.
    async fn delete(&self, item_id: i64) -> Result<(), StoreError>;
    /// The user's items, newest first, at most `limit` (`None` = all).
    async fn history(&self, user_id: &str, limit: Option<usize>) -> Result<Vec<Item>, StoreError>;
    /// One page of the user's items below `before`, newest first.
    async fn history_page(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: PageLimit,
    ) -> Result<Page, StoreError>;
    /// One page of one conversation's items below `before`, newest first.
    async fn conversation_page(
        &self,
        user_id: &str,
        conversation_id: &str,
        before: Option<i64>,
        limit: PageLimit,
    ) -> Result<Page, StoreError>;
    /// One page of the user's items after `after`, oldest first.
    async fn items_after_page(
        &self,
        user_id: &str,
        after: i64,
        limit: PageLimit,
    ) -> Result<Page, StoreError>;
    /// The user's items of one conversation, newest first.
    async fn conversation(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<Vec<Item>, StoreError>;
    /// The user's items after `after`, oldest first, at most `limit`.
    async fn items_after(
        &self,
        user_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError>;
    /// A cheap check that the database answers, for `/health`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// How committed items reach live streams.
    fn feed(&self) -> Feed;
}

/// Handle to the memory store: one [`Storage`] backend behind an `Arc`.
/// Cheap to clone; every clone uses the same backend.
#[derive(Clone, Debug)]
pub struct Store(Arc<dyn Storage>);

impl Store {
    /// Opens or creates the SQLite database at `path` (see [`SqliteStore::open`]).
    pub async fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        SqliteStore::open(path).await.map(Store::new)
    }

    /// Opens the database `database` names: `postgres://…` or
    /// `postgresql://…` is PostgreSQL (with default [`PgOptions`]),
    /// `sqlite://PATH` or anything else a SQLite file path.
    pub async fn connect(database: &str) -> Result<Store, StoreError> {
        if is_postgres_url(database) {
            PostgresStore::connect(database, PgOptions::default())
                .await
                .map(Store::new)
        } else {
            let path = database.strip_prefix("sqlite://").unwrap_or(database);
            Store::open(path).await
        }
    }

    /// A handle to `storage`.
    pub fn new(storage: impl Storage) -> Store {
        Store(Arc::new(storage))
    }

    /// Which backend this is (`sqlite`, `postgres`).
    pub fn backend(&self) -> &'static str {
        self.0.backend()
    }

    /// Inserts one item and returns it as stored.
    pub async fn insert(&self, item: NewItem) -> Result<Item, StoreError> {
        self.0.insert(item).await
    }

    /// Inserts `item` and records the idempotency key `(tool, key)` in the
    /// same transaction, remembering `response(&item)` as the response body.
    ///
    /// If the key already exists for `tool`, nothing is inserted and the
    /// remembered response is returned. Returns `(response, replayed)`.
    /// Keep `response` cheap: it runs inside the transaction; if it panics,
    /// only this request fails.
    pub async fn insert_idempotent(
        &self,
        item: NewItem,
        tool: &str,
        key: &str,
        response: impl FnOnce(&Item) -> Value + Send + 'static,
    ) -> Result<(Value, bool), StoreError> {
        self.0
            .insert_idempotent(item, tool, key, Box::new(response))
            .await
    }

    /// The response remembered for `(tool, key)`, if any.
    pub async fn idempotency_get(
        &self,
        tool: &str,
        key: &str,
    ) -> Result<Option<Value>, StoreError> {
        self.0.idempotency_get(tool, key).await
    }

    /// Remembers `response` for `(tool, key)` unless a response is already
    /// stored (first writer wins); returns the response stored after the call.
    pub async fn idempotency_put(
        &self,
        tool: &str,
        key: &str,
        response: Value,
    ) -> Result<Value, StoreError> {
        self.0.idempotency_put(tool, key, response).await
    }

    /// One item; [`StoreError::NotFound`] if absent.
    pub async fn get(&self, item_id: i64) -> Result<Item, StoreError> {
        self.0.get(item_id).await
    }

    /// Applies `update` (`None` fields are kept) and sets `updated_at`.
    pub async fn update(&self, item_id: i64, update: ItemUpdate) -> Result<Item, StoreError> {
        self.0.update(item_id, update).await
    }

    /// Deletes one item; [`StoreError::NotFound`] if absent. Its id is never
    /// reused.
    pub async fn delete(&self, item_id: i64) -> Result<(), StoreError> {
        self.0.delete(item_id).await
    }

    /// The user's items, newest first, at most `limit` (`None` = all).
    pub async fn history(
        &self,
        user_id: &str,
        limit: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        self.0.history(user_id, limit).await
    }

    /// One page of the user's items, newest first, with ids below `before`
    /// (all of them when `None`): bounded in items and bytes by `limit`.
    pub async fn history_page(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        self.0.history_page(user_id, before, limit).await
    }

    /// One page of the user's items of one conversation, newest first, with
    /// ids below `before` (all when `None`): bounded by `limit`.
    pub async fn conversation_page(
        &self,
        user_id: &str,
        conversation_id: &str,
        before: Option<i64>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        self.0
            .conversation_page(user_id, conversation_id, before, limit)
            .await
    }

    /// One page of the user's items with `item_id > after`, oldest first:
    /// [`Store::items_after`] bounded in bytes as well as items.
    pub async fn items_after_page(
        &self,
        user_id: &str,
        after: i64,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        self.0.items_after_page(user_id, after, limit).await
    }

    /// The user's items of one conversation, newest first.
    pub async fn conversation(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<Vec<Item>, StoreError> {
        self.0.conversation(user_id, conversation_id).await
    }

    /// The user's items with `item_id > after`, oldest first, at most
    /// `limit`: the stream backlog, resume (`Last-Event-ID`) and catch-up.
    pub async fn items_after(
        &self,
        user_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        self.0.items_after(user_id, after, limit).await
    }

    /// Cheap liveness check for `/health`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }

    /// How committed items reach live streams (see [`Feed`]). For a
    /// gap-free stream, take the feed *before* reading the backlog.
    pub fn feed(&self) -> Feed {
        self.0.feed()
    }
}

/// True when `database` is a PostgreSQL address.
pub fn is_postgres_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}
