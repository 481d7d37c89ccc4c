//! Prompts: named message templates a client fills in with arguments
//! (MCP `prompts/list`, `prompts/get`), and completers that suggest values
//! for their arguments and for resource pattern parameters
//! (`completion/complete`).
//!
//! ```
//! use cortex_service::{Prompt, PromptArgument, PromptMessage};
//!
//! let prompt = Prompt::new("summarize", "Summarizes a user's history.", |_ctx, args| async move {
//!     let user = args.get("user_id").cloned().unwrap_or_default();
//!     Ok(vec![PromptMessage::user(format!("Summarize the history of {user}."))])
//! })
//! .with_title("Summarize history")
//! .argument(PromptArgument::new("user_id", "Whose history.").required());
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::call::CallContext;
use crate::error::ServiceError;

/// At most this many values are sent in one completion answer (MCP's cap).
pub const MAX_COMPLETION_VALUES: usize = 100;

/// Suggests values for one argument: gets the text typed so far and the
/// values of the other arguments already known, returns candidates.
pub type Completer = Arc<dyn Fn(&str, &Map<String, Value>) -> Vec<String> + Send + Sync>;

type PromptHandler = Arc<
    dyn Fn(
            CallContext,
            BTreeMap<String, String>,
        ) -> BoxFuture<'static, Result<Vec<PromptMessage>, ServiceError>>
        + Send
        + Sync,
>;

/// Who a prompt message is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The user.
    User,
    /// The assistant.
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// What a prompt message holds.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptContent {
    /// Text.
    Text(String),
    /// A resource embedded in the message (`type: "resource"`).
    Resource {
        /// Its URI, such as `memory://history/alice`.
        uri: String,
        /// Its media type.
        mime_type: String,
        /// Its text.
        text: String,
    },
    /// Any other MCP content block (an image, audio), sent as given.
    Raw(Value),
}

/// One message of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptMessage {
    /// Who it is from.
    pub role: Role,
    /// What it holds.
    pub content: PromptContent,
}

impl PromptMessage {
    /// A text message from the user.
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: PromptContent::Text(text.into()),
        }
    }

    /// A text message from the assistant.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: PromptContent::Text(text.into()),
        }
    }

    /// A message from `role` embedding a text resource.
    pub fn resource(
        role: Role,
        uri: impl Into<String>,
        mime_type: impl Into<String>,
        text: impl Into<String>,
    ) -> Self {
        Self {
            role,
            content: PromptContent::Resource {
                uri: uri.into(),
                mime_type: mime_type.into(),
                text: text.into(),
            },
        }
    }

    /// The message as MCP's `PromptMessage`.
    pub fn to_mcp(&self) -> Value {
        let content = match &self.content {
            PromptContent::Text(text) => json!({"type": "text", "text": text}),
            PromptContent::Resource {
                uri,
                mime_type,
                text,
            } => json!({"type": "resource", "resource": {
                "uri": uri, "mimeType": mime_type, "text": text,
            }}),
            PromptContent::Raw(value) => value.clone(),
        };
        json!({"role": self.role.as_str(), "content": content})
    }
}

/// One argument of a prompt.
#[derive(Clone)]
pub struct PromptArgument {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) required: bool,
    pub(crate) completer: Option<Completer>,
}

impl PromptArgument {
    /// An optional argument.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            required: false,
            completer: None,
        }
    }

    /// Makes the argument required: `prompts/get` without it is refused.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Suggests values for the argument (`completion/complete`). It runs on
    /// the request's task, so it must be quick and never block.
    pub fn with_completer<F>(mut self, complete: F) -> Self
    where
        F: Fn(&str, &Map<String, Value>) -> Vec<String> + Send + Sync + 'static,
    {
        self.completer = Some(Arc::new(complete));
        self
    }
}

/// A prompt: a name, a description, its arguments and the async function
/// that produces its messages.
#[derive(Clone)]
pub struct Prompt {
    pub(crate) name: String,
    pub(crate) title: Option<String>,
    pub(crate) description: String,
    pub(crate) arguments: Vec<PromptArgument>,
    pub(crate) handler: PromptHandler,
}

impl Prompt {
    /// A prompt whose messages `handler` produces from the arguments given
    /// (the required ones are checked to be present before it runs).
    pub fn new<F, Fut>(name: impl Into<String>, description: impl Into<String>, handler: F) -> Self
    where
        F: Fn(CallContext, BTreeMap<String, String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<PromptMessage>, ServiceError>> + Send + 'static,
    {
        Self {
            name: name.into(),
            title: None,
            description: description.into(),
            arguments: Vec::new(),
            handler: Arc::new(move |ctx, args| Box::pin(handler(ctx, args))),
        }
    }

    /// A human-readable title.
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Adds an argument.
    pub fn argument(mut self, argument: PromptArgument) -> Self {
        self.arguments.push(argument);
        self
    }

    /// The prompt as an entry of MCP's `prompts/list`.
    pub(crate) fn to_mcp(&self) -> Value {
        let arguments: Vec<Value> = self
            .arguments
            .iter()
            .map(|a| json!({"name": a.name, "description": a.description, "required": a.required}))
            .collect();
        let mut prompt = json!({
            "name": self.name,
            "description": self.description,
            "arguments": arguments,
        });
        if let Some(title) = &self.title {
            prompt["title"] = json!(title);
        }
        prompt
    }
}

/// What a completer found: at most [`MAX_COMPLETION_VALUES`] values, the
/// total it found and whether there were more than were sent.
pub(crate) fn completion(values: Vec<String>) -> Value {
    let total = values.len();
    let values: Vec<String> = values.into_iter().take(MAX_COMPLETION_VALUES).collect();
    json!({"completion": {
        "values": values,
        "total": total,
        "hasMore": total > MAX_COMPLETION_VALUES,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_is_capped_at_one_hundred() {
        let many: Vec<String> = (0..150).map(|i| i.to_string()).collect();
        let answer = completion(many);
        assert_eq!(
            answer["completion"]["values"].as_array().map(Vec::len),
            Some(100)
        );
        assert_eq!(answer["completion"]["total"], 150);
        assert_eq!(answer["completion"]["hasMore"], true);
        let few = completion(vec!["a".into()]);
        assert_eq!(few["completion"]["hasMore"], false);
        assert_eq!(few["completion"]["total"], 1);
    }

    #[test]
    fn embedded_resources_use_the_mcp_shape() {
        let message = PromptMessage::resource(Role::User, "memory://x", "text/plain", "hi");
        let value = message.to_mcp();
        assert_eq!(value["role"], "user");
        assert_eq!(value["content"]["type"], "resource");
        assert_eq!(value["content"]["resource"]["uri"], "memory://x");
        assert_eq!(value["content"]["resource"]["text"], "hi");
    }
}
