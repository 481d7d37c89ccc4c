//! A `tools/call` the server answers with a task (the tasks extension,
//! `resultType: "task"`): polled with `tasks/get` until it ends, its
//! input requests answered with `tasks/update`, and `tasks/cancel` sent
//! when the caller stops waiting. The rules are in [`crate::tasks`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::McpDialect;
use super::exchange;
use super::session::Session;
use super::transport;
use super::wire::Call;
use super::wire::{self, Reply};
use crate::engine::ServiceState;
use crate::error::McpError;

/// The longest a `tasks/cancel` may take to send.
const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// The longest task id kept (it travels in a header).
const MAX_TASK_ID: usize = 1024;

/// Follows the task `created` (the `CreateTaskResult` of `call`, sent
/// through `session`) to its end; the result of the call.
pub(crate) async fn follow(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    call: &Call<'_>,
    session: &Arc<Session>,
    created: Value,
) -> Result<Value, McpError> {
    let fail = |message: String| {
        transport::failure(&service.name, &call.op, &session.endpoint.url, message)
    };
    let Some(policy) = client.inner.tasks.as_ref() else {
        return Err(fail(
            "the server answered with a task, and the client does not declare the tasks extension"
                .into(),
        ));
    };
    if call.method != "tools/call" {
        return Err(fail(format!(
            "the server answered {} with a task; only tools/call may be",
            call.method
        )));
    }
    let task_id = match created.get("taskId").and_then(Value::as_str) {
        Some(id) if !id.is_empty() && id.len() <= MAX_TASK_ID => id.to_string(),
        _ => {
            return Err(fail(
                "a task without a taskId (or with one empty or over 1024 bytes)".into(),
            ));
        }
    };
    let mut pending = Pending {
        client: client.clone(),
        service: service.clone(),
        session: session.clone(),
        task_id: task_id.clone(),
        armed: true,
    };
    let mut deadline = Instant::now() + service.config.request_timeout;
    let mut state = created;
    let mut answered: HashSet<String> = HashSet::new();
    let mut polls = 0u32;
    loop {
        let status = state.get("status").and_then(Value::as_str).unwrap_or("");
        match status {
            "completed" => {
                pending.armed = false;
                return match state.get("result") {
                    Some(result @ Value::Object(_)) => Ok(result.clone()),
                    _ => Err(fail(format!(
                        "task {task_id} completed without a result object"
                    ))),
                };
            }
            "failed" => {
                pending.armed = false;
                let Some(error) = state.get("error").filter(|e| e.is_object()) else {
                    return Err(fail(format!(
                        "task {task_id} failed without an error object"
                    )));
                };
                let reply = Reply::Error {
                    code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("the task failed")
                        .to_string(),
                    data: error.get("data").cloned().unwrap_or(Value::Null),
                };
                return Err(wire::error(&service.name, &call.op, reply));
            }
            "cancelled" => {
                pending.armed = false;
                let why = state
                    .get("statusMessage")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                return Err(fail(format!("the server cancelled task {task_id}: {why}")));
            }
            "input_required" => {
                answer(
                    client,
                    service,
                    session,
                    call,
                    &task_id,
                    &state,
                    &mut answered,
                )
                .await?;
            }
            "working" => {}
            other => {
                return Err(fail(format!(
                    "task {task_id} has an unknown status {other:?}"
                )));
            }
        }
        if polls >= policy.max_polls {
            return Err(fail(format!(
                "task {task_id} did not end within {} polls",
                policy.max_polls
            )));
        }
        let wait = policy.interval(state.get("pollIntervalMs").and_then(Value::as_u64));
        if let Some(tracker) = &call.progress {
            deadline = tracker.deadline(deadline);
        }
        if Instant::now() + wait >= deadline {
            return Err(transport::timeout(service, &call.op));
        }
        tokio::time::sleep(wait).await;
        polls += 1;
        let next = request(
            client,
            service,
            session,
            call,
            "tasks/get",
            json!({"taskId": task_id}),
        )
        .await?;
        if !next.is_object() {
            return Err(fail(format!(
                "tasks/get of {task_id} answered something other than a task"
            )));
        }
        if let Some(other) = next.get("taskId").and_then(Value::as_str)
            && other != task_id
        {
            return Err(fail(format!(
                "tasks/get of {task_id} answered task {other}"
            )));
        }
        if changed(&state, &next)
            && let Some(tracker) = &call.progress
        {
            tracker.touch();
        }
        state = next;
    }
}

