//! The shared backend: PostgreSQL, for any number of memory replicas.
//!
//! # Design (see `docs/postgres.md`)
//!
//! * **Pool.** `tokio-postgres` connections in a `deadpool` pool of
//!   [`PgOptions::max_connections`]; a call waits at most
//!   [`PgOptions::connect_timeout`] for one, so a call during an outage
//!   fails fast with [`StoreError::Postgres`] instead of hanging, and the
//!   first call after the database is back opens a fresh connection.
//! * **Durability.** Every session runs with `synchronous_commit = on`: a
//!   store is answered after its commit record is flushed.
//! * **Ordering.** `item_id` comes from one sequence, drawn while the
//!   transaction holds an advisory lock on its user, which is released only
//!   after commit. So for one user, id order is commit order on every
//!   replica: a stream that delivered item `N` of a user can never later
//!   find an older item of that user, and `Last-Event-ID` resumes on any
//!   replica. Users do not wait for each other.
//! * **Idempotency.** The key is checked and recorded in the item's own
//!   transaction, under the same user lock and a primary key on
//!   `(tool, key)`: the same key sent to two replicas at once stores one
//!   item, and the second answers with the first's response.
//! * **Fan-out.** After a store committed, the replica sends `pg_notify`
//!   with the user id, from a task of its own that batches them (one
//!   statement for every user waiting), never inside the store's
//!   transaction: PostgreSQL serializes the commits of notifying
//!   transactions, which would cost every store its own flush. Each replica
//!   keeps one listening connection and turns notifications into wake-ups
//!   ([`Feed::WakeUps`]); a stream woken re-reads the database after its
//!   last event id, and re-reads anyway every [`PgOptions::poll_interval`],
//!   so a lost notification (a dropped listener) delays an event but never
//!   loses it.
//! * **Migrations.** Embedded, run at connect inside one transaction that
//!   holds an advisory lock on the schema, so replicas starting together
//!   migrate once; a database whose schema is newer than this build is
//!   refused with [`StoreError::Open`].

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use tracing::{debug, warn};

use super::{
    Feed, Item, ItemUpdate, NewItem, Page, PageLimit, ResponseBuilder, Storage, StoreError,
};

/// The class of the advisory locks taken on a user's id while storing
/// ("MEMU"); the two-key form keeps them apart from other users of
/// advisory locks in the same database.
const USER_LOCK_CLASS: i32 = 0x4d45_4d55;
/// The class of the advisory lock taken on a schema while migrating ("MEMM").
const MIGRATE_LOCK_CLASS: i32 = 0x4d45_4d4d;
/// Capacity of the broadcast of wake-ups in one process.
const WAKEUP_CAPACITY: usize = 4096;
/// Users waiting to be notified; past it a notification is dropped (the
/// streams' poll finds the item).
const NOTIFY_QUEUE: usize = 4096;
/// Most users notified by one statement.
const NOTIFY_BATCH: usize = 256;
/// Longest wait between two attempts of the listener to reconnect.
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// RFC 3339 UTC with milliseconds, as the SQLite backend writes it.
macro_rules! now_sql {
    () => {
        r#"to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"#
    };
}

/// The columns of `items`, in the order [`row_to_item`] expects.
macro_rules! item_columns {
    () => {
        r#"item_id, user_id, conversation_id, content, content_type, "timestamp", input_data, created_at, updated_at"#
    };
}

/// Schema migrations; entry `i` upgrades version `i` to `i + 1`. The
/// version lives in `memory_schema`. Text columns keep `input_data` as
/// received (byte for byte, as SQLite does), and timestamps as RFC 3339
/// text, so both backends answer alike.
const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE items (
        item_id         BIGINT GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
        user_id         TEXT NOT NULL,
        conversation_id TEXT,
        content         TEXT NOT NULL,
        content_type    TEXT NOT NULL,
        "timestamp"     TEXT NOT NULL,
        input_data      TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        updated_at      TEXT
    );
    CREATE INDEX items_user ON items (user_id, item_id);
    CREATE INDEX items_user_conversation ON items (user_id, conversation_id, item_id);
    CREATE TABLE idempotency (
        tool       TEXT NOT NULL,
        key        TEXT NOT NULL,
        response   TEXT NOT NULL,
        created_at TEXT,
        PRIMARY KEY (tool, key)
    );
