//! Request paths of the Cortex dialect: `/tool/{tool}` and
//! `/resource/{uri}`, percent-encoded the one way every client (and the
//! in-process client, which hands the registry what a route would) writes
//! them.

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// What may not stand in a URI path segment list: `/` (segment separators)
/// and `%` (already-encoded octets) are kept.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// A tool name is one segment, so a `/` in it is encoded too.
const SEGMENT: &AsciiSet = &PATH.add(b'/');

/// A resource URI as it follows `/resource/`: percent-encodes what may not
/// stand in a path, keeping `/` (the URI's own segments) and `%`
/// (already-encoded octets); a leading `/` is dropped.
pub fn encode_resource_uri(uri: &str) -> String {
    utf8_percent_encode(uri.trim_start_matches('/'), PATH).to_string()
}

/// `/tool/{tool}`, the name one encoded segment. One allocation, sized for
/// the common case.
pub fn tool(tool: &str) -> String {
    let tool = tool.trim_start_matches('/');
    let mut path = String::with_capacity("/tool/".len() + tool.len());
    path.push_str("/tool/");
    path.extend(utf8_percent_encode(tool, SEGMENT));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_name_is_one_encoded_segment() {
        assert_eq!(tool("get_item"), "/tool/get_item");
        assert_eq!(tool("a/b c?"), "/tool/a%2Fb%20c%3F");
        assert_eq!(tool("/lead"), "/tool/lead");
        assert_eq!(tool("ünï"), "/tool/%C3%BCn%C3%AF");
    }

    #[test]
    fn a_resource_uri_keeps_its_segments() {
        assert_eq!(
            encode_resource_uri("history/u 1/limit/5"),
            "history/u%201/limit/5"
        );
        assert_eq!(encode_resource_uri("/item/a%2Fb"), "item/a%2Fb");
    }
}