/// Answers the input requests of an `input_required` task that were not
/// answered yet, with one `tasks/update`.
async fn answer(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    session: &Session,
    call: &Call<'_>,
    task_id: &str,
    state: &Value,
    answered: &mut HashSet<String>,
) -> Result<(), McpError> {
    let Some(requests) = state.get("inputRequests").and_then(Value::as_object) else {
        return Err(transport::failure(
            &service.name,
            &call.op,
            &session.endpoint.url,
            format!("task {task_id} requires input and has no inputRequests object"),
        ));
    };
    let fresh: serde_json::Map<String, Value> = requests
        .iter()
        .filter(|(key, _)| !answered.contains(*key))
        .map(|(key, request)| (key.clone(), request.clone()))
        .collect();
    if fresh.is_empty() {
        return Ok(()); // answered already; the server has not caught up
    }
    let asked = json!({"inputRequests": Value::Object(fresh.clone())});
    let Some(responses) = exchange::answer_inputs(client, service, session, call, &asked).await?
    else {
        return Ok(());
    };
    request(
        client,
        service,
        session,
        call,
        "tasks/update",
        json!({"taskId": task_id, "inputResponses": responses}),
    )
    .await?;
    answered.extend(fresh.into_iter().map(|(key, _)| key));
    Ok(())
}

/// Whether the task moved between two polls (for the deadline reset).
fn changed(before: &Value, after: &Value) -> bool {
    ["status", "statusMessage", "lastUpdatedAt"]
        .iter()
        .any(|key| before.get(key) != after.get(key))
}

/// One `tasks/*` request about the call's task, on the endpoint that
/// created it.
async fn request(
    client: &McpDialect,
    service: &Arc<ServiceState>,
    session: &Session,
    call: &Call<'_>,
    method: &'static str,
    params: Value,
) -> Result<Value, McpError> {
    let request = Call {
        method,
        params,
        op: call.op,
        idempotent: method != "tasks/update",
        progress: None,
        headers: Vec::new(),
    };
    exchange::once(client, service, &request, Some(&session.endpoint))
        .await
        .map(|(_, result)| result)
}

/// A task the caller still waits for: dropped while armed (the caller
/// gave up, the deadline passed, the poll budget was spent, the task was
/// malformed), the server is sent `tasks/cancel`.
struct Pending {
    client: McpDialect,
    service: Arc<ServiceState>,
    session: Arc<Session>,
    task_id: String,
    armed: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the client is being torn down
        };
        let (client, service, session) = (
            self.client.clone(),
            self.service.clone(),
            self.session.clone(),
        );
        let task_id = std::mem::take(&mut self.task_id);
        runtime.spawn(async move {
            let call = Call {
                method: "tasks/cancel",
                params: json!({"taskId": task_id}),
                op: wire::Operation::Other("tasks/cancel"),
                idempotent: true,
                progress: None,
                headers: Vec::new(),
            };
            let sent = exchange::once(&client, &service, &call, Some(&session.endpoint));
            match tokio::time::timeout(CANCEL_WAIT, sent).await {
                Ok(Ok(_)) => tracing::debug!(task = %task_id, "task cancelled"),
                Ok(Err(error)) => tracing::debug!(%error, "tasks/cancel was refused"),
                Err(_) => tracing::debug!("tasks/cancel took too long; given up"),
            }
        });
    }
}
