//! The embedded backend: one SQLite file.
//!
//! # Design
//!
//! * **One writer.** Every mutation (insert, update, delete, idempotency
//!   record) is sent over a bounded channel to a single dedicated OS thread
//!   that owns the only read-write [`Connection`]. SQLite allows one writer at
//!   a time anyway; funnelling all writes through one connection means writers
//!   never contend for the lock, so "database is locked" cannot happen between
//!   our own writers.
//! * **Group commit.** The writer takes the first queued request, then drains
//!   whatever else is already waiting (up to `WRITE_BATCH_MAX`, 256) and runs the
//!   whole batch inside one `BEGIN IMMEDIATE … COMMIT`. With
//!   `synchronous=FULL` every commit costs an fsync, so under load N concurrent
//!   inserts cost one fsync instead of N, while an idle store still commits a
//!   lone request immediately (no timer, no added latency).
//! * **Failure isolation.** Each request of a batch runs inside its own
//!   `SAVEPOINT`; if it fails, only that savepoint is rolled back and the other
//!   requests of the batch still commit.
//! * **Replies after durability.** Callers are answered, and inserted items
//!   are published to subscribers, only after `COMMIT` returned, i.e. after
//!   the WAL was fsynced: an acknowledged insert survives `kill -9` and power
//!   loss, and a subscriber never sees an item that could still vanish.
//! * **Ordering.** `item_id` is an `AUTOINCREMENT` key assigned by the single
//!   writer in commit order, so id order == commit order == broadcast order.
//!   `AUTOINCREMENT` (rather than a plain rowid) guarantees ids are never
//!   reused even after the newest item is deleted, which matters because the id
//!   doubles as the SSE event id clients resume from.
//! * **Readers.** Reads use a small pool of read-only connections driven from
//!   [`tokio::task::spawn_blocking`]. In WAL mode readers see the last
//!   committed snapshot and never wait for the writer (nor block it).

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::Type;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior, ffi, params,
};
use serde_json::Value;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use tracing::{debug, trace, warn};

use super::{Item, ItemUpdate, NewItem, Page, PageLimit, StoreError};

/// Maximum number of write requests committed in one transaction.
const WRITE_BATCH_MAX: usize = 256;
/// Capacity of the queue in front of the writer thread. When it is full,
/// writers wait (back-pressure) instead of growing memory without bound.
const WRITE_QUEUE_CAPACITY: usize = 1024;
/// Number of read-only connections in the pool.
const READER_POOL_SIZE: usize = 4;
/// Capacity of the broadcast channel of committed items.
const EVENT_CAPACITY: usize = 4096;
/// How long SQLite retries internally on `SQLITE_BUSY` before giving up.
/// With a single writer and WAL readers this should never trigger, but other
/// processes (a backup tool, an `sqlite3` shell, a second `SqliteStore` on the same
/// file) can still hold locks briefly, and WAL recovery on open can make
/// readers momentarily busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQL expression for "now" as RFC 3339 UTC with milliseconds, e.g.
/// `2025-01-31T12:34:56.789Z`. SQLite keeps `'now'` stable within one
/// statement, so using it twice in a statement yields the same value. Doing it
/// in SQL avoids a date/time dependency.
macro_rules! now_sql {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ','now')"
    };
}

/// The columns of `items`, in the order [`row_to_item`] expects.
macro_rules! item_columns {
    () => {
        "item_id, user_id, conversation_id, content, content_type, timestamp, input_data, \
         created_at, updated_at"
    };
}

/// Schema migrations; entry `i` upgrades `user_version` `i` to `i + 1`.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE IF NOT EXISTS items (
        item_id         INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id         TEXT NOT NULL,
        conversation_id TEXT,
        content         TEXT NOT NULL,
        content_type    TEXT NOT NULL,
        timestamp       TEXT NOT NULL,
        input_data      TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        updated_at      TEXT
    );
    CREATE INDEX IF NOT EXISTS items_user ON items (user_id, item_id);
    CREATE INDEX IF NOT EXISTS items_user_conversation
        ON items (user_id, conversation_id, item_id);
    CREATE TABLE IF NOT EXISTS idempotency (
        tool       TEXT NOT NULL,
        key        TEXT NOT NULL,
        response   TEXT NOT NULL,
        created_at TEXT,
        PRIMARY KEY (tool, key)
    );
"];

const INSERT_ITEM_SQL: &str = concat!(
    "INSERT INTO items (user_id, conversation_id, content, content_type, timestamp, input_data, \
     created_at, updated_at) VALUES (?1, ?2, ?3, ?4, COALESCE(?5, ",
    now_sql!(),
    "), ?6, ",
    now_sql!(),
    ", NULL) RETURNING item_id, timestamp, created_at"
);
const UPDATE_ITEM_SQL: &str = concat!(
    "UPDATE items SET content = COALESCE(?2, content), \
     content_type = COALESCE(?3, content_type), \
     conversation_id = COALESCE(?4, conversation_id), \
     input_data = COALESCE(?5, input_data), updated_at = ",
    now_sql!(),
    " WHERE item_id = ?1 RETURNING ",
    item_columns!()
);
const DELETE_ITEM_SQL: &str = "DELETE FROM items WHERE item_id = ?1";
const GET_ITEM_SQL: &str = concat!("SELECT ", item_columns!(), " FROM items WHERE item_id = ?1");
const HISTORY_SQL: &str = concat!(
    "SELECT ",
    item_columns!(),
    " FROM items WHERE user_id = ?1 ORDER BY item_id DESC LIMIT ?2"
);
const CONVERSATION_SQL: &str = concat!(
    "SELECT ",
    item_columns!(),
    " FROM items WHERE user_id = ?1 AND conversation_id = ?2 ORDER BY item_id DESC"
);
const HISTORY_BEFORE_SQL: &str = concat!(
    "SELECT ",
    item_columns!(),
    " FROM items WHERE user_id = ?1 AND item_id < ?2 ORDER BY item_id DESC LIMIT ?3"
);
const CONVERSATION_BEFORE_SQL: &str = concat!(
    "SELECT ",
    item_columns!(),
    " FROM items WHERE user_id = ?1 AND conversation_id = ?2 AND item_id < ?3 \
     ORDER BY item_id DESC LIMIT ?4"
);
const ITEMS_AFTER_SQL: &str = concat!(
    "SELECT ",
    item_columns!(),
    " FROM items WHERE user_id = ?1 AND item_id > ?2 ORDER BY item_id ASC LIMIT ?3"
);
const IDEMPOTENCY_GET_SQL: &str = "SELECT response FROM idempotency WHERE tool = ?1 AND key = ?2";
const IDEMPOTENCY_INSERT_SQL: &str = concat!(
    "INSERT INTO idempotency (tool, key, response, created_at) VALUES (?1, ?2, ?3, ",
    now_sql!(),
    ") ON CONFLICT (tool, key) DO NOTHING"
);

