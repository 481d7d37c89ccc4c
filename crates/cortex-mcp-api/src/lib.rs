//! The contract between Cortex's MCP clients and the code that uses them.
//!
//! [`McpClient`] (call a tool, read or stream a resource, list, check
//! health), the errors every call can fail with ([`McpError`], its
//! [`Cause`] and [`Retry`] class, [`ConfigError`]), and the values they carry
//! ([`Resource`], [`StreamEvent`], [`EventStream`]). Two crates implement it:
//! `cortex-client` over the network, and `cortex-service`'s in-process
//! client for services in the same process. Code that only calls services,
//! and the typed clients, need nothing but this crate, so they can be given
//! either.
//!
//! No transport and no server code lives here: depending on this crate
//! compiles neither hyper nor axum.
//!
//! # Layout
//! - [`api`]: the [`McpClient`] trait and its values.
//! - [`error`]: [`McpError`], [`Cause`], [`Retry`], [`ConfigError`].
//! - [`forward`]: [`with_authorization`], a caller's credentials on the
//!   calls made for it, honoured by every implementation.

pub mod api;
pub mod error;
pub mod forward;
pub mod log;

pub use api::{EventStream, McpClient, Resource, StreamEvent};
pub use error::{Cause, ConfigError, McpError, Retry};
pub use forward::with_authorization;
pub use log::LogLevel;
