//! A service with the fixtures the official MCP conformance suite's server
//! scenarios ask for by name (prompts, completion, logging, progress), so
//! the kit's support for them can be checked against the suite:
//!
//! ```sh
//! cargo run -p cortex-service --example mcp_fixtures -- 127.0.0.1:3001 &
//! scripts/conformance.sh server --url http://127.0.0.1:3001/mcp \
//!     --scenario prompts-list --scenario completion-complete
//! ```
//!
//! It runs until Ctrl-C. It is an example, not a Cortex service.

use std::time::Duration;

use cortex_service::{
    LogLevel, Prompt, PromptArgument, PromptContent, PromptMessage, Role, Service, ServiceConfig,
    Tool, serve,
};
use serde_json::json;

/// A 1×1 PNG.
const PIXEL_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

fn service() -> Result<Service, cortex_service::BuildError> {
    Service::builder("fixtures", "0.1.0")
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