/// Maps a [`rusqlite::Error`] to [`StoreError::Database`] for `path`.
fn db_err(path: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Database {
        path: path.to_owned(),
        source,
    }
}

/// A copy of `err` for reporting one batch-wide failure to every request of
/// the batch (`rusqlite::Error` is not `Clone`).
fn duplicate_error(err: &rusqlite::Error) -> rusqlite::Error {
    match err {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

fn parse_json(column: usize, text: &str) -> rusqlite::Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, Type::Text, Box::new(e)))
}

fn row_to_item(row: &Row<'_>) -> rusqlite::Result<Item> {
    row_to_sized_item(row).map(|(item, _)| item)
}

/// An item and the bytes of its text as stored (what a page counts).
fn row_to_sized_item(row: &Row<'_>) -> rusqlite::Result<(Item, usize)> {
    let input_data: String = row.get(6)?;
    let item = Item {
        item_id: row.get(0)?,
        user_id: row.get(1)?,
        conversation_id: row.get(2)?,
        content: row.get(3)?,
        content_type: row.get(4)?,
        timestamp: row.get(5)?,
        input_data: parse_json(6, &input_data)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
    };
    let size = input_data.len()
        + item.user_id.len()
        + item.conversation_id.as_ref().map_or(0, String::len)
        + item.content.len()
        + item.content_type.len()
        + item.timestamp.len()
        + item.created_at.len()
        + item.updated_at.as_ref().map_or(0, String::len);
    Ok((item, size))
}

/// Reads one page with `sql`, whose last parameter is the row limit: rows
/// are read one at a time and the read stops at `limit`, so a page never
/// holds more than its bounds in memory, however many rows match.
fn read_page(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    limit: PageLimit,
) -> rusqlite::Result<Page> {
    let items = limit.items.max(1);
    // One row more than the page holds tells whether more follow.
    let row_limit = sql_limit(Some(items.saturating_add(1)));
    let mut all: Vec<&dyn rusqlite::ToSql> = params.to_vec();
    all.push(&row_limit);
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(all.as_slice())?;
    let mut page = Page {
        items: Vec::new(),
        more: false,
    };
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        let (item, size) = row_to_sized_item(row)?;
        let full = page.items.len() >= items
            || (!page.items.is_empty() && bytes.saturating_add(size) > limit.bytes);
        if full {
            page.more = true;
            break;
        }
        bytes = bytes.saturating_add(size);
        page.items.push(item);
    }
    Ok(page)
}

