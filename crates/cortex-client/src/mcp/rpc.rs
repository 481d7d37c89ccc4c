//! A request as the dialect's callers make it: sent once through
//! [`super::exchange::once`], with 2026-07-28's `input_required` rounds answered
//! (bounded) and a tasks-extension result followed to its end
//! ([`super::tasks`]).

use std::sync::Arc;

use serde_json::Value;

use super::McpDialect;
use super::exchange::{answer_inputs, once};
use super::session::Session;
use super::transport::failure;
use super::wire::Call;
use crate::engine::ServiceState;
use crate::error::McpError;
use cortex_discovery::Endpoint;

/// At most this many `input_required` rounds per request (2026-07-28):
/// a server that keeps asking cannot hold the call for ever.
const MAX_INPUT_ROUNDS: usize = 8;

/// Sends `call` to `service` through the session of whichever endpoint
/// `execute` chooses; returns that session and the result.
pub(crate) async fn call(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    call: &Call<'_>,
) -> Result<(Arc<Session>, Value), McpError> {
    call_at(client, service, call, None).await
}

/// As [`call`], on `pin` alone when given (one replica's health check).
///
/// A result with `resultType: "input_required"` (2026-07-28's multi
/// round-trip requests) is answered: each of its `inputRequests` goes to
/// the application's [`ServerRequestHandler`](crate::server_requests::ServerRequestHandler), and the request
/// is sent again with the `inputResponses` and the server's
/// `requestState`, at most [`MAX_INPUT_ROUNDS`] times. A result with
/// `resultType: "task"` (the tasks extension) is followed to its end
/// (see [`super::tasks`]).
pub(crate) async fn call_at(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    call: &Call<'_>,
    pin: Option<&Endpoint>,
) -> Result<(Arc<Session>, Value), McpError> {
    // The request as sent again after an `input_required` round; copied
    // only then.
    let mut round: Option<Call<'_>> = None;
    for _ in 0..=MAX_INPUT_ROUNDS {
        let (session, result) = once(client, service, round.as_ref().unwrap_or(call), pin).await?;
        match result.get("resultType").and_then(Value::as_str) {
            Some("input_required") => {}
            Some("task") => {
                let result = Box::pin(super::tasks::follow(
                    client, service, call, &session, result,
                ))
                .await?;
                return Ok((session, result));
            }
            _ => return Ok((session, result)),
        }
        // Boxed: rare, and its state would weigh on every call's future.
        let responses = Box::pin(answer_inputs(client, service, &session, call, &result)).await?;
        let round = round.get_or_insert_with(|| call.clone());
        let params = round.params.as_object_mut().ok_or_else(|| {
            failure(
                &service.name,
                &call.op,
                &session.endpoint.url,
                "the server asked for input on a request without parameters".into(),
            )
        })?;
        params.remove("inputResponses");
        params.remove("requestState");
        if let Some(responses) = responses {
            params.insert("inputResponses".into(), responses);
        }
        if let Some(state) = result.get("requestState") {
            params.insert("requestState".into(), state.clone());
        }
    }
    Err(failure(
        &service.name,
        &call.op,
        "",
        format!("the server still asked for input after {MAX_INPUT_ROUNDS} rounds"),
    ))
}
