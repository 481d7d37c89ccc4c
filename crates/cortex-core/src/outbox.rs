//! The durable log of core: every accepted input, and every user's output
//! events, in one SQLite file.
//!
//! # Why one file, one transaction per step
//! An input's state and the event that tells its user about it change
//! together: an input becomes `stored` in the same transaction that appends
//! its `stored` event. So after a crash the log never says "stored" without
//! the event, or the event without the state, and a resumed output stream
//! sees each step exactly once.
//!
//! # What is fsynced
//! Only what core promises on: an input it answers 202 for is in the file
//! before the answer ([`Outbox::enqueue`] commits with
//! `synchronous=FULL`). Every other step commits with WAL's
//! `synchronous=NORMAL`: it survives the process being killed (SIGKILL),
//! and what the machine itself crashing could lose is harmless to lose. An
//! input recorded as stored is durable in memory already; a `stored` mark
//! lost sends the input back to the drain, whose repeat memory recognises
//! by its key; a `context` event is advice. This halves the fsyncs of an
//! input stored at once, and removes them from every other step.
//!
//! # Ordering
//! Inputs keep their acceptance order (SQLite's rowid, never reused:
//! `AUTOINCREMENT`); [`Outbox::next_pending`] hands out a user's oldest
//! pending input, so the drain stores each user's inputs in order. Events
//! get ids `1, 2, 3, …` per user, assigned under the connection's lock, so a
//! user's ids are dense and ordered: a stream resumes after the last id it
//! delivered.
//!
//! # Bounds
//! At most `max_pending` inputs wait at once; past that [`Outbox::enqueue`]
//! answers [`OutboxError::Full`] and writes nothing (the front door turns
//! that into 503 with `Retry-After`). Reads of events are paged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// Events kept for live subscribers that fall behind; one that falls
/// further reads the rest from the file.
const LIVE_CAPACITY: usize = 4096;

/// The most events one read returns.
pub const MAX_EVENTS_PER_READ: usize = 1000;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS inputs (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        input_id   TEXT NOT NULL UNIQUE,
        user_id    TEXT NOT NULL,
        data       TEXT NOT NULL,
        state      TEXT NOT NULL CHECK (state IN ('pending', 'stored', 'failed')),
        item_id    INTEGER,
        accepted   INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS inputs_pending ON inputs (state, user_id, seq);
    CREATE TABLE IF NOT EXISTS events (
        user_id  TEXT NOT NULL,
        event_id INTEGER NOT NULL,
        kind     TEXT NOT NULL,
        data     TEXT NOT NULL,
        PRIMARY KEY (user_id, event_id)
    ) WITHOUT ROWID;
";

/// Why the outbox could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// `max_pending` inputs already wait; nothing was written.
    #[error("the outbox is full: {pending} inputs wait to be stored (the limit)")]
    Full {
        /// How many wait.
        pending: usize,
    },
    /// The database failed (disk full, file removed, corrupt).
    #[error("outbox database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The database directory could not be made.
    #[error("outbox directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// Where an input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputState {
    /// Accepted; waiting in the outbox to be stored in memory.
    Pending,
    /// Stored in memory (`item_id` says where).
    Stored,
    /// Memory refused it for good (invalid, forbidden): it will never be
    /// stored, and its user was told with a `failed` event.
    Failed,
}

impl InputState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Stored => "stored",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "stored" => Self::Stored,
            "failed" => Self::Failed,
            _ => Self::Pending,
        }
    }
}

/// One input as core keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// Core's id of the input; also memory's idempotency key for it, so a
    /// repeated store (a lost acknowledgement, a restarted drain) stores
    /// nothing new.
    pub input_id: String,
    /// Whose input it is.
    pub user_id: String,
    /// What memory's `store_input` takes as `input_data`.
    pub data: Value,
    /// Where it is.
    pub state: InputState,
    /// Memory's item, once stored.
    pub item_id: Option<i64>,
    /// When core accepted it.
    pub accepted: SystemTime,
}

impl Input {
    /// A new input of `user_id` with a fresh id.
    pub fn new(user_id: impl Into<String>, data: Value) -> Self {
        Self::with_id(uuid::Uuid::new_v4().to_string(), user_id, data)
    }

    /// A new input whose id is given (derived from the caller's
    /// `Idempotency-Key`, so a retried request is the same input).
    pub fn with_id(input_id: impl Into<String>, user_id: impl Into<String>, data: Value) -> Self {
        Self {
            input_id: input_id.into(),
            user_id: user_id.into(),
            data,
            state: InputState::Pending,
            item_id: None,
            accepted: SystemTime::now(),
        }
    }
}