fn sql_limit(limit: Option<usize>) -> i64 {
    // SQLite treats a negative LIMIT as "no limit".
    limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

use super::ResponseBuilder;

/// A mutation executed by the writer thread.
enum Command {
    Insert {
        item: NewItem,
        idempotency: Option<(String, String, ResponseBuilder)>,
    },
    Update {
        item_id: i64,
        update: ItemUpdate,
    },
    Delete {
        item_id: i64,
    },
    IdempotencyPut {
        tool: String,
        key: String,
        response: Value,
    },
}

/// Result of a [`Command`].
#[derive(Debug)]
enum Reply {
    /// A new item was committed (`response` is set for idempotent inserts).
    Inserted {
        item: Item,
        response: Option<Value>,
    },
    /// The idempotency key existed; nothing was inserted.
    Replayed(Value),
    Updated(Item),
    Deleted,
    /// The idempotency record stored after the put.
    Stored(Value),
}

struct Request {
    command: Command,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

/// State owned by the writer thread.
struct Writer {
    conn: Connection,
    path: String,
    events: broadcast::Sender<Item>,
}

impl Writer {
    /// Runs until every [`SqliteStore`] clone (and so every channel sender) is gone
    /// and the queue is drained. Returns the number of batches run.
    fn run(mut self, mut requests: mpsc::Receiver<Request>) -> u64 {
        debug!(path = %self.path, "memory store writer started");
        let mut batches = 0_u64;
        while let Some(first) = requests.blocking_recv() {
            // Group commit: take what is already queued, never wait for more.
            let mut batch = Vec::with_capacity(16);
            batch.push(first);
            while batch.len() < WRITE_BATCH_MAX {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
            batches += 1;
        }
        debug!(path = %self.path, batches, "memory store writer stopped");
        batches
    }

    /// Executes `batch` in one transaction, then publishes and replies.
    fn commit_batch(&mut self, batch: Vec<Request>) {
        let Writer { conn, path, events } = self;
        let size = batch.len();
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(err) => {
                warn!(path = %path, error = %err, "cannot begin write transaction");
                for request in batch {
                    let _ = request.reply.send(Err(StoreError::Database {
                        path: path.clone(),
                        source: duplicate_error(&err),
                    }));
                }
                return;
            }
        };

        let mut done = Vec::with_capacity(size);
        let mut aborted = None;
        let mut pending = batch.into_iter();
        for request in pending.by_ref() {
            let result = run_in_savepoint(&mut tx, path, request.command);
            done.push((request.reply, result));
            // On some errors (SQLITE_FULL, SQLITE_IOERR, …) SQLite rolls back
            // the whole transaction by itself. Continuing would run the rest
            // in autocommit mode and we would report rolled-back requests as
            // committed, so the whole batch fails instead.
            if tx.is_autocommit() {
                aborted = Some(rusqlite::Error::SqliteFailure(
                    ffi::Error::new(ffi::SQLITE_ABORT),
                    Some("write batch rolled back by SQLite after an error".to_owned()),
                ));
                break;
            }
        }

        let committed = match aborted {
            Some(err) => {
                drop(tx);
                Err(err)
            }
            // One COMMIT, hence one fsync, for the whole batch.
            None => tx.commit(),
        };

        match committed {
            Ok(()) => {
                trace!(size, "committed write batch");
                // Publish first, then reply: when `insert` returns, every
                // existing subscriber already has the item queued. Batch order
                // is insertion order is item_id order.
                for (_, result) in &done {
                    if let Ok(Reply::Inserted { item, .. }) = result {
                        // No receivers is not an error.
                        let _ = events.send(item.clone());
                    }
                }
                for (reply, result) in done {
                    // The caller may have gone away; the write stands anyway.
                    let _ = reply.send(result);
                }
            }
            Err(err) => {
                warn!(path = %path, error = %err, size, "write batch failed");
                let failed = |result: Result<Reply, StoreError>| match result {
                    Ok(_) => Err(StoreError::Database {
                        path: path.clone(),
                        source: duplicate_error(&err),
                    }),
                    Err(e) => Err(e),
                };
                for (reply, result) in done {
                    let _ = reply.send(failed(result));
                }
                // Requests not run because SQLite aborted the transaction.
                for request in pending {
                    let _ = request.reply.send(Err(StoreError::Database {
                        path: path.clone(),
                        source: duplicate_error(&err),
                    }));
                }
            }
        }
    }
}

/// Runs one command inside its own savepoint so that its failure rolls back
/// only its own changes, not those of the other requests in the batch.
fn run_in_savepoint(
    tx: &mut Transaction<'_>,
    path: &str,
    command: Command,
) -> Result<Reply, StoreError> {
    let savepoint = tx.savepoint().map_err(db_err(path))?;
    // On error the savepoint is dropped, which rolls it back.
    let reply = apply(&savepoint, path, command)?;
    savepoint.commit().map_err(db_err(path))?;
    Ok(reply)
}

fn apply(conn: &Connection, path: &str, command: Command) -> Result<Reply, StoreError> {
    let db = db_err(path);
    match command {
        Command::Insert {
            item,
            idempotency: None,
        } => Ok(Reply::Inserted {
            item: insert_row(conn, item).map_err(&db)?,
            response: None,
        }),
        Command::Insert {
            item,
            idempotency: Some((tool, key, build)),
        } => {
            // Checked in the same transaction as the insert: two requests with
            // the same key, even in one batch, insert exactly once.
            if let Some(response) = idempotency_lookup(conn, &tool, &key).map_err(&db)? {
                return Ok(Reply::Replayed(response));
            }
            let item = insert_row(conn, item).map_err(&db)?;
            // The builder is caller code running on the writer thread; a panic
            // must fail this request only, not kill the writer.
            let response = catch_unwind(AssertUnwindSafe(|| build(&item))).map_err(|_| {
                StoreError::Internal("idempotent response builder panicked".to_owned())
            })?;
            conn.prepare_cached(IDEMPOTENCY_INSERT_SQL)
                .and_then(|mut stmt| stmt.execute(params![tool, key, response.to_string()]))
                .map_err(&db)?;
            Ok(Reply::Inserted {
                item,
                response: Some(response),
            })
        }
        Command::Update { item_id, update } => {
            let input_data = update.input_data.as_ref().map(Value::to_string);
            let updated = conn
                .prepare_cached(UPDATE_ITEM_SQL)
                .and_then(|mut stmt| {
                    stmt.query_row(
                        params![
                            item_id,
                            update.content,
                            update.content_type,
                            update.conversation_id,
                            input_data
                        ],
                        row_to_item,
                    )
                    .optional()
                })
                .map_err(&db)?;
            updated
                .map(Reply::Updated)
                .ok_or(StoreError::NotFound(item_id))
        }
        Command::Delete { item_id } => {
            let deleted = conn
                .prepare_cached(DELETE_ITEM_SQL)
                .and_then(|mut stmt| stmt.execute(params![item_id]))
                .map_err(&db)?;
            if deleted == 0 {
                Err(StoreError::NotFound(item_id))
            } else {
                Ok(Reply::Deleted)
            }
        }
        Command::IdempotencyPut {
            tool,
            key,
            response,
        } => {
            conn.prepare_cached(IDEMPOTENCY_INSERT_SQL)
                .and_then(|mut stmt| stmt.execute(params![tool, key, response.to_string()]))
                .map_err(&db)?;
            // First writer wins: return what is stored now.
            let stored = idempotency_lookup(conn, &tool, &key).map_err(&db)?;
            stored.map(Reply::Stored).ok_or_else(|| {
                StoreError::Internal("idempotency record missing after insert".to_owned())
            })
        }
    }
}

fn insert_row(conn: &Connection, item: NewItem) -> rusqlite::Result<Item> {
    let mut stmt = conn.prepare_cached(INSERT_ITEM_SQL)?;
    let (item_id, timestamp, created_at) = stmt.query_row(
        params![
            item.user_id,
            item.conversation_id,
            item.content,
            item.content_type,
            item.timestamp,
            item.input_data.to_string()
        ],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    Ok(Item {
        item_id,
        user_id: item.user_id,
        conversation_id: item.conversation_id,
        content: item.content,
        content_type: item.content_type,
        timestamp,
        input_data: item.input_data,
        created_at,
        updated_at: None,
    })
}

fn idempotency_lookup(conn: &Connection, tool: &str, key: &str) -> rusqlite::Result<Option<Value>> {
    let mut stmt = conn.prepare_cached(IDEMPOTENCY_GET_SQL)?;
    let text: Option<String> = stmt
        .query_row(params![tool, key], |row| row.get(0))
        .optional()?;
    text.map(|t| parse_json(0, &t)).transpose()
}

// ---------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------

fn open_writer_connection(path: &Path, label: &str) -> Result<Connection, StoreError> {
    let db = db_err(label);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(StoreError::Open {
            path: label.to_owned(),
            reason: format!(
                "parent directory {} does not exist or is not a directory",
                parent.display()
            ),
        });
    }
    make_private(path).map_err(|e| StoreError::Open {
        path: label.to_owned(),
        reason: format!("cannot create it readable by its owner only: {e}"),
    })?;
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(&db)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&db)?;
    // WAL: readers see the last commit and never block on (or block) the
    // writer; a commit is an append to the WAL.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(&db)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open {
            path: label.to_owned(),
            reason: format!("WAL journal mode is not available (got {mode:?})"),
        });
    }
    // FULL: the WAL is fsynced at every commit, so an acknowledged write
    // survives power loss (NORMAL would only survive a process crash).
    conn.execute_batch("PRAGMA synchronous = FULL;")
        .map_err(&db)?;
    migrate(&mut conn, label)?;
    Ok(conn)
}

