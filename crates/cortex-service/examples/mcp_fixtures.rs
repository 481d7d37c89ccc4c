//! A service with every fixture the official MCP conformance suite's server
//! scenarios ask for by name (content-type tools, logging, progress,
//! sampling and elicitation from a tool, a tool that ends its stream early,
//! `test://` resources, prompts, completion), so the kit's MCP server can be
//! checked against every server scenario of the suite:
//!
//! ```sh
//! scripts/conformance.sh kit
//! # or by hand:
//! cargo run -p cortex-service --example mcp_fixtures -- 127.0.0.1:3001 &
//! scripts/conformance.sh server --url http://127.0.0.1:3001/mcp \
//!     --scenario tools-call-elicitation --scenario server-sse-polling
//! ```
//!
//! The service is named `test`, so its resource URIs are `test://…`, as the
//! suite expects. It runs until Ctrl-C. It is an example, not a Cortex
//! service.

use std::time::Duration;

use base64::Engine as _;
use cortex_proto::ErrorCode;
use cortex_proto::sse::Event;
use cortex_service::{
    CreateMessageParams, LogLevel, Prompt, PromptArgument, PromptContent, PromptMessage, Resource,
    ResourceContent, Role, Service, ServiceConfig, ServiceError, Tool, serve,
};
use futures::StreamExt;
use serde_json::{Value, json};

/// A 1×1 PNG.
const PIXEL_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

/// A WAV file with one silent sample.
const SILENCE_WAV: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";

/// A tool without arguments whose value is the MCP result `content`.
fn content_tool(name: &str, description: &str, content: Value) -> Tool {
    Tool::new(
        name,
        description,
        json!({"type": "object"}),
        move |_ctx, _args| {
            let content = content.clone();
            async move { Ok(json!({ "content": content })) }
        },
    )
    .read_only()
    .returns_mcp_content()
}

/// A tool result of one text block.
fn text(text: impl Into<String>) -> Value {
    json!({"content": [{"type": "text", "text": text.into()}]})
}

/// The form of `test_elicitation_sep1034_defaults`: a default for every
/// primitive type (SEP-1034).
fn defaults_form() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active"
            },
            "verified": {"type": "boolean", "description": "Verification status", "default": true}
        },
        "required": []
    })
}

/// The form of `test_elicitation_sep1330_enums`: the five enum shapes of
/// SEP-1330.
fn enums_form() -> Value {
    json!({
        "type": "object",
        "properties": {
            "untitledSingle": {
                "type": "string",
                "description": "Select one option",
                "enum": ["option1", "option2", "option3"]
            },
            "titledSingle": {
                "type": "string",
                "description": "Select one option with titles",
                "oneOf": [
                    {"const": "value1", "title": "First Option"},
                    {"const": "value2", "title": "Second Option"},
                    {"const": "value3", "title": "Third Option"}
                ]
            },
            "legacyEnum": {
                "type": "string",
                "description": "Select one option (legacy)",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"]
            },
            "untitledMulti": {
                "type": "array",
                "description": "Select multiple options",
                "minItems": 1,
                "maxItems": 3,
                "items": {"type": "string", "enum": ["option1", "option2", "option3"]}
            },
            "titledMulti": {
                "type": "array",
                "description": "Select multiple options with titles",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "anyOf": [
                        {"const": "value1", "title": "First Choice"},
                        {"const": "value2", "title": "Second Choice"},
                        {"const": "value3", "title": "Third Choice"}
                    ]
                }
            }
        },
        "required": []
    })
}

/// A tool that asks its client to fill in `form` and reports the answer.
fn form_tool(name: &str, description: &str, message: &'static str, form: Value) -> Tool {
    Tool::new(
        name,
        description,
        json!({"type": "object"}),
        move |ctx, _args| {
            let form = form.clone();
            async move {
                let answer = ctx.elicit(message, form).await?;
                Ok(text(format!(
                    "Elicitation completed: action={}, content={}",
                    json!(answer.action),
                    json!(answer.content.unwrap_or_default())
                )))
            }
        },
    )
    .returns_mcp_content()
}

fn string_argument(name: &str, description: &str) -> Value {
    json!({
        "type": "object",
        "properties": {name: {"type": "string", "description": description}},
        "required": [name]
    })
}

