//! Wire types of the Cortex HTTP dialect.
//!
//! The dialect is what the Phase 4 services and the seed client speak: tools are
//! called with `POST /tool/{tool}`, resources are read with
//! `GET /resource/{uri}` (as JSON, or as Server-Sent Events), and every failure
//! travels as one error envelope. This crate holds only the shapes and their
//! rules, no I/O, so the service kit and the client agree by construction.
//!
//! # Layout
//! - [`envelope`]: tool-call requests (envelope or bare), result and error envelopes.
//! - [`error`]: the error codes and their HTTP statuses.
//! - [`listing`]: `GET /tools`, `GET /resources` and `GET /health` bodies.
//! - [`sse`]: an SSE encoder and an incremental, bounded decoder.
//! - [`path`]: the dialect's request paths, percent-encoded one way.
//! - [`metrics`]: the latency histogram services and clients both export.
//!
//! # Example
//! ```
//! use cortex_proto::envelope::ToolRequest;
//! use serde_json::json;
//!
//! // The seed's client posts bare arguments; Phase 4 clients wrap them.
//! let bare = ToolRequest::from_body(json!({"user_id": "u1"})).unwrap();
//! let wrapped = ToolRequest::from_body(json!({"arguments": {"user_id": "u1"}})).unwrap();
//! assert_eq!(bare.arguments, wrapped.arguments);
//! assert!(!bare.enveloped && wrapped.enveloped);
//! // The answer mirrors the request's shape.
//! assert_eq!(wrapped.respond(json!(1)), json!({"result": 1}));
//! assert_eq!(bare.respond(json!(1)), json!(1));
//! ```

pub mod envelope;
pub mod error;
pub mod listing;
pub mod metrics;
pub mod path;
pub mod sse;

pub use envelope::{ErrorBody, ErrorEnvelope, ToolRequest};
pub use error::ErrorCode;

/// Header carrying the per-call request id; services echo it.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Header carrying a trace id across services.
pub const TRACE_ID_HEADER: &str = "x-trace-id";
/// Header that makes a tool call safe to repeat.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Header a reconnecting stream reader sends to resume after an event id.
pub const LAST_EVENT_ID_HEADER: &str = "last-event-id";
