//! Bodies of `GET /tools`, `GET /resources` and `GET /health`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One tool as listed by `GET /tools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// The name used in `POST /tool/{name}`.
    pub name: String,
    /// What the tool does, for people and models.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub input_schema: Value,
    /// The tool changes nothing; repeating it is always safe.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// `GET /tools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolList {
    /// Every tool, sorted by name.
    pub tools: Vec<ToolInfo>,
}

/// One resource pattern as listed by `GET /resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceInfo {
    /// URI pattern such as `history/{user_id}/limit/{n}`.
    pub uri_template: String,
    /// What the resource holds.
    pub description: String,
    /// Media type of a read.
    pub mime_type: String,
    /// True when the resource has a live stream (otherwise SSE gets a
    /// finite stream of the read's elements).
    pub streaming: bool,
}

/// `GET /resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceList {
    /// Every resource pattern, in registration order.
    pub resources: Vec<ResourceInfo>,
}

/// `GET /health`: 200 when healthy, 503 with the same shape when not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `healthy` or `unhealthy`.
    pub status: String,
    /// The service's name.
    pub service: String,
    /// The service's version.
    pub version: String,
    /// Per dependency: `ok` or the failure's message.
    #[serde(default)]
    pub checks: serde_json::Map<String, Value>,
}
