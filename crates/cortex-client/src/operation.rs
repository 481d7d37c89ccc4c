//! What one exchange is (a tool call, a read, a stream), for errors, metrics
//! and retry safety. A leaf: the engine, the dialects and the metrics all
//! name it.

/// What one exchange is, for errors, metrics and retry safety.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Operation<'a> {
    Tool(&'a str),
    Read(&'a str),
    Stream(&'a str),
}

impl Operation<'_> {
    /// The tool, or the resource URI (or listing) read or streamed.
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Tool(name) | Self::Read(name) | Self::Stream(name) => name,
        }
    }
}
