//! The kit's fixed paths, named once. A leaf: routing, authentication and
//! the bounds layer all need them.

/// The path MCP is served at.
pub const MCP_PATH: &str = "/mcp";