fn argument(args: &serde_json::Map<String, Value>, name: &str) -> String {
    args.get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn tools(builder: cortex_service::ServiceBuilder) -> cortex_service::ServiceBuilder {
    builder
        .tool(content_tool(
            "test_simple_text",
            "Answers one text block.",
            json!([{"type": "text", "text": "This is a simple text response for testing."}]),
        ))
        .tool(content_tool(
            "test_image_content",
            "Answers an image.",
            json!([{"type": "image", "data": PIXEL_PNG, "mimeType": "image/png"}]),
        ))
        .tool(content_tool(
            "test_audio_content",
            "Answers audio.",
            json!([{"type": "audio", "data": SILENCE_WAV, "mimeType": "audio/wav"}]),
        ))
        .tool(content_tool(
            "test_embedded_resource",
            "Answers an embedded resource.",
            json!([{"type": "resource", "resource": {
                "uri": "test://embedded-resource",
                "mimeType": "text/plain",
                "text": "This is an embedded resource content."
            }}]),
        ))
        .tool(content_tool(
            "test_multiple_content_types",
            "Answers text, an image and an embedded resource.",
            json!([
                {"type": "text", "text": "Multiple content types test:"},
                {"type": "image", "data": PIXEL_PNG, "mimeType": "image/png"},
                {"type": "resource", "resource": {
                    "uri": "test://mixed-content-resource",
                    "mimeType": "application/json",
                    "text": json!({"test": "data", "value": 123}).to_string()
                }}
            ]),
        ))
        .tool(Tool::new(
            "test_error_handling",
            "Always fails.",
            json!({"type": "object"}),
            |_ctx, _args| async {
                Err(ServiceError::new(
                    ErrorCode::ToolExecutionError,
                    "This tool intentionally returns an error for testing",
                ))
            },
        ))
        .tool(
            Tool::new(
                "test_reconnection",
                "Ends its response stream at once, then answers: the client resumes the \
                 stream with Last-Event-ID to get the answer (SEP-1699).",
                json!({"type": "object"}),
                |ctx, _args| async move {
                    ctx.end_stream();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(text(
                        "Reconnection test completed successfully. If you received this, the \
                         client properly reconnected after stream closure.",
                    ))
                },
            )
            .returns_mcp_content(),
        )
        .tool(
            Tool::new(
                "test_sampling",
                "Asks the client's model to answer `prompt`.",
                string_argument("prompt", "The prompt to send to the LLM"),
                |ctx, args| async move {
                    let prompt = argument(&args, "prompt");
                    let sampled = ctx.sample(CreateMessageParams::user(prompt, 100)).await?;
                    Ok(text(format!(
                        "LLM response: {}",
                        sampled.text().unwrap_or("No response")
                    )))
                },
            )
            .returns_mcp_content(),
        )
        .tool(
            Tool::new(
                "test_elicitation",
                "Asks the client's user for a username and an email address.",
                string_argument("message", "The message to show the user"),
                |ctx, args| async move {
                    let form = json!({
                        "type": "object",
                        "properties": {
                            "username": {"type": "string", "description": "User's response"},
                            "email": {"type": "string", "description": "User's email address"}
                        },
                        "required": ["username", "email"]
                    });
                    let answer = ctx.elicit(argument(&args, "message"), form).await?;
                    Ok(text(format!(
                        "User response: action={}, content={}",
                        json!(answer.action),
                        json!(answer.content.unwrap_or_default())
                    )))
                },
            )
            .returns_mcp_content(),
        )
        .tool(form_tool(
            "test_elicitation_sep1034_defaults",
            "Asks for a form whose fields have defaults (SEP-1034).",
            "Please review and update the form fields with defaults",
            defaults_form(),
        ))
        .tool(form_tool(
            "test_elicitation_sep1330_enums",
            "Asks for a form with every enum shape (SEP-1330).",
            "Please select options from the enum fields",
            enums_form(),
        ))
        .tool(
            Tool::new(
                "json_schema_2020_12_tool",
                "Takes arguments described with JSON Schema 2020-12 keywords (SEP-1613).",
                json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "type": "object",
                    "$defs": {
                        "address": {
                            "type": "object",
                            "properties": {
                                "street": {"type": "string"},
                                "city": {"type": "string"}
                            }
                        }
                    },
                    "properties": {
                        "name": {"type": "string"},
                        "address": {"$ref": "#/$defs/address"}
                    },
                    "additionalProperties": false
                }),
                |_ctx, args| async move {
                    Ok(text(format!(
                        "JSON Schema 2020-12 tool called with: {}",
                        Value::Object(args)
                    )))
                },
            )
            .read_only()
            .returns_mcp_content(),
        )
}

