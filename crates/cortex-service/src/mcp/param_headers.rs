//! The request arguments a 2026-07-28 client mirrors into headers
//! (`Mcp-Param-{name}`, for tools whose schema marks them with
//! `x-mcp-header`), and the header values' encoding (`=?base64?…?=`).

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

/// A header value: visible ASCII as is, or `=?base64?…?=` decoded.
pub(crate) fn decode_header_value(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    if !text
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return None;
    }
    match text
        .strip_prefix("=?base64?")
        .and_then(|t| t.strip_suffix("?="))
    {
        Some(encoded) => String::from_utf8(base64_decode(encoded)?).ok(),
        None => Some(text.to_string()),
    }
}

/// Standard base64 (RFC 4648 §4), padding optional.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    STANDARD_ANY_PADDING.decode(text).ok()
}

/// The arguments a tool's schema mirrors into `Mcp-Param-{name}` headers
/// (`x-mcp-header`), each with its property path.
#[derive(Debug, Default, Clone)]
pub(crate) struct HeaderParams(Vec<(String, Vec<String>)>);

impl HeaderParams {
    /// Collects `x-mcp-header` annotations reachable through `properties`.
    pub(crate) fn of_schema(schema: &Value) -> Self {
        fn walk(schema: &Value, path: &mut Vec<String>, out: &mut Vec<(String, Vec<String>)>) {
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (key, property) in properties {
                path.push(key.clone());
                if let Some(name) = property.get("x-mcp-header").and_then(Value::as_str) {
                    out.push((name.to_ascii_lowercase(), path.clone()));
                }
                walk(property, path, out);
                path.pop();
            }
        }
        let mut out = Vec::new();
        walk(schema, &mut Vec::new(), &mut out);
        Self(out)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every mirrored argument present in the call must be in its header.
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        arguments: &Map<String, Value>,
    ) -> Result<(), String> {
        for (name, path) in &self.0 {
            let mut value = None;
            let mut at = arguments;
            for (i, key) in path.iter().enumerate() {
                match at.get(key) {
                    Some(v) if i + 1 == path.len() => value = Some(v),
                    Some(Value::Object(next)) => at = next,
                    _ => break,
                }
            }
            let Some(value) = value.filter(|v| !v.is_null()) else {
                continue;
            };
            let header_name = format!("mcp-param-{name}");
            let header = headers
                .get(header_name.as_str())
                .ok_or_else(|| format!("the Mcp-Param-{name} header is required"))?;
            let text = decode_header_value(header.as_bytes())
                .ok_or_else(|| format!("the Mcp-Param-{name} header holds invalid characters"))?;
            let matches = match value {
                Value::String(s) => *s == text,
                Value::Bool(b) => text == if *b { "true" } else { "false" },
                Value::Number(n) => match (n.as_f64(), text.trim().parse::<f64>()) {
                    (Some(body), Ok(header)) => body == header,
                    _ => false,
                },
                _ => true,
            };
            if !matches {
                return Err(format!(
                    "Mcp-Param-{name} header `{text}` does not match the argument at `{}`",
                    path.join(".")
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_sentinel_base64() {
        assert_eq!(
            decode_header_value(b"=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
            Some("Hello, 世界")
        );
        assert_eq!(
            decode_header_value(b"=?base64?IHBhZGRlZCA=?=").as_deref(),
            Some(" padded ")
        );
        assert_eq!(
            decode_header_value(b"us-west1").as_deref(),
            Some("us-west1")
        );
        assert_eq!(decode_header_value(b"=?base64?!!?=").as_deref(), None);
        assert_eq!(base64_decode("YQ"), Some(b"a".to_vec()));
        assert_eq!(base64_decode("YWI="), Some(b"ab".to_vec()));
        assert_eq!(base64_decode("Y"), None);
    }

    #[test]
    fn finds_and_checks_mirrored_parameters() {
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "opts": {"type": "object", "properties": {"n": {"type": "integer", "x-mcp-header": "N"}}},
            "query": {"type": "string"}
        }});
        let params = HeaderParams::of_schema(&schema);
        assert_eq!(params.0.len(), 2);
        let args = json!({"region": "us-west1", "opts": {"n": 42}, "query": "q"});
        let args = args.as_object().cloned().unwrap_or_default();
        let mut headers = HeaderMap::new();
        assert!(params.check(&headers, &args).is_err(), "headers missing");
        headers.insert(
            "mcp-param-region",
            "us-west1".parse().unwrap_or_else(|_| unreachable!()),
        );
        headers.insert(
            "mcp-param-n",
            "42.0".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(params.check(&headers, &args), Ok(()));
        headers.insert(
            "mcp-param-n",
            "41".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert!(params.check(&headers, &args).is_err(), "mismatch");
        let without = Map::new();
        assert_eq!(
            params.check(&HeaderMap::new(), &without),
            Ok(()),
            "absent: not expected"
        );
    }
}
