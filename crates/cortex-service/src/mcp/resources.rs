//! Resource URIs: the kit's patterns (`history/{user_id}`) as MCP URIs
//! (`memory://history/{user_id}`), and back.

use cortex_proto::listing::ResourceInfo;
use serde_json::{Value, json};

use crate::pattern::{Pattern, split_uri};
use crate::registry::Service;

/// The URI scheme of a service's resources: its name, lowercased, with any
/// character a scheme cannot hold (RFC 3986: letters, digits, `+`, `-`,
/// `.`, starting with a letter) replaced by `-`. `memory` → `memory://…`.
pub fn uri_scheme(service_name: &str) -> String {
    let mut scheme: String = service_name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !scheme.starts_with(|c: char| c.is_ascii_alphabetic()) {
        scheme.insert_str(0, "service-");
    }
    scheme
}

/// The `_meta` key marking a resource (template) whose URIs have a live
/// stream, so `resources/subscribe` works on them.
pub(crate) const LIVE_META_KEY: &str = "cortex/liveStream";

/// The registry's resource patterns, compiled once.
pub(crate) struct ResourceIndex {
    scheme: String,
    entries: Vec<(Pattern, ResourceInfo)>,
}

impl ResourceIndex {
    pub(crate) fn new(service: &Service) -> Self {
        let entries = service
            .resources()
            .into_iter()
            .filter_map(|info| Pattern::parse(&info.uri_template).ok().map(|p| (p, info)))
            .collect();
        Self {
            scheme: uri_scheme(service.name()),
            entries,
        }
    }

    fn uri(&self, pattern: &str) -> String {
        format!("{}://{pattern}", self.scheme)
    }

    fn describe(&self, info: &ResourceInfo, key: &str) -> Value {
        let mut item = json!({
            key: self.uri(&info.uri_template),
            "name": info.uri_template,
            "description": info.description,
            "mimeType": info.mime_type,
        });
        if info.streaming {
            item["_meta"] = json!({ LIVE_META_KEY: true });
        }
        item
    }

    /// `resources/list`: the patterns without parameters.
    pub(crate) fn concrete(&self) -> Vec<Value> {
        self.entries
            .iter()
            .filter(|(_, info)| !info.uri_template.contains('{'))
            .map(|(_, info)| self.describe(info, "uri"))
            .collect()
    }

    /// `resources/templates/list`: the patterns with parameters.
    pub(crate) fn templates(&self) -> Vec<Value> {
        self.entries
            .iter()
            .filter(|(_, info)| info.uri_template.contains('{'))
            .map(|(_, info)| self.describe(info, "uriTemplate"))
            .collect()
    }

    /// The kit's URI (path) of an MCP URI: the URI without `<scheme>://`;
    /// `None` when the scheme is another service's.
    pub(crate) fn path_of<'a>(&self, uri: &'a str) -> Option<&'a str> {
        let (scheme, rest) = uri.split_once("://")?;
        scheme
            .eq_ignore_ascii_case(&self.scheme)
            .then(|| rest.trim_start_matches('/'))
    }

    /// The resource a path names (the most literal match, as the registry
    /// picks it), if any.
    pub(crate) fn find(&self, path: &str) -> Option<&ResourceInfo> {
        let segments = split_uri(path).ok()?;
        self.entries
            .iter()
            .filter(|(pattern, _)| pattern.matches(&segments).is_some())
            .max_by_key(|(pattern, _)| pattern.specificity())
            .map(|(_, info)| info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_valid() {
        assert_eq!(uri_scheme("memory"), "memory");
        assert_eq!(uri_scheme("My_Service"), "my-service");
        assert_eq!(uri_scheme("9lives"), "service-9lives");
    }
}