"#];

const INSERT_ITEM_SQL: &str = concat!(
    "INSERT INTO items (user_id, conversation_id, content, content_type, \"timestamp\", \
     input_data, created_at) VALUES ($1, $2, $3, $4, COALESCE($5, ",
    now_sql!(),
    "), $6, ",
    now_sql!(),
    ") RETURNING item_id, \"timestamp\", created_at"
);
/// The insert of an item without idempotency key: the user lock and the
/// insert in one statement, hence one implicit transaction and one round
/// trip. The lock is taken before the row (and its id) is made.
const LOCKED_INSERT_ITEM_SQL: &str = concat!(
    "WITH locked AS (SELECT pg_advisory_xact_lock($7, hashtext($1))) \
     INSERT INTO items (user_id, conversation_id, content, content_type, \"timestamp\", \
     input_data, created_at) SELECT $1, $2, $3, $4, COALESCE($5, ",
    now_sql!(),
    "), $6, ",
    now_sql!(),
    " FROM locked RETURNING item_id, \"timestamp\", created_at"
);
const LOCK_USER_SQL: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";
const UPDATE_ITEM_SQL: &str = concat!(
    "UPDATE items SET content = COALESCE($2, content), \
     content_type = COALESCE($3, content_type), \
     conversation_id = COALESCE($4, conversation_id), \
     input_data = COALESCE($5, input_data), updated_at = ",
    now_sql!(),
    " WHERE item_id = $1 RETURNING ",
    item_columns!()
);
const DELETE_ITEM_SQL: &str = "DELETE FROM items WHERE item_id = $1";
const GET_ITEM_SQL: &str = concat!("SELECT ", item_columns!(), " FROM items WHERE item_id = $1");
const HISTORY_SQL: &str = concat!(
    "SELECT ",
    item_columns!(),
    " FROM items WHERE user_id = $1 ORDER BY item_id DESC LIMIT $2"
);
const CONVERSATION_SQL: &str = concat!(
    "SELECT ",
    item_columns!(),
    " FROM items WHERE user_id = $1 AND conversation_id = $2 ORDER BY item_id DESC"
);
const HISTORY_BEFORE_SQL: &str = concat!(
    "SELECT ",
    item_columns!(),
    " FROM items WHERE user_id = $1 AND item_id < $2 ORDER BY item_id DESC LIMIT $3"
);
const CONVERSATION_BEFORE_SQL: &str = concat!(
    "SELECT ",
    item_columns!(),
    " FROM items WHERE user_id = $1 AND conversation_id = $2 AND item_id < $3 \
     ORDER BY item_id DESC LIMIT $4"
);
const ITEMS_AFTER_SQL: &str = concat!(
    "SELECT ",
    item_columns!(),
    " FROM items WHERE user_id = $1 AND item_id > $2 ORDER BY item_id ASC LIMIT $3"
);
const IDEMPOTENCY_GET_SQL: &str = "SELECT response FROM idempotency WHERE tool = $1 AND key = $2";
const IDEMPOTENCY_INSERT_SQL: &str = concat!(
    "INSERT INTO idempotency (tool, key, response, created_at) VALUES ($1, $2, $3, ",
    now_sql!(),
    ") ON CONFLICT (tool, key) DO NOTHING RETURNING 1"
);