/// The database holds users' data, so it is readable and writable by its
/// owner only (0600). SQLite would create it 0644 (less the umask) and
/// gives its `-wal` and `-shm` files the database file's mode when it
/// creates them; so the file is created, or tightened, to 0600 before
/// SQLite opens it, and the side files of an older run are tightened too.
#[cfg(unix)]
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let private = std::fs::Permissions::from_mode(0o600);
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(private.clone())?;
    }
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = Path::new(&side);
        if let Ok(metadata) = std::fs::metadata(side)
            && metadata.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(side, private.clone())?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Brings the schema to the latest version, tracked in `PRAGMA user_version`.
fn migrate(conn: &mut Connection, label: &str) -> Result<(), StoreError> {
    let db = db_err(label);
    let latest = MIGRATIONS.len();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&db)?;
    let current: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(&db)?;
    let current = usize::try_from(current)
        .ok()
        .filter(|&v| v <= latest)
        .ok_or_else(|| StoreError::Open {
            path: label.to_owned(),
            reason: format!(
                "schema version {current} is not supported (this build knows versions 0..={latest})"
            ),
        })?;
    if current == latest {
        return Ok(());
    }
    for migration in &MIGRATIONS[current..] {
        tx.execute_batch(migration).map_err(&db)?;
    }
    tx.execute_batch(&format!("PRAGMA user_version = {latest};"))
        .map_err(&db)?;
    tx.commit().map_err(&db)?;
    debug!(
        path = label,
        from = current,
        to = latest,
        "migrated memory store schema"
    );
    Ok(())
}

fn open_reader_connection(path: &Path, label: &str) -> Result<Connection, StoreError> {
    let db = db_err(label);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(&db)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&db)?;
    Ok(conn)
}

// ---------------------------------------------------------------------------
// Reader pool
// ---------------------------------------------------------------------------

/// Read-only connections; `permits` bounds concurrent readers to the pool
/// size so blocking threads are not flooded.
struct ReaderPool {
    path: PathBuf,
    display: String,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReaderPool {
    fn checkout(&self) -> Result<Connection, StoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            // Only if a connection was lost (a read panicked): replace it.
            None => open_reader_connection(&self.path, &self.display),
        }
    }

    fn checkin(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }
}

// ---------------------------------------------------------------------------
// SqliteStore
// ---------------------------------------------------------------------------

