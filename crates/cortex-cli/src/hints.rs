//! Errors that name the fix: "did you mean …" with the names that exist,
//! and what to check when a built-in default endpoint refuses connections.

use std::time::Duration;

use cortex_client::{McpClient, McpError};

use crate::connect::Target;
use crate::exit::Failure;

/// How long to spend asking a service for its names, to explain an error.
const LISTING_TIMEOUT: Duration = Duration::from_secs(3);
/// How similar (Jaro-Winkler, 0 to 1) a name must be to be suggested.
const SIMILAR: f64 = 0.8;
/// How many known names to list.
const SHOW: usize = 12;

/// `error` as a failure, with a hint when one helps: the closest known
/// name for an unknown service, tool or resource, with the others; and
/// "is `cortex up` running?" when a default endpoint refuses.
pub(crate) async fn explain(target: &Target, error: McpError) -> Failure {
    let hint = match &error {
        McpError::ServiceNotFound { service, .. } => suggest(service, &target.names),
        McpError::ToolNotFound { service, tool } => {
            match tokio::time::timeout(LISTING_TIMEOUT, target.client.list_tools(service)).await {
                Ok(Ok(list)) => {
                    let names: Vec<String> = list.tools.into_iter().map(|t| t.name).collect();
                    suggest(tool, &names)
                }
                _ => String::new(),
            }
        }
        McpError::ResourceNotFound { service, uri, .. } => {
            match tokio::time::timeout(LISTING_TIMEOUT, target.client.list_resources(service)).await
            {
                Ok(Ok(list)) => {
                    let patterns: Vec<String> =
                        list.resources.into_iter().map(|r| r.uri_template).collect();
                    // A URI of a known pattern names something that is not
                    // there (an item id): the service's message says so.
                    if patterns.iter().any(|p| matches_template(p, uri)) {
                        String::new()
                    } else {
                        suggest(uri, &patterns)
                    }
                }
                _ => String::new(),
            }
        }
        McpError::Tool {
            code: cortex_proto::ErrorCode::Unauthorized,
            ..
        } => "; send a token with --token (or CORTEX_TOKEN), or run the command where `cortex up` \
              keeps its data (./.cortex, or set CORTEX_DATA_DIR) so it makes one from the secret there"
            .to_string(),
        McpError::Tool {
            code: cortex_proto::ErrorCode::Forbidden,
            ..
        } => "; a user's token acts for that user only; a token with the role `admin` acts for \
              every user (`cortex token --role admin`)"
            .to_string(),
        McpError::Connection {
            service, endpoint, ..
        } if target.is_default(service) && error.is_refused() => format!(
            "; is `cortex up` running? ({service} defaults to {endpoint}; set {}_SERVICE_URL or --service {service}=URL for another place)",
            service.to_ascii_uppercase()
        ),
        _ => String::new(),
    };
    let mut failure = Failure::from(error);
    failure.message.push_str(&hint);
    failure
}

/// "; did you mean `x`? known: a, b, c", or "; known: a, b" when nothing
/// is close, or nothing when no name is known.
pub(crate) fn suggest(wrong: &str, known: &[String]) -> String {
    if known.is_empty() {
        return String::new();
    }
    let closest = known
        .iter()
        .map(|name| (strsim::jaro_winkler(wrong, name), name))
        .filter(|(score, _)| *score >= SIMILAR)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name);
    let mut listed: Vec<&str> = known.iter().take(SHOW).map(String::as_str).collect();
    if known.len() > SHOW {
        listed.push("…");
    }
    let listed = listed.join(", ");
    match closest {
        Some(name) => format!("; did you mean `{name}`? known: {listed}"),
        None => format!("; known: {listed}"),
    }
}

/// Whether `uri` fits `template`: each `{…}` stands for one or more
/// characters other than `/`, the rest is literal. A leading `/` on
/// either side does not count.
fn matches_template(template: &str, uri: &str) -> bool {
    fn fits(template: &str, uri: &str) -> bool {
        match template.find('{') {
            None => template == uri,
            Some(open) => {
                let Some(close) = template[open..].find('}').map(|i| open + i) else {
                    return template == uri;
                };
                let Some(rest_uri) = uri.strip_prefix(&template[..open]) else {
                    return false;
                };
                let after = &template[close + 1..];
                let limit = rest_uri.find('/').unwrap_or(rest_uri.len());
                (1..=limit).any(|taken| fits(after, &rest_uri[taken..]))
            }
        }
    }
    fits(
        template.trim_start_matches('/'),
        uri.trim_start_matches('/'),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let known = vec!["memory".to_string(), "cognition".to_string()];
        assert_eq!(
            suggest("memroy", &known),
            "; did you mean `memory`? known: memory, cognition"
        );
        assert_eq!(suggest("search", &known), "; known: memory, cognition");
        assert_eq!(suggest("x", &[]), "");
        let many: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        assert!(suggest("zzz", &many).ends_with("t11, …"));
    }

    #[test]
    fn templates() {
        assert!(matches_template("item/{item_id}", "item/999"));
        assert!(matches_template(
            "history/{user_id}/limit/{n}",
            "/history/u1/limit/5"
        ));
        assert!(!matches_template("history/{user_id}", "history/u1/limit/5"));
        assert!(!matches_template("item/{item_id}", "items/1"));
        assert!(!matches_template("item/{item_id}", "item/"));
        assert!(matches_template(
            "demo://resource/{id}",
            "demo://resource/7"
        ));
        assert!(matches_template("file:///readme", "file:///readme"));
    }
}