/// Options of the PostgreSQL backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// Most connections this process holds (the listener's is one more).
    pub max_connections: usize,
    /// Longest wait for a connection (from the pool or a new one): how fast
    /// a call fails while the database is unreachable.
    pub connect_timeout: Duration,
    /// Longest a live stream waits without a wake-up before it re-reads
    /// the database anyway: the bound on the delay of a lost notification.
    pub poll_interval: Duration,
    /// Schema holding the tables (it must exist); `None` uses the
    /// connection's `search_path`.
    pub schema: Option<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            connect_timeout: Duration::from_secs(1),
            poll_interval: Duration::from_secs(1),
            schema: None,
        }
    }
}

/// Memory on PostgreSQL. Dropping it stops its listener.
pub struct PostgresStore {
    pool: Pool,
    /// `host:port/dbname` (never credentials), for errors.
    label: String,
    schema: String,
    wakeups: broadcast::Sender<Arc<str>>,
    /// Users whose stores committed, for the notifier task.
    notify: mpsc::Sender<String>,
    poll_interval: Duration,
    listener: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.label)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// `host:port/dbname` of `config`, without user or password.
fn label_of(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db}")
}

/// The error of a driver call, naming the database and what failed.
fn pg_error(label: &str, what: &str, error: &tokio_postgres::Error) -> StoreError {
    let reason = match error.as_db_error() {
        Some(db) => format!("{what}: {} ({})", db.message(), db.code().code()),
        None => {
            // The driver's own text is terse ("error connecting to server");
            // its source says why (connection refused, …).
            match std::error::Error::source(error) {
                Some(source) => format!("{what}: {error}: {source}"),
                None => format!("{what}: {error}"),
            }
        }
    };
    StoreError::Postgres {
        database: label.to_owned(),
        reason,
    }
}

fn pool_error(label: &str, error: PoolError) -> StoreError {
    match error {
        PoolError::Backend(e) => pg_error(label, "cannot connect", &e),
        PoolError::Timeout(_) => StoreError::Postgres {
            database: label.to_owned(),
            reason: "no connection within the connect timeout (database unreachable?)".to_owned(),
        },
        other => StoreError::Postgres {
            database: label.to_owned(),
            reason: format!("connection pool: {other}"),
        },
    }
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("stored input_data is not JSON: {e}"))
}

/// An item and the bytes of its text as stored (what a page counts).
fn row_to_sized_item(row: &Row) -> Result<(Item, usize), String> {
    let get_err = |e: tokio_postgres::Error| format!("reading a row: {e}");
    let input_data: String = row.try_get(6).map_err(get_err)?;
    let item = Item {
        item_id: row.try_get(0).map_err(get_err)?,
        user_id: row.try_get(1).map_err(get_err)?,
        conversation_id: row.try_get(2).map_err(get_err)?,
        content: row.try_get(3).map_err(get_err)?,
        content_type: row.try_get(4).map_err(get_err)?,
        timestamp: row.try_get(5).map_err(get_err)?,
        input_data: parse_json(&input_data)?,
        created_at: row.try_get(7).map_err(get_err)?,
        updated_at: row.try_get(8).map_err(get_err)?,
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

fn sql_limit(limit: Option<usize>) -> Option<i64> {
    // `LIMIT NULL` is no limit.
    limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX))
}

/// The notification channel of `schema` (at most 63 bytes, as PostgreSQL
/// allows; schema names are ASCII here).
fn channel_of(schema: &str) -> String {
    format!("cortex_memory_{schema}").chars().take(63).collect()
}