/// One event of a user's output log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Whose log.
    pub user_id: String,
    /// Its place in the user's log: `1, 2, 3, …`.
    pub event_id: i64,
    /// `input`, `pending`, `stored`, `failed`, `context` or `status`.
    pub kind: String,
    /// What happened.
    pub data: Value,
}

/// The outbox and output log of one core.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// One connection: every step is a short transaction, and the lock is
    /// what makes per-user event ids dense and ordered.
    conn: Mutex<Connection>,
    live: broadcast::Sender<Event>,
    max_pending: usize,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.inner.path)
            .field("max_pending", &self.inner.max_pending)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens (or creates) the outbox at `path`; its directory is made with
    /// mode 0700 and the file gets 0600 (it holds users' inputs).
    ///
    /// # Errors
    /// [`OutboxError::Directory`] or [`OutboxError::Database`].
    pub fn open(path: impl AsRef<Path>, max_pending: usize) -> Result<Self, OutboxError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            make_private_dir(dir).map_err(|source| OutboxError::Directory {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let db = |source| OutboxError::Database {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        restrict_file(&path).map_err(|source| OutboxError::Directory {
            path: path.clone(),
            source,
        })?;
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                conn: Mutex::new(conn),
                live,
                max_pending,
            }),
        })
    }

    /// Every event appended from now on, as it commits. A receiver that
    /// lags is told so (`RecvError::Lagged`) and reads the rest with
    /// [`Self::events_after`].
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.live.subscribe()
    }

    /// The input `input_id`, if core has it.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn input(&self, input_id: &str) -> Result<Option<Input>, OutboxError> {
        let input_id = input_id.to_string();
        self.run(move |conn| {
            conn.query_row(
                "SELECT input_id, user_id, data, state, item_id, accepted FROM inputs WHERE input_id = ?1",
                params![input_id],
                input_of_row,
            )
            .optional()
        })
        .await
    }

    /// Records an input that memory has already stored (item `item_id`),
    /// with its `input` event. A repeat of the same `input_id` records
    /// nothing and returns `None`.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn record_stored(
        &self,
        input: &Input,
        item_id: i64,
        item: Value,
    ) -> Result<Option<Event>, OutboxError> {
        let input = input.clone();
        let event = self
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                if !insert_input(&tx, &input, InputState::Stored, Some(item_id))? {
                    return Ok(None);
                }
                let event = append(
                    &tx,
                    &input.user_id,
                    "input",
                    serde_json::json!({"input_id": input.input_id, "item_id": item_id, "item": item}),
                )?;
                tx.commit()?;
                Ok(Some(event))
            })
            .await?;
        self.publish(event.iter());
        Ok(event)
    }

    /// Keeps `input` to be stored later, with its `pending` event. A repeat
    /// of the same `input_id` changes nothing and returns `None`.
    ///
    /// # Errors
    /// [`OutboxError::Full`] when `max_pending` inputs wait (nothing is
    /// written), [`OutboxError::Database`].
    pub async fn enqueue(&self, input: &Input) -> Result<Option<Event>, OutboxError> {
        let input = input.clone();
        let max = self.inner.max_pending;
        let event = self
            .run_outbox(move |conn| {
                fully_synced(conn, |conn| {
                    let tx = conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(Failure::Db)?;
                    let pending = pending_count(&tx).map_err(Failure::Db)?;
                    let exists: bool = tx
                        .query_row(
                            "SELECT 1 FROM inputs WHERE input_id = ?1",
                            params![input.input_id],
                            |_| Ok(true),
                        )
                        .optional()
                        .map_err(Failure::Db)?
                        .unwrap_or(false);
                    if exists {
                        return Ok(None);
                    }
                    if pending >= max {
                        return Err(Failure::Full { pending });
                    }
                    insert_input(&tx, &input, InputState::Pending, None).map_err(Failure::Db)?;
                    let event = append(
                        &tx,
                        &input.user_id,
                        "pending",
                        serde_json::json!({"input_id": input.input_id}),
                    )
                    .map_err(Failure::Db)?;
                    tx.commit().map_err(Failure::Db)?;
                    Ok(Some(event))
                })
            })
            .await?;
        self.publish(event.iter());
        Ok(event)
    }

    /// Whether `user_id` has inputs waiting: a new input of theirs must
    /// wait behind them, or their order would break.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn has_pending(&self, user_id: &str) -> Result<bool, OutboxError> {
        let user_id = user_id.to_string();
        self.run(move |conn| {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM inputs WHERE state = 'pending' AND user_id = ?1)",
                params![user_id],
                |row| row.get(0),
            )
        })
        .await
    }

    /// The users with inputs waiting, each once.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn pending_users(&self) -> Result<Vec<String>, OutboxError> {
        self.run(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT DISTINCT user_id FROM inputs WHERE state = 'pending' ORDER BY user_id",
            )?;
            let users = statement
                .query_map([], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(users)
        })
        .await
    }

    /// The oldest waiting input of `user_id`.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn next_pending(&self, user_id: &str) -> Result<Option<Input>, OutboxError> {
        let user_id = user_id.to_string();
        self.run(move |conn| {
            conn.query_row(
                "SELECT input_id, user_id, data, state, item_id, accepted FROM inputs \
                 WHERE state = 'pending' AND user_id = ?1 ORDER BY seq LIMIT 1",
                params![user_id],
                input_of_row,
            )
            .optional()
        })
        .await
    }

    /// A waiting input reached memory as `item_id`: marks it stored and
    /// appends its `stored` event, in one transaction. An input that is not
    /// pending (already stored by an earlier drain) changes nothing:
    /// `None`.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn mark_stored(
        &self,
        input_id: &str,
        item_id: i64,
    ) -> Result<Option<Event>, OutboxError> {
        self.settle(
            input_id,
            InputState::Stored,
            serde_json::json!({"item_id": item_id}),
        )
        .await
    }

    /// Memory refused a waiting input for good (`reason`): marks it failed
    /// and tells its user with a `failed` event, so it neither blocks the
    /// inputs behind it nor vanishes unseen.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn mark_failed(
        &self,
        input_id: &str,
        reason: &str,
    ) -> Result<Option<Event>, OutboxError> {
        self.settle(
            input_id,
            InputState::Failed,
            serde_json::json!({"reason": reason}),
        )
        .await
    }

    async fn settle(
        &self,
        input_id: &str,
        state: InputState,
        details: Value,
    ) -> Result<Option<Event>, OutboxError> {
        let input_id = input_id.to_string();
        let event = self
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let user: Option<String> = tx
                    .query_row(
                        "SELECT user_id FROM inputs WHERE input_id = ?1 AND state = 'pending'",
                        params![input_id],
                        |row| row.get(0),
                    )
                    .optional()?;
                let Some(user) = user else {
                    return Ok(None);
                };
                let item_id = details.get("item_id").and_then(Value::as_i64);
                tx.execute(
                    "UPDATE inputs SET state = ?1, item_id = ?2 WHERE input_id = ?3",
                    params![state.as_str(), item_id, input_id],
                )?;
                let mut data = serde_json::json!({"input_id": input_id});
                if let (Value::Object(data), Value::Object(details)) = (&mut data, details) {
                    data.extend(details);
                }
                let event = append(&tx, &user, state.as_str(), data)?;
                tx.commit()?;
                Ok(Some(event))
            })
            .await?;
        self.publish(event.iter());
        Ok(event)
    }

    /// Appends an event to `user_id`'s log (`context`, `status`).
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn append(
        &self,
        user_id: &str,
        kind: &str,
        data: Value,
    ) -> Result<Event, OutboxError> {
        let (user_id, kind) = (user_id.to_string(), kind.to_string());
        let event = self
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let event = append(&tx, &user_id, &kind, data)?;
                tx.commit()?;
                Ok(event)
            })
            .await?;
        self.publish(std::iter::once(&event));
        Ok(event)
    }

    /// `user_id`'s events after `after` (0: from the start), oldest first,
    /// at most `limit` (capped at [`MAX_EVENTS_PER_READ`]).
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn events_after(
        &self,
        user_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Event>, OutboxError> {
        let user_id = user_id.to_string();
        let limit = i64::try_from(limit.min(MAX_EVENTS_PER_READ)).unwrap_or(1000);
        self.run(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT event_id, kind, data FROM events WHERE user_id = ?1 AND event_id > ?2 \
                 ORDER BY event_id LIMIT ?3",
            )?;
            let events = statement
                .query_map(params![user_id, after, limit], |row| {
                    Ok(Event {
                        user_id: user_id.clone(),
                        event_id: row.get(0)?,
                        kind: row.get(1)?,
                        data: json_column(row, 2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(events)
        })
        .await
    }

    /// How many inputs wait, and how long the oldest has waited.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn depth(&self) -> Result<(usize, Option<Duration>), OutboxError> {
        self.run(|conn| {
            let pending = pending_count(conn)?;
            let oldest: Option<i64> = conn.query_row(
                "SELECT MIN(accepted) FROM inputs WHERE state = 'pending'",
                [],
                |row| row.get(0),
            )?;
            let age = oldest.map(|ms| {
                let accepted = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
                SystemTime::now()
                    .duration_since(accepted)
                    .unwrap_or_default()
            });
            Ok((pending, age))
        })
        .await
    }

    fn publish<'a>(&self, events: impl Iterator<Item = &'a Event>) {
        for event in events {
            // No subscriber is fine: the event is in the file.
            let _ = self.inner.live.send(event.clone());
        }
    }

    /// Runs `work` on the connection off the async threads.
    async fn run<T, F>(&self, work: F) -> Result<T, OutboxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.run_outbox(move |conn| work(conn).map_err(Failure::Db))
            .await
    }

    async fn run_outbox<T, F>(&self, work: F) -> Result<T, OutboxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    {
        let inner = self.inner.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut conn)
        })
        .await
        .unwrap_or_else(|join| {
            Err(Failure::Db(rusqlite::Error::ToSqlConversionFailure(
                format!("the outbox task failed: {join}").into(),
            )))
        });
        outcome.map_err(|failure| match failure {
            Failure::Full { pending } => OutboxError::Full { pending },
            Failure::Db(source) => OutboxError::Database {
                path: self.inner.path.clone(),
                source,
            },
        })
    }
}