fn resources(builder: cortex_service::ServiceBuilder) -> cortex_service::ServiceBuilder {
    builder
        .resource(
            Resource::new(
                "static-text",
                "A static text resource.",
                |_ctx, _params| async {
                    Ok(ResourceContent::Text {
                        text: "This is the content of the static text resource.".into(),
                        mime_type: "text/plain".into(),
                    })
                },
            )
            .with_mime_type("text/plain"),
        )
        .resource(
            Resource::new(
                "static-binary",
                "A static binary resource (a PNG image).",
                |_ctx, _params| async {
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(PIXEL_PNG)
                        .map_err(|e| ServiceError::internal(e.to_string()))?;
                    Ok(ResourceContent::Binary {
                        data,
                        mime_type: "image/png".into(),
                    })
                },
            )
            .with_mime_type("image/png"),
        )
        .resource(Resource::new(
            "template/{id}/data",
            "Data for an id.",
            |_ctx, params| async move {
                let id = params.get("id")?.to_string();
                Ok(ResourceContent::Json(json!({
                    "id": id,
                    "templateTest": true,
                    "data": format!("Data for ID: {id}"),
                })))
            },
        ))
        .resource(
            Resource::new(
                "watched-resource",
                "A resource that changes every 3 seconds; subscribe to hear of it.",
                |_ctx, _params| async {
                    Ok(ResourceContent::Text {
                        text: "Watched resource content.".into(),
                        mime_type: "text/plain".into(),
                    })
                },
            )
            .with_mime_type("text/plain")
            .with_stream(|_ctx, _params, _last| async {
                let ticks = futures::stream::unfold(0u64, |n| async move {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    let event = Event::message(json!({"revision": n + 1}).to_string())
                        .with_id((n + 1).to_string());
                    Some((Ok(event), n + 1))
                });
                Ok(ticks.boxed())
            }),
        )
}

fn service() -> Result<Service, cortex_service::BuildError> {
    let builder = Service::builder("test", "0.1.0");
    resources(tools(builder))
        .prompt(Prompt::new(
            "test_simple_prompt",
            "A prompt without arguments.",
            |_ctx, _args| async {
                Ok(vec![PromptMessage::user(
                    "This is a simple prompt for testing.",
                )])
            },
        ))
        .prompt(
            Prompt::new(
                "test_prompt_with_arguments",
                "A prompt with two required arguments.",
                |_ctx, args| async move {
                    let arg = |name: &str| args.get(name).cloned().unwrap_or_default();
                    Ok(vec![PromptMessage::user(format!(
                        "Prompt with arguments: arg1='{}', arg2='{}'",
                        arg("arg1"),
                        arg("arg2")
                    ))])
                },
            )
            .argument(
                PromptArgument::new("arg1", "First test argument")
                    .required()
                    .with_completer(|typed, _| {
                        ["paris", "park", "party", "test", "testing"]
                            .iter()
                            .filter(|v| v.starts_with(typed))
                            .map(|v| v.to_string())
                            .collect()
                    }),
            )
            .argument(PromptArgument::new("arg2", "Second test argument").required()),
        )
        .prompt(
            Prompt::new(
                "test_prompt_with_embedded_resource",
                "A prompt embedding a resource.",
                |_ctx, args| async move {
                    let uri = args.get("resourceUri").cloned().unwrap_or_default();
                    Ok(vec![
                        PromptMessage::resource(
                            Role::User,
                            uri,
                            "text/plain",
                            "Embedded resource content for testing.",
                        ),
                        PromptMessage::user("Please process the embedded resource above."),
                    ])
                },
            )
            .argument(
                PromptArgument::new("resourceUri", "URI of the resource to embed").required(),
            ),
        )
        .prompt(Prompt::new(
            "test_prompt_with_image",
            "A prompt with an image.",
            |_ctx, _args| async {
                Ok(vec![
                    PromptMessage {
                        role: Role::User,
                        content: PromptContent::Raw(
                            json!({"type": "image", "data": PIXEL_PNG, "mimeType": "image/png"}),
                        ),
                    },
                    PromptMessage::user("Please analyze the image above."),
                ])
            },
        ))
        .tool(Tool::new(
            "test_tool_with_logging",
            "Sends three log messages while it runs.",
            json!({"type": "object"}),
            |ctx, _args| async move {
                ctx.log(LogLevel::Info, json!("Tool execution started"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                ctx.log(LogLevel::Info, json!("Tool processing data"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                ctx.log(LogLevel::Info, json!("Tool execution completed"));
                Ok(json!("Tool with logging executed successfully"))
            },
        ))
        .tool(Tool::new(
            "test_tool_with_progress",
            "Reports progress 0, 50 and 100 of 100.",
            json!({"type": "object"}),
            |ctx, _args| async move {
                for (i, step) in [0.0, 50.0, 100.0].into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    ctx.progress(step, Some(100.0), None);
                }
                Ok(json!("Tool with progress executed successfully"))
            },
        ))
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3001".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("MCP fixtures at http://{}/mcp", listener.local_addr()?);
    serve(listener, service()?, ServiceConfig::default(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