impl PostgresStore {
    /// Connects to the database at `url`, migrates its schema under an
    /// advisory lock, and starts listening for other replicas' stores.
    ///
    /// Fails with [`StoreError::Open`] when the URL is invalid, the schema
    /// is missing or newer than this build, and [`StoreError::Postgres`]
    /// when the database is unreachable.
    pub async fn connect(url: &str, options: PgOptions) -> Result<PostgresStore, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| StoreError::Open {
            path: "PostgreSQL".to_owned(),
            reason: format!("invalid database URL: {e}"),
        })?;
        let label = label_of(&config);
        let mut session = config.get_options().unwrap_or("").to_owned();
        // An acknowledged store is flushed, whatever the server's default.
        session.push_str(" -c synchronous_commit=on -c client_min_messages=warning");
        if let Some(schema) = &options.schema {
            if schema.is_empty()
                || !schema
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(StoreError::Open {
                    path: label,
                    reason: format!("schema name {schema:?} must be ASCII letters, digits and `_`"),
                });
            }
            session.push_str(&format!(" -c search_path={schema}"));
        }
        config.options(session.trim());
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("cortex-memory");
        }

        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                // A connection the server closed is noticed without a query.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Open {
                path: label.clone(),
                reason: format!("cannot build the connection pool: {e}"),
            })?;

        let schema = match migrate(&pool, &label).await {
            Ok(schema) => schema,
            Err(error) => {
                // Closes the connections now: one may still be inside the
                // migration's transaction.
                pool.close();
                return Err(error);
            }
        };
        let (wakeups, _) = broadcast::channel(WAKEUP_CAPACITY);
        let listener = tokio::spawn(listen(
            config,
            label.clone(),
            channel_of(&schema),
            wakeups.clone(),
        ));
        let (notify, users) = mpsc::channel(NOTIFY_QUEUE);
        // Ends when the store (the sender) is dropped.
        tokio::spawn(notifier(
            pool.clone(),
            label.clone(),
            channel_of(&schema),
            users,
        ));
        Ok(PostgresStore {
            pool,
            label,
            schema,
            wakeups,
            notify,
            poll_interval: options.poll_interval,
            listener,
        })
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| pool_error(&self.label, e))
    }

    fn err<'a>(&'a self, what: &'a str) -> impl Fn(tokio_postgres::Error) -> StoreError + 'a {
        move |e| pg_error(&self.label, what, &e)
    }

    fn bad_row(&self, reason: String) -> StoreError {
        StoreError::Postgres {
            database: self.label.clone(),
            reason,
        }
    }

    async fn query_items(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Item>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(self.err("prepare"))?;
        let rows = client
            .query(&statement, params)
            .await
            .map_err(self.err("read items"))?;
        rows.iter()
            .map(|row| row_to_sized_item(row).map(|(item, _)| item))
            .collect::<Result<_, _>>()
            .map_err(|e| self.bad_row(e))
    }

    /// Reads one page with `sql`, whose last parameter is the row limit;
    /// rows are read as they arrive and the read stops at the page's bounds.
    async fn read_page(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        let items = limit.items.max(1);
        // One row more than the page holds tells whether more follow.
        let row_limit = sql_limit(Some(items.saturating_add(1)));
        let mut all: Vec<&(dyn ToSql + Sync)> = params.to_vec();
        all.push(&row_limit);
        let client = self.client().await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(self.err("prepare"))?;
        let rows = client
            .query_raw(&statement, all)
            .await
            .map_err(self.err("read a page"))?;
        futures::pin_mut!(rows);
        let mut page = Page {
            items: Vec::new(),
            more: false,
        };
        let mut bytes = 0usize;
        while let Some(row) = rows.next().await {
            let row = row.map_err(self.err("read a page"))?;
            let (item, size) = row_to_sized_item(&row).map_err(|e| self.bad_row(e))?;
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

    /// After a store committed: wake the streams of its user on every
    /// replica. A full queue drops the notification (the poll covers it).
    fn committed(&self, item: &Item) {
        // This replica's streams at once; the others through PostgreSQL.
        let _ = self.wakeups.send(Arc::from(item.user_id.as_str()));
        let _ = self.notify.try_send(item.user_id.clone());
    }

    async fn lookup(
        &self,
        client: &impl tokio_postgres::GenericClient,
        tool: &str,
        key: &str,
    ) -> Result<Option<Value>, StoreError> {
        let row = client
            .query_opt(IDEMPOTENCY_GET_SQL, &[&tool, &key])
            .await
            .map_err(self.err("read an idempotency key"))?;
        match row {
            None => Ok(None),
            Some(row) => {
                let text: String = row
                    .try_get(0)
                    .map_err(self.err("read an idempotency key"))?;
                parse_json(&text).map(Some).map_err(|e| self.bad_row(e))
            }
        }
    }
}

fn inserted(item: NewItem, row: &Row) -> Result<Item, tokio_postgres::Error> {
    Ok(Item {
        item_id: row.try_get(0)?,
        timestamp: row.try_get(1)?,
        created_at: row.try_get(2)?,
        user_id: item.user_id,
        conversation_id: item.conversation_id,
        content: item.content,
        content_type: item.content_type,
        input_data: item.input_data,
        updated_at: None,
    })
}

/// Sends `pg_notify` for the users whose stores committed: everything
/// queued in one statement (one transaction, which writes no WAL, so the
/// lock PostgreSQL takes for notifying transactions is held only briefly).
/// A failed notification is dropped: the streams' poll finds the items.
async fn notifier(pool: Pool, label: String, channel: String, mut users: mpsc::Receiver<String>) {
    while let Some(first) = users.recv().await {
        let mut batch = std::collections::BTreeSet::from([first]);
        while batch.len() < NOTIFY_BATCH {
            match users.try_recv() {
                Ok(user) => {
                    batch.insert(user);
                }
                Err(_) => break,
            }
        }
        let batch: Vec<String> = batch.into_iter().collect();
        let sent = match pool.get().await {
            Ok(client) => {
                let notify = client
                    .prepare_cached("SELECT pg_notify($1, u) FROM unnest($2::text[]) AS u")
                    .await;
                match notify {
                    Ok(statement) => client
                        .execute(&statement, &[&channel, &batch])
                        .await
                        .map(drop)
                        .map_err(|e| pg_error(&label, "notify", &e)),
                    Err(e) => Err(pg_error(&label, "prepare", &e)),
                }
            }
            Err(e) => Err(pool_error(&label, e)),
        };
        if let Err(error) = sent {
            debug!(%error, users = batch.len(), "notification dropped; streams will poll");
        }
    }
}

/// Brings the schema to the latest version, in one transaction holding an
/// advisory lock on the schema; returns the schema's name.
async fn migrate(pool: &Pool, label: &str) -> Result<String, StoreError> {
    let mut client = pool.get().await.map_err(|e| pool_error(label, e))?;
    let err = |what: &'static str| move |e: tokio_postgres::Error| pg_error(label, what, &e);
    let schema: Option<String> = client
        .query_one("SELECT current_schema()", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(err("read the current schema"))?;
    let Some(schema) = schema else {
        return Err(StoreError::Open {
            path: label.to_owned(),
            reason: "no schema of the search_path exists (create it first)".to_owned(),
        });
    };
    let latest = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    let tx = client
        .transaction()
        .await
        .map_err(err("begin the migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
        &[&MIGRATE_LOCK_CLASS],
    )
    .await
    .map_err(err("take the migration lock"))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS memory_schema (version INTEGER NOT NULL)")
        .await
        .map_err(err("create memory_schema"))?;
    let current: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM memory_schema", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(err("read the schema version"))?;
    if current > latest {
        // Explicitly: the lock and the transaction end now, not when the
        // connection does.
        let _ = tx.rollback().await;
        return Err(StoreError::Open {
            path: format!("{label} (schema {schema})"),
            reason: format!(
                "schema version {current} is newer than this build, which knows versions \
                 0..={latest}: run a newer memory service"
            ),
        });
    }
    let from = usize::try_from(current).unwrap_or(0);
    for migration in &MIGRATIONS[from..] {
        tx.batch_execute(migration)
            .await
            .map_err(err("run a migration"))?;
    }
    if current < latest {
        tx.execute("DELETE FROM memory_schema", &[])
            .await
            .map_err(err("record the schema version"))?;
        tx.execute(
            "INSERT INTO memory_schema (version) VALUES ($1)",
            &[&latest],
        )
        .await
        .map_err(err("record the schema version"))?;
    }
    tx.commit().await.map_err(err("commit the migration"))?;
    if current < latest {
        debug!(database = label, %schema, from = current, to = latest, "migrated memory schema");
    }
    Ok(schema)
}

/// Keeps one connection listening on `channel` for as long as the store
/// lives, turning notifications into wake-ups. After each (re)connection it
/// wakes every stream, which re-reads what it may have missed meanwhile.
async fn listen(
    config: tokio_postgres::Config,
    label: String,
    channel: String,
    wakeups: broadcast::Sender<Arc<str>>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match listen_once(&config, &channel, &wakeups).await {
            Ok(()) => debug!(database = %label, "listener connection closed"),
            Err(e) => {
                warn!(database = %label, error = %pg_error(&label, "listen", &e), "listener failed")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    wakeups: &broadcast::Sender<Arc<str>>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let notifications = wakeups.clone();
    let drive = async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            if let AsyncMessage::Notification(n) = message? {
                // No receivers is not an error.
                let _ = notifications.send(Arc::from(n.payload()));
            }
        }
        Ok(())
    };
    let subscribe = async {
        let quoted = channel.replace('"', "\"\"");
        client
            .batch_execute(&format!("LISTEN \"{quoted}\""))
            .await?;
        // Wake everyone: notifications sent while no listener was
        // connected are gone.
        let _ = wakeups.send(Arc::from(""));
        std::future::pending::<Result<(), tokio_postgres::Error>>().await
    };
    tokio::select! {
        result = drive => result,
        result = subscribe => result,
    }
}

#[async_trait::async_trait]
impl Storage for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn insert(&self, item: NewItem) -> Result<Item, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(LOCKED_INSERT_ITEM_SQL)
            .await
            .map_err(self.err("prepare"))?;
        let input_data = item.input_data.to_string();
        let row = client
            .query_one(
                &statement,
                &[
                    &item.user_id,
                    &item.conversation_id,
                    &item.content,
                    &item.content_type,
                    &item.timestamp,
                    &input_data,
                    &USER_LOCK_CLASS,
                ],
            )
            .await
            .map_err(self.err("store an item"))?;
        let item = inserted(item, &row).map_err(self.err("store an item"))?;
        self.committed(&item);
        Ok(item)
    }

    async fn insert_idempotent(
        &self,
        item: NewItem,
        tool: &str,
        key: &str,
        response: ResponseBuilder,
    ) -> Result<(Value, bool), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(self.err("begin a store"))?;
        tx.execute(LOCK_USER_SQL, &[&USER_LOCK_CLASS, &item.user_id])
            .await
            .map_err(self.err("lock the user"))?;
        // Read committed: this statement sees every store committed before
        // the lock was granted.
        if let Some(replayed) = self.lookup(&*tx, tool, key).await? {
            // Ends the transaction (and frees the user lock) before the
            // connection goes back to the pool.
            tx.rollback().await.map_err(self.err("end a replay"))?;
            return Ok((replayed, true));
        }
        let input_data = item.input_data.to_string();
        let statement = tx
            .prepare_cached(INSERT_ITEM_SQL)
            .await
            .map_err(self.err("prepare"))?;
        let row = tx
            .query_one(
                &statement,
                &[
                    &item.user_id,
                    &item.conversation_id,
                    &item.content,
                    &item.content_type,
                    &item.timestamp,
                    &input_data,
                ],
            )
            .await
            .map_err(self.err("store an item"))?;
        let item = inserted(item, &row).map_err(self.err("store an item"))?;
        let answer = catch_unwind(AssertUnwindSafe(|| response(&item)))
            .map_err(|_| StoreError::Internal("idempotent response builder panicked".to_owned()))?;
        let recorded = tx
            .query_opt(IDEMPOTENCY_INSERT_SQL, &[&tool, &key, &answer.to_string()])
            .await
            .map_err(self.err("record an idempotency key"))?;
        if recorded.is_none() {
            // The same key, stored meanwhile for another user: that answer
            // stands, this item is rolled back.
            tx.rollback()
                .await
                .map_err(self.err("roll back a duplicate"))?;
            let stored = self.lookup(&**client, tool, key).await?;
            return stored.map(|v| (v, true)).ok_or_else(|| {
                StoreError::Internal("idempotency record missing after a conflict".to_owned())
            });
        }
        tx.commit().await.map_err(self.err("commit a store"))?;
        self.committed(&item);
        Ok((answer, false))
    }

    async fn idempotency_get(&self, tool: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let client = self.client().await?;
        self.lookup(&**client, tool, key).await
    }

    async fn idempotency_put(
        &self,
        tool: &str,
        key: &str,
        response: Value,
    ) -> Result<Value, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                IDEMPOTENCY_INSERT_SQL,
                &[&tool, &key, &response.to_string()],
            )
            .await
            .map_err(self.err("record an idempotency key"))?;
        // First writer wins: answer what is stored now.
        self.lookup(&**client, tool, key).await?.ok_or_else(|| {
            StoreError::Internal("idempotency record missing after insert".to_owned())
        })
    }

    async fn get(&self, item_id: i64) -> Result<Item, StoreError> {
        self.query_items(GET_ITEM_SQL, &[&item_id])
            .await?
            .pop()
            .ok_or(StoreError::NotFound(item_id))
    }

    async fn update(&self, item_id: i64, update: ItemUpdate) -> Result<Item, StoreError> {
        let input_data = update.input_data.as_ref().map(Value::to_string);
        self.query_items(
            UPDATE_ITEM_SQL,
            &[
                &item_id,
                &update.content,
                &update.content_type,
                &update.conversation_id,
                &input_data,
            ],
        )
        .await?
        .pop()
        .ok_or(StoreError::NotFound(item_id))
    }

    async fn delete(&self, item_id: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let deleted = client
            .execute(DELETE_ITEM_SQL, &[&item_id])
            .await
            .map_err(self.err("delete an item"))?;
        if deleted == 0 {
            Err(StoreError::NotFound(item_id))
        } else {
            Ok(())
        }
    }

    async fn history(&self, user_id: &str, limit: Option<usize>) -> Result<Vec<Item>, StoreError> {
        self.query_items(HISTORY_SQL, &[&user_id, &sql_limit(limit)])
            .await
    }

    async fn history_page(
        &self,
        user_id: &str,
        before: Option<i64>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        let before = before.unwrap_or(i64::MAX);
        self.read_page(HISTORY_BEFORE_SQL, &[&user_id, &before], limit)
            .await
    }

    async fn conversation_page(
        &self,
        user_id: &str,
        conversation_id: &str,
        before: Option<i64>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        let before = before.unwrap_or(i64::MAX);
        self.read_page(
            CONVERSATION_BEFORE_SQL,
            &[&user_id, &conversation_id, &before],
            limit,
        )
        .await
    }

    async fn items_after_page(
        &self,
        user_id: &str,
        after: i64,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        self.read_page(ITEMS_AFTER_SQL, &[&user_id, &after], limit)
            .await
    }

    async fn conversation(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<Vec<Item>, StoreError> {
        self.query_items(CONVERSATION_SQL, &[&user_id, &conversation_id])
            .await
    }

    async fn items_after(
        &self,
        user_id: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        self.query_items(
            ITEMS_AFTER_SQL,
            &[&user_id, &after, &sql_limit(Some(limit))],
        )
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(self.err("ping"))
    }

    fn feed(&self) -> Feed {
        Feed::WakeUps {
            users: self.wakeups.subscribe(),
            poll: self.poll_interval,
        }
    }
}
