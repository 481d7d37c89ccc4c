//! The Cortex memory service: stores user inputs and serves their history.
//!
//! Storage is an SQLite file ([`store`]): WAL, one writer thread with group
//! commit, a pool of readers, and a broadcast of every committed item that
//! feeds the live history streams. [`service`] puts the store behind the
//! service kit's tools and resources.
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = cortex_memory::store::Store::open("memory.sqlite3").await?;
//! let service = cortex_memory::service::build(store)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await?;
//! cortex_service::serve(listener, service, Default::default(), cortex_service::shutdown_signal()).await?;
//! # Ok(()) }
//! ```

pub mod service;
pub mod store;
