//! `cortex prompts SERVICE` and `cortex prompt SERVICE NAME [ARG]...`: an
//! MCP server's prompts, through the client's MCP features.

use cortex_client::McpFeatures;
use serde_json::Value;

use crate::cli::{CallArgs, ServiceArg};
use crate::connect::ClientFlags;
use crate::exit::Failure;
use crate::hints::explain;
use crate::input::ArgWords;
use crate::output::{self, line};
use crate::words::Words;

pub(crate) async fn prompts(
    args: ServiceArg,
    flags: &ClientFlags,
    json: bool,
) -> Result<(), Failure> {
    let mut words = Words::new("prompts", args.words, flags.url_service());
    let service = words.service()?;
    words.done()?;
    let target = flags.connect(|c| c).await?;
    let prompts = match target.client.list_prompts(&service).await {
        Ok(prompts) => prompts,
        Err(error) => return Err(explain(&target, error).await),
    };
    if json {
        return output::json(&Value::Array(prompts), true);
    }
    if prompts.is_empty() {
        return line(format!("{service} offers no prompts"));
    }
    let mut rows = vec![vec![
        "PROMPT".to_string(),
        "ARGUMENTS".to_string(),
        "DESCRIPTION".to_string(),
    ]];
    for prompt in &prompts {
        rows.push(vec![
            prompt["name"].as_str().unwrap_or("?").to_string(),
            arguments(prompt),
            prompt["description"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .to_string(),
        ]);
    }
    output::table(&rows)
}

/// `city*, state`: a prompt's arguments, `*` marking the required.
fn arguments(prompt: &Value) -> String {
    prompt["arguments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|argument| {
            let name = argument["name"].as_str()?;
            Some(if argument["required"] == true {
                format!("{name}*")
            } else {
                name.to_string()
            })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) async fn prompt(args: CallArgs, flags: &ClientFlags, json: bool) -> Result<(), Failure> {
    let mut words = Words::new("prompt", args.words, flags.url_service());
    let service = words.service()?;
    let name = words.required("NAME")?;
    // Prompt arguments are strings: `key=value` is taken as written.
    let arguments = ArgWords::parse(&words.rest())?.build(None).await?;
    let target = flags.connect(|c| c).await?;
    let prompt = match target.client.get_prompt(&service, &name, arguments).await {
        Ok(prompt) => prompt,
        Err(error) => return Err(explain(&target, error).await),
    };
    if json {
        return output::json(&prompt, true);
    }
    if let Some(description) = prompt["description"].as_str() {
        line(description.trim())?;
    }
    for message in prompt["messages"].as_array().into_iter().flatten() {
        let role = message["role"].as_str().unwrap_or("?");
        line(format!("{role}: {}", content(&message["content"])))?;
    }
    Ok(())
}

/// A message's content as one readable line: text as is, anything else
/// named by its kind.
fn content(content: &Value) -> String {
    match content["type"].as_str() {
        Some("text") => content["text"].as_str().unwrap_or_default().to_string(),
        Some("resource") => format!(
            "[resource {}] {}",
            content["resource"]["uri"].as_str().unwrap_or("?"),
            content["resource"]["text"].as_str().unwrap_or_default()
        ),
        Some("resource_link") => format!("[link {}]", content["uri"].as_str().unwrap_or("?")),
        Some(kind @ ("image" | "audio")) => format!(
            "[{kind} {}, {} bytes of base64]",
            content["mimeType"].as_str().unwrap_or("?"),
            content["data"].as_str().map_or(0, str::len)
        ),
        _ => content.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments_and_contents_read_as_words() {
        let prompt = json!({"arguments": [{"name": "city", "required": true}, {"name": "state"}]});
        assert_eq!(arguments(&prompt), "city*, state");
        assert_eq!(content(&json!({"type": "text", "text": "hi"})), "hi");
        assert_eq!(
            content(&json!({"type": "image", "mimeType": "image/png", "data": "AAAA"})),
            "[image image/png, 4 bytes of base64]"
        );
    }
}
