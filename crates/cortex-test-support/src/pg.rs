//! Memory stores on either backend, for suites that run on both.
//!
//! PostgreSQL fixtures use the server at `CORTEX_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`); each makes a schema
//! of its own with a unique name and drops it when dropped. An unreachable
//! server fails the test with a message saying so: these tests never skip.

use std::sync::atomic::{AtomicU64, Ordering};

use cortex_memory::store::{PgOptions, PostgresStore, Store};

/// The server the PostgreSQL tests use.
pub fn postgres_url() -> String {
    std::env::var("CORTEX_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema of one test's own, dropped (with everything in it) on drop.
#[derive(Debug)]
pub struct PgSchema {
    /// The server's address.
    pub url: String,
    /// The schema's name.
    pub name: String,
}

/// A connection for the fixture's own statements.
async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is unreachable at {url} ({e}): the PostgreSQL tests need a server \
                 (set CORTEX_TEST_POSTGRES_URL to one)"
            )
        });
    tokio::spawn(connection);
    client
}

impl PgSchema {
    /// Creates a schema named after `prefix`, the process and a counter.
    pub async fn create(prefix: &str) -> PgSchema {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let url = postgres_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "t_{}_{}_{}_{nanos}",
            prefix.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let name: String = name.chars().take(48).collect();
        admin(&url)
            .await
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap_or_else(|e| panic!("create schema {name}: {e}"));
        PgSchema { url, name }
    }

    /// Store options that put the tables in this schema.
    pub fn options(&self) -> PgOptions {
        PgOptions {
            schema: Some(self.name.clone()),
            ..PgOptions::default()
        }
    }

    /// A store (one replica) on this schema.
    pub async fn store(&self) -> Store {
        self.store_with(self.options()).await
    }

    /// A store on this schema with `options` (its `schema` is set here).
    pub async fn store_with(&self, options: PgOptions) -> Store {
        let options = PgOptions {
            schema: Some(self.name.clone()),
            ..options
        };
        PostgresStore::connect(&self.url, options)
            .await
            .map(Store::new)
            .unwrap_or_else(|e| panic!("connect a store to schema {}: {e}", self.name))
    }

    /// Runs `sql` on this schema (as the test's administrator).
    pub async fn execute(&self, sql: &str) {
        admin(&self.url)
            .await
            .batch_execute(&format!("SET search_path = {}; {sql}", self.name))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl PgSchema {
    /// The rows of `sql` run on this schema, each column as text.
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let client = admin(&self.url).await;
        client
            .batch_execute(&format!("SET search_path = {}", self.name))
            .await
            .unwrap_or_else(|e| panic!("set search_path: {e}"));
        client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    /// A URL that puts a connection in this schema (for processes that
    /// take only a URL, such as `cortex serve memory --database-url`).
    pub fn schema_url(&self) -> String {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}options=-c%20search_path%3D{}",
            self.url, self.name
        )
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // A runtime of its own on a thread of its own: drop may run inside
        // (or outside) the test's runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}

/// Which backend a suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A schema of its own on the test PostgreSQL server.
    Postgres,
}

/// A store and what keeps its data alive (a directory or a schema).
#[derive(Debug)]
pub struct StoreFixture {
    /// The store.
    pub store: Store,
    /// The temporary directory of a SQLite store.
    pub dir: Option<tempfile::TempDir>,
    /// The schema of a PostgreSQL store.
    pub schema: Option<PgSchema>,
}

impl Backend {
    /// A fresh, empty store on this backend.
    pub async fn store(self, name: &str) -> StoreFixture {
        match self {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
                let store = Store::open(dir.path().join("memory.sqlite3"))
                    .await
                    .unwrap_or_else(|e| panic!("open store: {e}"));
                StoreFixture {
                    store,
                    dir: Some(dir),
                    schema: None,
                }
            }
            Backend::Postgres => {
                let schema = PgSchema::create(name).await;
                StoreFixture {
                    store: schema.store().await,
                    dir: None,
                    schema: Some(schema),
                }
            }
        }
    }
}

/// Runs each listed `async fn name(backend: Backend)` as two tests,
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        mod sqlite {
            $(
                $(#[$attr])*
                async fn $name() {
                    super::$name($crate::pg::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                $(#[$attr])*
                async fn $name() {
                    super::$name($crate::pg::Backend::Postgres).await
                }
            )*
        }
    };
}
