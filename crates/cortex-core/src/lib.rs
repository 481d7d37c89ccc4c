//! Cortex core: the application the network client exists for.
//!
//! A user's front door: an input is stored in memory when memory answers,
//! and otherwise kept in core's own durable outbox and stored later,
//! exactly once, in order per user. Every step lands in the user's
//! ordered, resumable output log.
//!
//! # Layout
//! - [`outbox`]: the durable log on SQLite: inputs (pending or stored) and
//!   each user's output events, one ordered event-id space per user.
//! - [`drain`]: stores pending inputs in memory, in order per user, each
//!   under its own idempotency key, so a lost acknowledgement never stores
//!   an input twice.
//!
//! Built so far: the outbox and its drain. The HTTP front door
//! (`POST /input`, `GET /output/stream`, the console) is not built yet.

pub mod drain;
pub mod outbox;

pub use drain::Drainer;
pub use outbox::{Event, Input, InputState, Outbox, OutboxError};