/// What a step can fail with inside the blocking task.
enum Failure {
    Full { pending: usize },
    Db(rusqlite::Error),
}

/// Inserts `input` as `state`; false when its id is already there.
fn insert_input(
    conn: &Connection,
    input: &Input,
    state: InputState,
    item_id: Option<i64>,
) -> rusqlite::Result<bool> {
    let accepted = input
        .accepted
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO inputs (input_id, user_id, data, state, item_id, accepted) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            input.input_id,
            input.user_id,
            input.data.to_string(),
            state.as_str(),
            item_id,
            accepted
        ],
    )?;
    Ok(inserted == 1)
}

/// Appends to `user_id`'s log: the next id of that user.
fn append(conn: &Connection, user_id: &str, kind: &str, data: Value) -> rusqlite::Result<Event> {
    let event_id: i64 = conn.query_row(
        "SELECT COALESCE(MAX(event_id), 0) + 1 FROM events WHERE user_id = ?1",
        params![user_id],
        |row| row.get(0),
    )?;
    conn.execute(
        "INSERT INTO events (user_id, event_id, kind, data) VALUES (?1, ?2, ?3, ?4)",
        params![user_id, event_id, kind, data.to_string()],
    )?;
    Ok(Event {
        user_id: user_id.to_string(),
        event_id,
        kind: kind.to_string(),
        data,
    })
}

