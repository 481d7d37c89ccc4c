//! Writing to stdout: JSON (pretty for people, compact with `--json`),
//! aligned tables, durations. A closed stdout (`cortex stream … | head`)
//! ends the command quietly instead of panicking.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::exit::Failure;

/// Writes one line to stdout.
pub(crate) fn line(text: impl AsRef<str>) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.as_ref())
        .and_then(|()| out.flush())
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                Failure::stdout_closed()
            } else {
                Failure::other(format!("cannot write to stdout: {e}"))
            }
        })
}

/// Writes `value`: compact (one line) for scripts, pretty for people.
pub(crate) fn json(value: &Value, compact: bool) -> Result<(), Failure> {
    let text = if compact {
        value.to_string()
    } else {
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    };
    line(text)
}

/// Rows as columns aligned on their widest cell; the last column is not
/// padded.
pub(crate) fn table(rows: &[Vec<String>]) -> Result<(), Failure> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in rows {
        let mut text = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        line(text.trim_end())?;
    }
    Ok(())
}

/// A duration for people: `850 µs`, `12.3 ms`, `1.25 s`.
pub(crate) fn duration(d: Duration) -> String {
    cortex_resilience::human::HumanDuration(d).to_string()
}

/// Milliseconds as a JSON number with microsecond precision.
pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1000.0
}

/// One parameter of a tool, read from its input schema.
pub(crate) struct Parameter {
    pub(crate) name: String,
    /// `string`, `integer`, `string|null`, `array<string>`, … or `any`.
    pub(crate) kind: String,
    pub(crate) required: bool,
    /// Its first sentence.
    pub(crate) description: String,
}

/// The top-level parameters of an input schema: required ones first, each
/// group by name.
pub(crate) fn parameters(schema: &Value) -> Vec<Parameter> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    let mut list: Vec<Parameter> = properties
        .iter()
        .map(|(name, property)| Parameter {
            name: name.clone(),
            kind: kind_of(property),
            required: required.contains(&name.as_str()),
            description: first_sentence(
                property
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            )
            .to_string(),
        })
        .collect();
    list.sort_by_key(|p| !p.required);
    list
}

/// A property's type in a few characters.
fn kind_of(schema: &Value) -> String {
    let one = |t: &Value| -> String {
        match t.as_str() {
            Some("array") => match schema.get("items").map(kind_of) {
                Some(items) if items != "any" => format!("array<{items}>"),
                _ => "array".into(),
            },
            Some(name) => name.to_string(),
            None => "any".into(),
        }
    };
    match schema.get("type") {
        Some(Value::Array(types)) => types.iter().map(one).collect::<Vec<_>>().join("|"),
        Some(t) => one(t),
        None => match schema.get("anyOf").or_else(|| schema.get("oneOf")) {
            Some(Value::Array(options)) => {
                options.iter().map(kind_of).collect::<Vec<_>>().join("|")
            }
            _ if schema.get("enum").is_some() => "enum".into(),
            _ => "any".into(),
        },
    }
}

/// The first sentence of a description, for a table cell.
pub(crate) fn first_sentence(text: &str) -> &str {
    let line = text.lines().next().unwrap_or_default().trim();
    match line.find(". ") {
        Some(end) => &line[..=end],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_of_a_schema() {
        let schema = serde_json::json!({"type": "object", "required": ["b"], "properties": {
            "a": {"type": ["integer", "null"], "description": "First. More."},
            "b": {"type": "array", "items": {"type": "string"}},
            "c": {"anyOf": [{"type": "string"}, {"type": "number"}]},
            "d": {},
        }});
        let listed: Vec<(String, String, bool, String)> = parameters(&schema)
            .into_iter()
            .map(|p| (p.name, p.kind, p.required, p.description))
            .collect();
        let row = |n: &str, k: &str, r: bool, d: &str| (n.into(), k.into(), r, d.into());
        assert_eq!(
            listed,
            vec![
                row("b", "array<string>", true, ""),
                row("a", "integer|null", false, "First."),
                row("c", "string|number", false, ""),
                row("d", "any", false, ""),
            ]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(first_sentence("One. Two."), "One.");
        assert_eq!(millis(Duration::from_micros(1_234_567)), 1234.567);
    }
}
