//! `cortex input` and `cortex output`: a user's side of core, through the
//! network client (core's tool `input` and resource `output/{user}`), so
//! retries, breakers and stream resumption work as for any service.

use cortex_client::McpClient;
use serde_json::{Value, json};

use crate::cli::{InputArgs, OutputArgs};
use crate::client_cmds::follow;
use crate::connect::ClientFlags;
use crate::exit::Failure;
use crate::hints::explain;
use crate::output::line;

/// The service name core is reached by (`CORE_SERVICE_URL`, default
/// `http://localhost:8000`).
const CORE: &str = "core";

/// Whose inputs and output: `--user`, else the login name.
fn user_of(user: Option<&str>) -> String {
    user.map_or_else(crate::auth::login_name, str::to_string)
}

pub(crate) async fn input(
    args: InputArgs,
    flags: &ClientFlags,
    user: Option<&str>,
    json_out: bool,
) -> Result<(), Failure> {
    let user = user_of(user);
    let mut arguments = json!({"content": args.text, "user_id": user});
    if let Some(conversation) = args.conversation {
        arguments["conversation_id"] = Value::String(conversation);
    }
    let target = flags.connect(|c| c).await?;
    // One key per command: the client's own retries of this input are the
    // same input to core.
    let key = uuid_key();
    let answer = match target
        .client
        .call_tool_with_key(CORE, "input", arguments, &key)
        .await
    {
        Ok(answer) => answer,
        Err(error) => return Err(explain(&target, error).await),
    };
    if json_out {
        return crate::output::json(&answer, true);
    }
    let input_id = answer["input_id"].as_str().unwrap_or("?");
    match answer["status"].as_str() {
        Some("stored") => line(format!(
            "stored: input {input_id} is item {} in memory",
            answer["item_id"]
        )),
        Some("storage_pending") => line(format!(
            "accepted: input {input_id} is kept by core and will be stored when memory is back \
             (watch: cortex output)"
        )),
        _ => crate::output::json(&answer, false),
    }
}

pub(crate) async fn output(
    args: OutputArgs,
    flags: &ClientFlags,
    user: Option<&str>,
    json_out: bool,
) -> Result<(), Failure> {
    let user = user_of(user);
    let uri = format!("output/{}", cortex_client::typed::segment(&user));
    let target = flags.connect(|c| c).await?;
    let events = match target
        .client
        .stream_resource_from(CORE, &uri, args.from.map(|id| id.to_string()))
        .await
    {
        Ok(events) => events,
        Err(error) => return Err(explain(&target, error).await),
    };
    // `status` events (no id) tell the present; only the log counts.
    follow(
        events,
        args.count,
        |event| event.id.is_some(),
        |event| {
            if json_out {
                line(json!({"id": event.id, "event": event.event, "data": event.data}).to_string())
            } else {
                line(describe(event.id.as_deref(), &event.event, &event.data))
            }
        },
    )
    .await
}

/// One line per event, for people: `#ID KIND what happened`.
fn describe(id: Option<&str>, kind: &str, data: &Value) -> String {
    let id = id.map_or_else(|| "  ".to_string(), |id| format!("#{id}"));
    let input = data["input_id"].as_str().unwrap_or_default();
    let what = match kind {
        "input" => format!(
            "stored {input} as item {}: {}",
            data["item_id"],
            data["item"]["content"].as_str().unwrap_or_default()
        ),
        "pending" => format!("kept {input} until memory is back"),
        "stored" => format!("stored {input} as item {}", data["item_id"]),
        "failed" => format!(
            "memory refused {input}: {}",
            data["reason"].as_str().unwrap_or_default()
        ),
        "context" if data["degraded"] == true => format!(
            "context for {input}: degraded ({})",
            data["reason"].as_str().unwrap_or_default()
        ),
        "context" => {
            let items = data["context"]["items"].as_array().map_or(0, Vec::len);
            format!("context for {input}: {items} items")
        }
        "status" => format!(
            "{} is {}",
            data["service"].as_str().unwrap_or_default(),
            data["state"].as_str().unwrap_or_default()
        ),
        _ => data.to_string(),
    };
    format!("{id} {kind:<8} {what}")
}

/// A fresh idempotency key.
fn uuid_key() -> String {
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves zeros: the key is then still unique
    // enough for one command's retries, which is all it is for.
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_sentences() {
        let line = describe(
            Some("3"),
            "stored",
            &json!({"input_id": "i1", "item_id": 7}),
        );
        assert_eq!(line, "#3 stored   stored i1 as item 7");
        let line = describe(
            None,
            "status",
            &json!({"service": "memory", "state": "down"}),
        );
        assert_eq!(line, "   status   memory is down");
    }
}