/// Handle to the memory store. Cheap to clone; all clones share one writer
/// thread, one reader pool and one broadcast channel. Dropping the last clone
/// stops the writer thread (after it finished the requests already queued).
#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<Request>,
    readers: Arc<ReaderPool>,
    events: broadcast::Sender<Item>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.readers.display)
            .field("closed", &self.writer.is_closed())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens or creates the SQLite database at `path`.
    ///
    /// The parent directory must exist ([`StoreError::Open`] naming the path
    /// otherwise). Sets WAL mode, `synchronous=FULL` (an acknowledged write
    /// survives `kill -9` and power loss) and a busy timeout, migrates the
    /// schema, opens the reader pool and starts the writer thread.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let display = path.display().to_string();
        let opened = tokio::task::spawn_blocking(move || {
            let writer = open_writer_connection(&path, &display)?;
            // Readers are opened after the writer switched the file to WAL.
            let readers = (0..READER_POOL_SIZE)
                .map(|_| open_reader_connection(&path, &display))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, StoreError>((writer, readers, path, display))
        })
        .await
        .map_err(|e| StoreError::Internal(format!("open task failed: {e}")))?;
        let (conn, readers, path, display) = opened?;

        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (writer_tx, writer_rx) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let writer = Writer {
            conn,
            path: display.clone(),
            events: events.clone(),
        };
        std::thread::Builder::new()
            .name("memory-writer".to_owned())
            .spawn(move || {
                writer.run(writer_rx);
            })
            .map_err(|e| StoreError::Open {
                path: display.clone(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;

        Ok(SqliteStore {
            writer: writer_tx,
            readers: Arc::new(ReaderPool {
                path,
                display,
                idle: Mutex::new(readers),
                permits: Arc::new(Semaphore::new(READER_POOL_SIZE)),
            }),
            events,
        })
    }

    /// Sends a command to the writer and waits until its batch committed.
    ///
    /// If the calling future is dropped after the request was queued, the
    /// write still happens; use idempotency keys to make retries safe.
    async fn submit(&self, command: Command) -> Result<Reply, StoreError> {
        let (reply, response) = oneshot::channel();
        self.writer
            .send(Request { command, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        // A dropped reply sender means the writer thread died.
        response.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a pooled read-only connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.readers.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool.checkout()?;
            let result = f(&conn).map_err(db_err(&pool.display));
            pool.checkin(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?
    }

    /// Inserts one item and returns it as stored.
    pub async fn insert(&self, item: NewItem) -> Result<Item, StoreError> {
        match self
            .submit(Command::Insert {
                item,
                idempotency: None,
            })
            .await?
        {
            Reply::Inserted { item, .. } => Ok(item),
            other => Err(unexpected(&other)),
        }
    }

    /// Inserts `item` and records the idempotency key `(tool, key)` in the
    /// same transaction, remembering `response(&item)` as the response body.
    ///
    /// If the key already exists for `tool`, nothing is inserted and the
    /// remembered response is returned. Returns `(response, replayed)`.
    /// `response` runs on the writer thread inside the transaction: keep it
    /// cheap; if it panics, only this request fails.
    pub async fn insert_idempotent(
        &self,
        item: NewItem,
        tool: &str,
        key: &str,
        response: impl FnOnce(&Item) -> Value + Send + 'static,
    ) -> Result<(Value, bool), StoreError> {
        let command = Command::Insert {
            item,
            idempotency: Some((tool.to_owned(), key.to_owned(), Box::new(response))),
        };
        match self.submit(command).await? {
            Reply::Inserted {
                response: Some(response),
                ..
            } => Ok((response, false)),
            Reply::Replayed(response) => Ok((response, true)),
            other => Err(unexpected(&other)),
        }
    }

    /// The response remembered for `(tool, key)`, if any.
    pub async fn idempotency_get(
        &self,
        tool: &str,
        key: &str,
    ) -> Result<Option<Value>, StoreError> {
        let (tool, key) = (tool.to_owned(), key.to_owned());
        self.read(move |conn| idempotency_lookup(conn, &tool, &key))
            .await
    }

    /// Remembers `response` for `(tool, key)` unless a response is already
    /// stored (first writer wins); returns the response stored after the call.
    pub async fn idempotency_put(
        &self,
        tool: &str,
        key: &str,
        response: Value,
    ) -> Result<Value, StoreError> {
        let command = Command::IdempotencyPut {
            tool: tool.to_owned(),
            key: key.to_owned(),
            response,
        };
        match self.submit(command).await? {
            Reply::Stored(value) => Ok(value),
            other => Err(unexpected(&other)),
        }
    }

    /// One item; [`StoreError::NotFound`] if absent.
    pub async fn get(&self, item_id: i64) -> Result<Item, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(GET_ITEM_SQL)?
                .query_row(params![item_id], row_to_item)
                .optional()
        })
        .await?
        .ok_or(StoreError::NotFound(item_id))
    }

    /// Applies `update` (`None` fields are kept) and sets `updated_at`.
    pub async fn update(&self, item_id: i64, update: ItemUpdate) -> Result<Item, StoreError> {
        match self.submit(Command::Update { item_id, update }).await? {
            Reply::Updated(item) => Ok(item),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes one item; [`StoreError::NotFound`] if absent. Its id is never
    /// reused.
    pub async fn delete(&self, item_id: i64) -> Result<(), StoreError> {
        match self.submit(Command::Delete { item_id }).await? {
            Reply::Deleted => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The user's items, newest first, at most `limit` (`None` = all).
    pub async fn history(
        &self,
        user_id: &str,
        limit: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        let user_id = user_id.to_owned();
        let limit = sql_limit(limit);
        self.read(move |conn| {
            conn.prepare_cached(HISTORY_SQL)?
                .query_map(params![user_id, limit], row_to_item)?
                .collect()
        })
        .await
    }

    /// One page of the user's items, newest first, with ids below `before`
    /// (all of them when `None`): bounded in items and bytes by `limit`.
    pub async fn history_page(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        let user_id = user_id.to_owned();
        let before = before.unwrap_or(i64::MAX);
        self.read(move |conn| read_page(conn, HISTORY_BEFORE_SQL, &[&user_id, &before], limit))
            .await
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
        let (user_id, conversation_id) = (user_id.to_owned(), conversation_id.to_owned());
        let before = before.unwrap_or(i64::MAX);
        self.read(move |conn| {
            read_page(
                conn,
                CONVERSATION_BEFORE_SQL,
                &[&user_id, &conversation_id, &before],
                limit,
            )
        })
        .await
    }

    /// One page of the user's items with `item_id > after`, oldest first:
    /// [`SqliteStore::items_after`] bounded in bytes as well as items.
    pub async fn items_after_page(
        &self,
        user_id: &str,
        after: i64,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| read_page(conn, ITEMS_AFTER_SQL, &[&user_id, &after], limit))
            .await
    }

    /// The user's items of one conversation, newest first.
    pub async fn conversation(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<Vec<Item>, StoreError> {
        let (user_id, conversation_id) = (user_id.to_owned(), conversation_id.to_owned());
        self.read(move |conn| {
            conn.prepare_cached(CONVERSATION_SQL)?
                .query_map(params![user_id, conversation_id], row_to_item)?
                .collect()
        })
        .await
    }

    /// The user's items with `item_id > after`, oldest first, at most
    /// `limit`. Used for the stream backlog, resume (`Last-Event-ID`) and to
    /// catch up after [`broadcast::error::RecvError::Lagged`].
    pub async fn items_after(
        &self,
        user_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let user_id = user_id.to_owned();
        let limit = sql_limit(Some(limit));
        self.read(move |conn| {
            conn.prepare_cached(ITEMS_AFTER_SQL)?
                .query_map(params![user_id, after, limit], row_to_item)?
                .collect()
        })
        .await
    }

    /// Cheap liveness check for `/health`: the writer thread is alive and a
    /// reader can run `SELECT 1`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.is_closed() {
            return Err(StoreError::Closed);
        }
        self.read(|conn| conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0)))
            .await
            .map(|_| ())
    }

    /// Subscribes to every item inserted from now on (all users), in commit
    /// (= `item_id`) order. Items are sent only after their transaction is
    /// durably committed, and before the inserting call returns.
    ///
    /// The channel holds 4096 items. A subscriber that falls further behind
    /// gets [`broadcast::error::RecvError::Lagged`] and must re-read what it
    /// missed from the database with [`SqliteStore::items_after`] (from the last id
    /// it delivered), then continue receiving, skipping ids it has already
    /// delivered. For a gap-free stream, subscribe *before* reading the
    /// backlog with `items_after`, then drop live items with
    /// `item_id <= last delivered id`. Receivers see
    /// [`broadcast::error::RecvError::Closed`] once every [`SqliteStore`] clone is
    /// dropped and the writer stopped.
    pub fn subscribe(&self) -> broadcast::Receiver<Item> {
        self.events.subscribe()
    }
}

#[async_trait::async_trait]
impl super::Storage for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }
    async fn insert(&self, item: NewItem) -> Result<Item, StoreError> {
        SqliteStore::insert(self, item).await
    }
    async fn insert_idempotent(
        &self,
        item: NewItem,
        tool: &str,
        key: &str,
        response: super::ResponseBuilder,
    ) -> Result<(Value, bool), StoreError> {
        SqliteStore::insert_idempotent(self, item, tool, key, response).await
    }
    async fn idempotency_get(&self, tool: &str, key: &str) -> Result<Option<Value>, StoreError> {
        SqliteStore::idempotency_get(self, tool, key).await
    }
    async fn idempotency_put(
        &self,
        tool: &str,
        key: &str,
        response: Value,
    ) -> Result<Value, StoreError> {
        SqliteStore::idempotency_put(self, tool, key, response).await
    }
    async fn get(&self, item_id: i64) -> Result<Item, StoreError> {
        SqliteStore::get(self, item_id).await
    }
    async fn update(&self, item_id: i64, update: ItemUpdate) -> Result<Item, StoreError> {
        SqliteStore::update(self, item_id, update).await
    }
    async fn delete(&self, item_id: i64) -> Result<(), StoreError> {
        SqliteStore::delete(self, item_id).await
    }
    async fn history(&self, user_id: &str, limit: Option<usize>) -> Result<Vec<Item>, StoreError> {
        SqliteStore::history(self, user_id, limit).await
    }
    async fn history_page(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        SqliteStore::history_page(self, user_id, before, limit).await
    }
    async fn conversation_page(
        &self,
        user_id: &str,
        conversation_id: &str,
        before: Option<i64>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        SqliteStore::conversation_page(self, user_id, conversation_id, before, limit).await
    }
    async fn items_after_page(
        &self,
        user_id: &str,
        after: i64,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        SqliteStore::items_after_page(self, user_id, after, limit).await
    }
    async fn conversation(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<Vec<Item>, StoreError> {
        SqliteStore::conversation(self, user_id, conversation_id).await
    }
    async fn items_after(
        &self,
        user_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        SqliteStore::items_after(self, user_id, after, limit).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        SqliteStore::ping(self).await
    }
    fn feed(&self) -> super::Feed {
        super::Feed::Items(self.subscribe())
    }
}

