//! Benchmarks only: Cortex's MCP client and service kit against rmcp's, the
//! official Rust SDK, on the same tool over Streamable HTTP on loopback.
//! See `benches/mcp_vs_rmcp.rs` and `docs/performance.md`.
