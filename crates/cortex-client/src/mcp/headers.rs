//! The HTTP headers of the 2026-07-28 transport that mirror a request's
//! body, so that intermediaries can route without reading it:
//! `Mcp-Method` (every POST), `Mcp-Name` (`params.name` of `tools/call`
//! and `prompts/get`, `params.uri` of `resources/read`, `params.taskId` of
//! `tasks/get`, `tasks/update` and `tasks/cancel`), and `Mcp-Param-{Name}`
//! for each argument a tool's `inputSchema` annotates with `x-mcp-header`.
//!
//! A tool whose annotations break the rules (empty or not an HTTP token,
//! on a type other than string, integer or boolean, duplicated regardless
//! of case, or not reachable from the root through `properties` alone) is
//! left out of `tools/list`, as the transport requires: a single bad
//! definition must not hide the others.

use std::collections::HashSet;

use serde_json::Value;

use super::wire::header_safe;

/// How deep a schema is searched for annotations; deeper parts are not
/// looked at (serde_json already refuses documents nested past 128).
const MAX_DEPTH: usize = 64;

/// One `x-mcp-header` annotation: the argument at `path` (a chain of
/// property names) goes in `Mcp-Param-{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParamHeader {
    path: Vec<String>,
    name: String,
}

/// The `Mcp-Name` source of a request, for the methods that have one.
pub(crate) fn name_of<'a>(method: &str, params: &'a Value) -> Option<&'a str> {
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        "tasks/get" | "tasks/update" | "tasks/cancel" => "taskId",
        _ => return None,
    };
    params.get(key).and_then(Value::as_str)
}

/// The annotations of a tool's `inputSchema`, or why the tool is invalid.
pub(crate) fn annotations(schema: &Value) -> Result<Vec<ParamHeader>, String> {
    let mut found = Vec::new();
    walk(schema, &mut Vec::new(), true, 0, &mut found)?;
    let mut seen = HashSet::new();
    for header in &found {
        if !seen.insert(header.name.to_ascii_lowercase()) {
            return Err(format!(
                "x-mcp-header {:?} is used more than once",
                header.name
            ));
        }
    }
    Ok(found)
}

/// Visits one schema node at `path`; `reachable`: only `properties` keys
/// lead here from the root.
fn walk(
    node: &Value,
    path: &mut Vec<String>,
    reachable: bool,
    depth: usize,
    found: &mut Vec<ParamHeader>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    match node {
        Value::Object(map) => {
            if let Some(name) = map.get("x-mcp-header") {
                if !reachable || path.is_empty() {
                    return Err(
                        "x-mcp-header outside a property reachable through `properties` alone"
                            .into(),
                    );
                }
                found.push(check(name, map.get("type"), path)?);
            }
            for (key, value) in map {
                match key.as_str() {
                    // Instance data, not schemas.
                    "const" | "enum" | "default" | "examples" => {}
                    "properties" => {
                        let Some(properties) = value.as_object() else {
                            continue;
                        };
                        for (name, property) in properties {
                            path.push(name.clone());
                            let outcome = walk(property, path, reachable, depth + 1, found);
                            path.pop();
                            outcome?;
                        }
                    }
                    _ => walk(value, path, false, depth + 1, found)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| walk(item, path, false, depth + 1, found)),
        _ => Ok(()),
    }
}

/// One annotation's value and the annotated property's type.
fn check(name: &Value, kind: Option<&Value>, path: &[String]) -> Result<ParamHeader, String> {
    let at = path.join(".");
    let Some(name) = name.as_str() else {
        return Err(format!("x-mcp-header of {at:?} is not a string"));
    };
    if name.is_empty() {
        return Err(format!("x-mcp-header of {at:?} is empty"));
    }
    if !name.bytes().all(is_tchar) {
        return Err(format!(
            "x-mcp-header {name:?} of {at:?} is not an HTTP field name"
        ));
    }
    match kind.and_then(Value::as_str) {
        Some("string" | "integer" | "boolean") => Ok(ParamHeader {
            path: path.to_vec(),
            name: name.to_string(),
        }),
        other => Err(format!(
            "x-mcp-header {name:?} of {at:?} is on a property of type {}, not string, integer or boolean",
            other.unwrap_or("(none)")
        )),
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The `Mcp-Param-*` headers of a call with `arguments`: one per annotated
/// argument present and not null, its value encoded (strings as
/// [`header_safe`], integers in decimal, booleans as `true`/`false`).
pub(crate) fn mirror(annotations: &[ParamHeader], arguments: &Value) -> Vec<(String, String)> {
    annotations
        .iter()
        .filter_map(|header| {
            let value = header
                .path
                .iter()
                .try_fold(arguments, |value, key| value.get(key))?;
            let text = match value {
                Value::String(text) => header_safe(text),
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                _ => return None,
            };
            Some((
                format!("mcp-param-{}", header.name.to_ascii_lowercase()),
                text,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn annotated_arguments_are_mirrored_and_encoded() {
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "priority": {"type": "integer", "x-mcp-header": "Priority"},
            "verbose": {"type": "boolean", "x-mcp-header": "Verbose"},
            "nested": {"type": "object", "properties": {"zone": {"type": "string", "x-mcp-header": "Zone"}}},
            "query": {"type": "string"},
        }});
        let found = annotations(&schema).unwrap_or_else(|e| panic!("{e}"));
        let headers = mirror(
            &found,
            &json!({"region": "Hello, 世界", "priority": 42, "verbose": null, "nested": {"zone": "a"}, "query": "q"}),
        );
        let mut headers: Vec<_> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.sort();
        assert_eq!(
            headers,
            vec![
                ("mcp-param-priority", "42"),
                ("mcp-param-region", "=?base64?SGVsbG8sIOS4lueVjA==?="),
                ("mcp-param-zone", "a"),
            ]
        );
    }

    #[test]
    fn invalid_annotations_are_refused() {
        let bad = [
            json!({"properties": {"v": {"type": "string", "x-mcp-header": ""}}}),
            json!({"properties": {"v": {"type": "object", "x-mcp-header": "V"}}}),
            json!({"properties": {"v": {"type": "number", "x-mcp-header": "V"}}}),
            json!({"properties": {"v": {"type": "string", "x-mcp-header": "My V"}}}),
            json!({"properties": {"v": {"type": "string", "x-mcp-header": "Région"}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "X"}, "b": {"type": "string", "x-mcp-header": "x"}}}),
            json!({"properties": {"a": {"type": "array", "items": {"type": "string", "x-mcp-header": "X"}}}}),
            json!({"oneOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "X"}}}]}),
        ];
        for schema in bad {
            assert!(annotations(&schema).is_err(), "{schema}");
        }
        assert_eq!(annotations(&json!({"type": "object"})), Ok(vec![]));
    }
}