fn unexpected(reply: &Reply) -> StoreError {
    StoreError::Internal(format!("unexpected reply from the writer: {reply:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::DEFAULT_CONTENT_TYPE;
    use serde_json::json;
    use std::collections::HashSet;

    async fn open_temp() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("memory.db"))
            .await
            .unwrap();
        (dir, store)
    }

    fn item(user: &str, content: &str, conversation: Option<&str>) -> NewItem {
        NewItem {
            conversation_id: conversation.map(str::to_owned),
            ..NewItem::new(user, content)
        }
    }

    fn is_rfc3339_utc(s: &str) -> bool {
        // e.g. 2025-01-31T12:34:56.789Z
        let b = s.as_bytes();
        b.len() == 24
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'.'
            && b[23] == b'Z'
    }

    #[tokio::test]
    async fn insert_get_update_delete() {
        let (_dir, store) = open_temp().await;
        let mut new = item("alice", "hello", Some("c1"));
        new.input_data = json!({"user_id": "alice", "content": "hello", "extra": [1, 2]});
        let stored = store.insert(new).await.unwrap();
        assert_eq!(stored.user_id, "alice");
        assert_eq!(stored.conversation_id.as_deref(), Some("c1"));
        assert_eq!(stored.content_type, DEFAULT_CONTENT_TYPE);
        assert_eq!(stored.input_data["extra"], json!([1, 2]));
        assert!(is_rfc3339_utc(&stored.created_at), "{}", stored.created_at);
        assert_eq!(stored.timestamp, stored.created_at);
        assert_eq!(stored.updated_at, None);
        assert_eq!(store.get(stored.item_id).await.unwrap(), stored);

        let updated = store
            .update(
                stored.item_id,
                ItemUpdate {
                    content: Some("bye".to_owned()),
                    ..ItemUpdate::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(updated.content, "bye");
        assert_eq!(updated.conversation_id.as_deref(), Some("c1"));
        assert_eq!(updated.input_data, stored.input_data);
        assert!(is_rfc3339_utc(updated.updated_at.as_deref().unwrap()));
        assert_eq!(store.get(stored.item_id).await.unwrap(), updated);

        store.delete(stored.item_id).await.unwrap();
        assert!(matches!(
            store.get(stored.item_id).await,
            Err(StoreError::NotFound(id)) if id == stored.item_id
        ));
        assert!(matches!(
            store.delete(stored.item_id).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.update(9999, ItemUpdate::default()).await,
            Err(StoreError::NotFound(9999))
        ));
        store.ping().await.unwrap();
    }

    #[tokio::test]
    async fn caller_timestamp_is_kept() {
        let (_dir, store) = open_temp().await;
        let mut new = item("u", "x", None);
        new.timestamp = Some("2020-01-01T00:00:00Z".to_owned());
        new.content_type = "text/markdown".to_owned();
        let stored = store.insert(new).await.unwrap();
        assert_eq!(stored.timestamp, "2020-01-01T00:00:00Z");
        assert_eq!(stored.content_type, "text/markdown");
        assert!(is_rfc3339_utc(&stored.created_at));
    }

    #[tokio::test]
    async fn history_is_newest_first_and_limited() {
        let (_dir, store) = open_temp().await;
        for i in 0..5 {
            store
                .insert(item("a", &format!("a{i}"), None))
                .await
                .unwrap();
            store
                .insert(item("b", &format!("b{i}"), None))
                .await
                .unwrap();
        }
        let all = store.history("a", None).await.unwrap();
        let contents: Vec<_> = all.iter().map(|i| i.content.as_str()).collect();
        assert_eq!(contents, ["a4", "a3", "a2", "a1", "a0"]);
        assert!(all.windows(2).all(|w| w[0].item_id > w[1].item_id));
        let two = store.history("a", Some(2)).await.unwrap();
        assert_eq!(two, all[..2]);
        assert!(store.history("a", Some(0)).await.unwrap().is_empty());
        assert!(store.history("nobody", None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn conversation_filters() {
        let (_dir, store) = open_temp().await;
        store.insert(item("a", "1", Some("x"))).await.unwrap();
        store.insert(item("a", "2", Some("y"))).await.unwrap();
        store.insert(item("a", "3", Some("x"))).await.unwrap();
        store.insert(item("b", "4", Some("x"))).await.unwrap();
        store.insert(item("a", "5", None)).await.unwrap();
        let x = store.conversation("a", "x").await.unwrap();
        let contents: Vec<_> = x.iter().map(|i| i.content.as_str()).collect();
        assert_eq!(contents, ["3", "1"]);
        assert!(store.conversation("a", "z").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn items_after_is_oldest_first() {
        let (_dir, store) = open_temp().await;
        let mut ids = Vec::new();
        for i in 0..6 {
            ids.push(
                store
                    .insert(item("a", &i.to_string(), None))
                    .await
                    .unwrap()
                    .item_id,
            );
            store.insert(item("b", "other", None)).await.unwrap();
        }
        let all = store.items_after("a", 0, 100).await.unwrap();
        assert_eq!(all.iter().map(|i| i.item_id).collect::<Vec<_>>(), ids);
        let page = store.items_after("a", ids[1], 3).await.unwrap();
        assert_eq!(
            page.iter().map(|i| i.item_id).collect::<Vec<_>>(),
            ids[2..5]
        );
        assert!(store.items_after("a", ids[5], 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn insert_idempotent_replays() {
        let (_dir, store) = open_temp().await;
        let respond = |item: &Item| json!({"item_id": item.item_id, "status": "stored"});
        let (first, replayed) = store
            .insert_idempotent(item("a", "once", None), "store_input", "k1", respond)
            .await
            .unwrap();
        assert!(!replayed);
        let (second, replayed) = store
            .insert_idempotent(item("a", "once", None), "store_input", "k1", respond)
            .await
            .unwrap();
        assert!(replayed);
        assert_eq!(first, second);
        assert_eq!(store.history("a", None).await.unwrap().len(), 1);
        assert_eq!(
            store.idempotency_get("store_input", "k1").await.unwrap(),
            Some(first.clone())
        );
        // Same key, other tool: independent.
        let (_, replayed) = store
            .insert_idempotent(item("a", "again", None), "other_tool", "k1", respond)
            .await
            .unwrap();
        assert!(!replayed);
        assert_eq!(store.history("a", None).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn concurrent_idempotent_inserts_insert_once() {
        let (_dir, store) = open_temp().await;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .insert_idempotent(item("a", "x", None), "t", "same", |i| json!(i.item_id))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut responses = HashSet::new();
        let mut fresh = 0;
        for task in tasks {
            let (response, replayed) = task.await.unwrap();
            responses.insert(response.to_string());
            fresh += usize::from(!replayed);
        }
        assert_eq!(fresh, 1);
        assert_eq!(responses.len(), 1);
        assert_eq!(store.history("a", None).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn idempotency_put_first_writer_wins() {
        let (_dir, store) = open_temp().await;
        assert_eq!(store.idempotency_get("t", "k").await.unwrap(), None);
        let first = store
            .idempotency_put("t", "k", json!({"n": 1}))
            .await
            .unwrap();
        assert_eq!(first, json!({"n": 1}));
        let second = store
            .idempotency_put("t", "k", json!({"n": 2}))
            .await
            .unwrap();
        assert_eq!(second, json!({"n": 1}));
        assert_eq!(
            store.idempotency_get("t", "k").await.unwrap(),
            Some(json!({"n": 1}))
        );
        assert_eq!(store.idempotency_get("u", "k").await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_inserts_never_lock() {
        let (_dir, store) = open_temp().await;
        let writers: Vec<_> = (0..32)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::with_capacity(50);
                    for i in 0..50 {
                        let stored = store
                            .insert(item("load", &format!("{t}-{i}"), None))
                            .await
                            .unwrap();
                        ids.push(stored.item_id);
                    }
                    ids
                })
            })
            .collect();
        // Readers running at the same time must not fail either.
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    for _ in 0..25 {
                        store.history("load", Some(10)).await.unwrap();
                        store.items_after("load", 0, 50).await.unwrap();
                    }
                })
            })
            .collect();
        let mut all = HashSet::new();
        for writer in writers {
            let ids = writer.await.unwrap();
            // Each task's inserts are sequential, so its ids increase.
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
            all.extend(ids);
        }
        for reader in readers {
            reader.await.unwrap();
        }
        assert_eq!(all.len(), 1600);
        let history = store.history("load", None).await.unwrap();
        assert_eq!(history.len(), 1600);
        assert!(history.windows(2).all(|w| w[0].item_id > w[1].item_id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broadcast_in_id_order_after_commit() {
        let (_dir, store) = open_temp().await;
        let mut events = store.subscribe();
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..10 {
                        store
                            .insert(item(&format!("u{t}"), &i.to_string(), None))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let mut last = 0;
        for _ in 0..80 {
            let received = events.recv().await.unwrap();
            assert!(received.item_id > last, "out of order");
            last = received.item_id;
            // Delivered only after commit: a reader already sees it.
            assert_eq!(store.get(received.item_id).await.unwrap(), received);
        }
        assert!(matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
        // Replays, updates and deletes are not broadcast.
        let (_, replayed) = store
            .insert_idempotent(item("u0", "a", None), "t", "k", |_| json!(1))
            .await
            .unwrap();
        assert!(!replayed);
        assert!(events.recv().await.is_ok());
        store
            .insert_idempotent(item("u0", "a", None), "t", "k", |_| json!(1))
            .await
            .unwrap();
        store.delete(last).await.unwrap();
        assert!(matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_never_reuses_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.db");
        let (kept, deleted) = {
            let store = SqliteStore::open(&path).await.unwrap();
            let kept = store.insert(item("a", "kept", Some("c"))).await.unwrap();
            let deleted = store.insert(item("a", "deleted", None)).await.unwrap();
            store.delete(deleted.item_id).await.unwrap();
            (kept, deleted)
        };
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.get(kept.item_id).await.unwrap(), kept);
        let next = store.insert(item("a", "next", None)).await.unwrap();
        assert!(next.item_id > deleted.item_id);
        assert_eq!(store.history("a", None).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("does-not-exist").join("memory.db");
        let err = SqliteStore::open(&path).await.unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("does not exist"), "{message}");
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.db");
        drop(SqliteStore::open(&path).await.unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99;")
            .unwrap();
        let err = SqliteStore::open(&path).await.unwrap_err();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }

    #[tokio::test]
    async fn failing_request_does_not_fail_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.db");
        let display = path.display().to_string();
        let conn = open_writer_connection(&path, &display).unwrap();
        let (events, mut received) = broadcast::channel(16);
        let mut writer = Writer {
            conn,
            path: display,
            events,
        };
        let mut replies = Vec::new();
        let mut batch = Vec::new();
        let commands = [
            Command::Insert {
                item: item("a", "first", None),
                idempotency: None,
            },
            Command::Insert {
                item: item("a", "panics", None),
                idempotency: Some((
                    "t".to_owned(),
                    "k".to_owned(),
                    Box::new(|_: &Item| -> Value { panic!("builder failure (expected in test)") }),
                )),
            },
            Command::Delete { item_id: 12345 },
            Command::Insert {
                item: item("a", "last", None),
                idempotency: None,
            },
        ];
        for command in commands {
            let (reply, rx) = oneshot::channel();
            batch.push(Request { command, reply });
            replies.push(rx);
        }
        writer.commit_batch(batch);

        let results: Vec<_> = replies
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap())
            .collect();
        assert!(matches!(results[0], Ok(Reply::Inserted { .. })));
        assert!(matches!(results[1], Err(StoreError::Internal(_))));
        assert!(matches!(results[2], Err(StoreError::NotFound(12345))));
        assert!(matches!(results[3], Ok(Reply::Inserted { .. })));

        // The panicking insert was rolled back with its savepoint, the idempotency
        // key was not recorded, and only the committed items were published.
        let contents: Vec<String> = writer
            .conn
            .prepare("SELECT content FROM items ORDER BY item_id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(contents, ["first", "last"]);
        assert_eq!(idempotency_lookup(&writer.conn, "t", "k").unwrap(), None);
        assert_eq!(received.recv().await.unwrap().content, "first");
        assert_eq!(received.recv().await.unwrap().content, "last");
        assert!(received.try_recv().is_err());
    }

    #[tokio::test]
    async fn queued_requests_are_group_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.db");
        let label = path.display().to_string();
        let writer = Writer {
            conn: open_writer_connection(&path, &label).unwrap(),
            path: label,
            events: broadcast::channel(16).0,
        };
        let (sender, requests) = mpsc::channel(WRITE_BATCH_MAX + 50);
        let mut replies = Vec::new();
        for i in 0..WRITE_BATCH_MAX + 50 {
            let (reply, rx) = oneshot::channel();
            let command = Command::Insert {
                item: item("a", &i.to_string(), None),
                idempotency: None,
            };
            sender.try_send(Request { command, reply }).unwrap();
            replies.push(rx);
        }
        drop(sender);
        let batches = tokio::task::spawn_blocking(move || writer.run(requests))
            .await
            .unwrap();
        // Everything was queued before the writer started: one full batch,
        // then the rest, i.e. two commits for 306 inserts.
        assert_eq!(batches, 2);
        let mut last = 0;
        for rx in replies {
            let Ok(Reply::Inserted { item, .. }) = rx.await.unwrap() else {
                panic!("insert failed");
            };
            assert!(item.item_id > last);
            last = item.item_id;
        }
    }

    #[tokio::test]
    async fn writer_gone_means_closed() {
        let (_dir, store) = open_temp().await;
        let (writer, requests) = mpsc::channel(1);
        drop(requests);
        let store = SqliteStore { writer, ..store };
        assert!(matches!(
            store.insert(item("a", "x", None)).await,
            Err(StoreError::Closed)
        ));
        assert!(matches!(store.delete(1).await, Err(StoreError::Closed)));
        assert!(matches!(store.ping().await, Err(StoreError::Closed)));
        // Reads still work from the readers.
        assert!(store.history("a", None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn dropping_the_store_closes_subscriptions() {
        let (_dir, store) = open_temp().await;
        let mut events = store.subscribe();
        drop(store);
        // The writer thread exits and drops its sender.
        let closed = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap();
        assert!(matches!(closed, Err(broadcast::error::RecvError::Closed)));
    }

    #[tokio::test]
    async fn pages_are_bounded_in_items_and_bytes_and_chain_by_id() {
        let (_dir, store) = open_temp().await;
        for i in 0..7 {
            store
                .insert(item("u", &format!("m{i}"), Some("c")))
                .await
                .unwrap();
        }
        store.insert(item("other", "x", Some("c"))).await.unwrap();
        let limit = PageLimit {
            items: 3,
            bytes: 1 << 20,
        };
        let mut seen = Vec::new();
        let mut before = None;
        for _ in 0..10 {
            let page = store.history_page("u", before, limit).await.unwrap();
            assert!(page.items.len() <= 3);
            seen.extend(page.items.iter().map(|i| i.content.clone()));
            before = page.items.last().map(|i| i.item_id);
            if !page.more {
                break;
            }
        }
        assert_eq!(seen, ["m6", "m5", "m4", "m3", "m2", "m1", "m0"]);

        let conversation = store
            .conversation_page("u", "c", None, limit)
            .await
            .unwrap();
        assert_eq!(conversation.items.len(), 3);
        assert!(conversation.more);
        assert!(conversation.items.iter().all(|i| i.user_id == "u"));

        let oldest = store.items_after_page("u", 0, limit).await.unwrap();
        let contents: Vec<&str> = oldest.items.iter().map(|i| i.content.as_str()).collect();
        assert_eq!(contents, ["m0", "m1", "m2"]);

        // A byte budget smaller than two items: one item per page, but
        // always one, so a reader gets past an item larger than the budget.
        let tiny = PageLimit {
            items: 100,
            bytes: 10,
        };
        let page = store.history_page("u", None, tiny).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(page.more);
        let none = store.history_page("nobody", None, tiny).await.unwrap();
        assert!(none.items.is_empty());
        assert!(!none.more);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_database_and_its_side_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.db");
        // A file left readable by others (an older version made it 0644)
        // is tightened on open.
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = SqliteStore::open(&path).await.unwrap();
        store.insert(item("u", "secret", None)).await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.path().join(format!("memory.db{suffix}"));
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
    }
}
