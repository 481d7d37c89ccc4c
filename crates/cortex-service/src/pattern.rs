//! Resource URI patterns: literal segments and `{name}` parameters.

use std::collections::HashMap;

use crate::error::ServiceError;

/// A parsed pattern such as `history/{user_id}/limit/{n}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// Why a pattern is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad resource pattern `{pattern}`: {reason}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Pattern {
    /// Parses a pattern; segments are separated by `/`.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            pattern: text.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(err("empty pattern"));
        }
        let mut seen = Vec::new();
        let segments = text
            .split('/')
            .map(|s| {
                if s.is_empty() {
                    Err(err("empty segment"))
                } else if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    if name.is_empty() || seen.contains(&name) {
                        return Err(err("empty or repeated parameter name"));
                    }
                    seen.push(name);
                    Ok(Segment::Param(name.to_string()))
                } else if s.contains(['{', '}']) {
                    Err(err("a parameter must be a whole segment"))
                } else {
                    Ok(Segment::Literal(s.to_string()))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How many literal segments it has: among patterns that match the same
    /// URI, the most literal one wins (`item/{id}` over `{kind}/{id}`).
    pub fn specificity(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }

    /// Matches already-decoded URI segments, returning the parameters.
    pub fn matches(&self, segments: &[String]) -> Option<Params> {
        if segments.len() != self.segments.len() {
            return None;
        }
        let mut params = HashMap::new();
        for (pattern, actual) in self.segments.iter().zip(segments) {
            match pattern {
                Segment::Literal(lit) if lit == actual => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => {
                    params.insert(name.clone(), actual.clone());
                }
            }
        }
        Some(Params(params))
    }
}

/// Splits a raw (percent-encoded) resource URI into decoded segments, so an
/// encoded `/` (`%2F`) inside a segment stays inside that segment.
pub fn split_uri(raw: &str) -> Result<Vec<String>, ServiceError> {
    raw.trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| ServiceError::invalid_request("resource URI is not valid UTF-8"))
        })
        .collect()
}

/// The longest id (in UTF-8 bytes) that [`check_segment_id`] accepts.
/// Percent-encoded, such an id takes at most three times as many bytes, so
/// a URI holding two of them stays far below the request-target limit
/// (8 KiB by default): what is stored under an id can always be read back.
pub const MAX_SEGMENT_ID_BYTES: usize = 256;

/// Checks an id that must fit in one URI segment (a user id in
/// `history/{user_id}`): non-empty, without `/`, and at most
/// [`MAX_SEGMENT_ID_BYTES`] bytes. The error names `field`.
pub fn check_segment_id(field: &str, value: &str) -> Result<(), ServiceError> {
    if value.is_empty() || value.contains('/') {
        return Err(ServiceError::invalid_argument(
            field,
            "must be non-empty and contain no `/`",
        ));
    }
    check_id_length(field, value)
}

/// Checks that an id named in resource URIs is at most
/// [`MAX_SEGMENT_ID_BYTES`] bytes; the error names `field` and the limit.
pub fn check_id_length(field: &str, value: &str) -> Result<(), ServiceError> {
    if value.len() > MAX_SEGMENT_ID_BYTES {
        return Err(ServiceError::invalid_argument(
            field,
            format!(
                "must be at most {MAX_SEGMENT_ID_BYTES} bytes (UTF-8), so that it fits in a \
                 resource URI; got {} bytes",
                value.len()
            ),
        )
        .with_details(serde_json::json!({
            "field": field,
            "limit_bytes": MAX_SEGMENT_ID_BYTES,
        })));
    }
    Ok(())
}

/// The parameters a URI bound in a pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// A parameter's value; an error naming it when the pattern has none.
    pub fn get(&self, name: &str) -> Result<&str, ServiceError> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| ServiceError::internal(format!("pattern has no parameter `{name}`")))
    }

    /// A parameter parsed as a number; 400 naming it when it is not one.
    pub fn get_parsed<T: std::str::FromStr>(&self, name: &str) -> Result<T, ServiceError> {
        let raw = self.get(name)?;
        raw.parse().map_err(|_| {
            ServiceError::invalid_argument(name, format!("`{raw}` is not a valid number"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(s: &str) -> Vec<String> {
        split_uri(s).unwrap_or_default()
    }

    #[test]
    fn binds_parameters_and_rejects_mismatches() {
        let p = Pattern::parse("history/{user_id}/limit/{n}").expect("valid");
        let params = p.matches(&segs("history/u1/limit/5")).expect("matches");
        assert_eq!(params.get("user_id").ok(), Some("u1"));
        assert_eq!(params.get_parsed::<usize>("n").ok(), Some(5));
        assert!(p.matches(&segs("history/u1/limit")).is_none());
        assert!(p.matches(&segs("history/u1/conversation/5")).is_none());
    }

    #[test]
    fn encoded_slash_stays_in_its_segment() {
        let p = Pattern::parse("item/{id}").expect("valid");
        let params = p.matches(&segs("item/a%2Fb")).expect("matches");
        assert_eq!(params.get("id").ok(), Some("a/b"));
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        for bad in ["", "a//b", "a/{}", "a/x{y}", "{a}/{a}"] {
            assert!(Pattern::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
