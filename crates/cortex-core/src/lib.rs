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
//! - [`front`]: [`Core`]: accepting an input (stored now, or pending in
//!   the outbox), history, health; what runs in the background.
//! - [`stream`]: a user's output stream: the log from a position, then
//!   live, each event once, with `status` events.
//! - [`deps`]: memory and cognition, up or down, checked on a timer.
//! - [`context`]: `context` events from cognition after each stored input.
//! - [`tickets`]: short-lived stream tickets for browsers' `EventSource`.
//! - [`http`]: core on the service kit: `POST /input`, `GET
//!   /output/stream`, `GET /history`, the console at `/`, and the tool
//!   `input` and resource `output/{user_id}`.

pub mod context;
pub mod deps;
pub mod drain;
pub mod front;
pub mod http;
pub mod outbox;
pub mod stream;
pub mod tickets;

pub use drain::Drainer;
pub use front::{Accepted, Core, CoreConfig, CoreError, NewInput};
pub use http::{DEFAULT_PORT, service};
pub use outbox::{Event, Input, InputState, Outbox, OutboxError};