/// Runs `work` with `synchronous=FULL` (its commit is fsynced: it
/// survives the machine crashing), then goes back to NORMAL, whatever
/// `work` returns.
fn fully_synced<T>(
    conn: &mut Connection,
    work: impl FnOnce(&mut Connection) -> Result<T, Failure>,
) -> Result<T, Failure> {
    conn.execute_batch("PRAGMA synchronous = FULL")
        .map_err(Failure::Db)?;
    let result = work(conn);
    let restored = conn
        .execute_batch("PRAGMA synchronous = NORMAL")
        .map_err(Failure::Db);
    let value = result?;
    restored?;
    Ok(value)
}

fn pending_count(conn: &Connection) -> rusqlite::Result<usize> {
    let count: i64 = conn.query_row(
        "SELECT COUNT(*) FROM inputs WHERE state = 'pending'",
        [],
        |row| row.get(0),
    )?;
    Ok(usize::try_from(count).unwrap_or(0))
}

fn input_of_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Input> {
    let accepted: i64 = row.get(5)?;
    Ok(Input {
        input_id: row.get(0)?,
        user_id: row.get(1)?,
        data: json_column(row, 2)?,
        state: InputState::parse(&row.get::<_, String>(3)?),
        item_id: row.get(4)?,
        accepted: UNIX_EPOCH + Duration::from_millis(u64::try_from(accepted).unwrap_or(0)),
    })
}

fn json_column(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Value> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

#[cfg(unix)]
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// The database and its WAL files readable by their owner only.
#[cfg(unix)]
fn restrict_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = PathBuf::from(side);
        if side.exists() {
            std::fs::set_permissions(&side, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict_file(_path: &Path) -> std::io::Result<()> {
    Ok(())
}
