//! Forwarding a caller's credentials.
//!
//! A service that calls other services on behalf of its caller (cognition
//! reading memory) should reach them as that caller, not as itself. Wrapping
//! the work done for one request in [`with_authorization`] makes every
//! request a client sends while it runs carry the caller's `Authorization`
//! header, as received, in place of the client's own token. Both clients
//! honour it: the network client sends the header, the in-process client
//! puts it in the callee's `CallContext`.
//!
//! ```no_run
//! # async fn handler(client: &dyn cortex_mcp_api::McpClient, caller: &http::HeaderMap)
//! # -> Result<(), cortex_mcp_api::McpError> {
//! let authorization = caller.get(http::header::AUTHORIZATION).cloned();
//! let history = cortex_mcp_api::with_authorization(authorization, async {
//!     client.read_resource("memory", "history/u1").await
//! })
//! .await?;
//! # Ok(()) }
//! ```

use std::future::Future;

use http::HeaderValue;

tokio::task_local! {
    static AUTHORIZATION: Option<HeaderValue>;
}

/// Runs `future` so that every request a Cortex client makes while it runs
/// carries `authorization` (a caller's `Authorization` header value) instead
/// of the client's own token. With `None` the requests carry the client's
/// own token, even inside an enclosing scope: what is passed is what is
/// sent.
///
/// The scope covers the requests made while `future` is polled: a resource
/// stream opened inside it and read outside reconnects with the client's
/// own token.
pub async fn with_authorization<F: Future>(
    authorization: Option<HeaderValue>,
    future: F,
) -> F::Output {
    AUTHORIZATION.scope(authorization, future).await
}

/// Runs `future` as the client itself: for what a client implementation
/// opens once and shares between callers (sessions, shared streams, cached
/// listings).
pub async fn as_client<F: Future>(future: F) -> F::Output {
    AUTHORIZATION.scope(None, future).await
}

/// The `Authorization` forwarded in the current task, if any: what a client
/// implementation sends (or hands its callee) instead of its own token.
pub fn forwarded() -> Option<HeaderValue> {
    AUTHORIZATION.try_with(Clone::clone).ok().flatten()
}
