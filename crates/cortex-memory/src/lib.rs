//! The Cortex memory service: stores user inputs and serves their history.
//!
//! Storage ([`store`]) is one interface with two backends: an SQLite file
//! (the embedded default: WAL, one writer thread with group commit, a pool
//! of readers, a broadcast of every committed item for the live streams),
//! or PostgreSQL shared by any number of replicas (per-user event ids under
//! advisory locks, idempotency keys in the database, LISTEN/NOTIFY wake-ups
//! with a fallback poll, migrations under an advisory lock). [`service`]
//! puts a store behind the service kit's tools and resources.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // A file path, or `postgres://user@host:5432/db`.
//! let store = cortex_memory::store::Store::connect("memory.sqlite3").await?;
//! let service = cortex_memory::service::build(store)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await?;
//! cortex_service::serve(listener, service, Default::default(), cortex_service::shutdown_signal()).await?;
//! # Ok(()) }
//! ```

pub mod service;
pub mod store;
