//! Tool arguments from the command line, as people type them (after
//! httpie): `key=value` pairs typed by the tool's input schema, `key:=JSON`
//! for raw JSON, `a.b=value` for a nested field; or one JSON object,
//! `@FILE` or `-` (stdin), which pairs after it may override. Without any
//! argument, piped stdin is read. Files and stdin are read up to
//! [`MAX_INPUT_BYTES`], so a wrong file is an error, not gigabytes of
//! memory.

use std::io::{IsTerminal, Read};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::exit::Failure;

/// The most a file or stdin may hold (services take 1 MiB by default;
/// MCP servers may take more).
pub(crate) const MAX_INPUT_BYTES: u64 = 8 * 1024 * 1024;

/// After this long waiting on stdin, say that we are waiting on it.
const STDIN_NOTE_AFTER: Duration = Duration::from_secs(2);

/// Where the base object comes from.
#[derive(Debug, PartialEq)]
enum Base {
    /// `{}` (or stdin, when it is piped and nothing else was given).
    Empty,
    /// A JSON literal on the command line.
    Literal(String),
    /// `@FILE`.
    File(String),
    /// `-`.
    Stdin,
}

/// A `key=value` or `key:=JSON` pair.
#[derive(Debug, PartialEq)]
struct Pair {
    key: String,
    value: PairValue,
}

#[derive(Debug, PartialEq)]
enum PairValue {
    /// `key=value`: typed by the schema.
    Text(String),
    /// `key:=JSON`.
    Json(Value),
}

/// The argument words of one call, checked but not yet typed.
#[derive(Debug, PartialEq)]
pub(crate) struct ArgWords {
    base: Base,
    pairs: Vec<Pair>,
}

impl ArgWords {
    /// Sorts the words into a base and pairs; a word that is neither is a
    /// usage error.
    pub(crate) fn parse(words: &[String]) -> Result<Self, Failure> {
        let mut words = words.iter().peekable();
        let base = match words.peek().map(|w| w.as_str()) {
            Some("-") => Base::Stdin,
            Some(w) if w.starts_with('@') => Base::File(w[1..].to_string()),
            Some(w) if w.trim_start().starts_with(['{', '[']) => Base::Literal(w.to_string()),
            _ => Base::Empty,
        };
        if base != Base::Empty {
            words.next();
        }
        let pairs = words.map(|word| pair(word)).collect::<Result<_, _>>()?;
        Ok(Self { base, pairs })
    }

    /// Whether typing the pairs needs the tool's input schema.
    pub(crate) fn needs_schema(&self) -> bool {
        self.pairs
            .iter()
            .any(|p| matches!(p.value, PairValue::Text(_)))
    }

    /// The arguments object, with each `key=value` typed by `schema` (the
    /// tool's input schema, when known; without it values stay strings).
    pub(crate) async fn build(self, schema: Option<&Value>) -> Result<Value, Failure> {
        let base = match self.base {
            Base::Empty if self.pairs.is_empty() && !std::io::stdin().is_terminal() => {
                let text = read_stdin().await?;
                if text.trim().is_empty() {
                    Value::Object(Map::new())
                } else {
                    parse_json(&text, "stdin")?
                }
            }
            Base::Empty => Value::Object(Map::new()),
            Base::Literal(text) => parse_json(&text, "the arguments")?,
            Base::File(path) => {
                let file = std::fs::File::open(&path).map_err(|e| {
                    Failure::usage(format!("cannot read arguments file `{path}`: {e}"))
                })?;
                let text = read_capped(file, &format!("file `{path}`"))?;
                parse_json(&text, &format!("file `{path}`"))?
            }
            Base::Stdin => {
                let text = read_stdin().await?;
                parse_json(&text, "stdin")?
            }
        };
        let Value::Object(mut object) = base else {
            return Err(Failure::usage(format!(
                "arguments must be a JSON object, got {}",
                cortex_proto::envelope::json_type(&base)
            )));
        };
        for Pair { key, value } in self.pairs {
            let path = key_path(&key, schema);
            let value = match value {
                PairValue::Json(value) => value,
                PairValue::Text(text) => {
                    let property = property_schema(schema, &path);
                    typed(&key, text, property).map_err(Failure::usage)?
                }
            };
            insert(&mut object, &path, value)
                .map_err(|why| Failure::usage(format!("`{key}`: {why}")))?;
        }
        Ok(Value::Object(object))
    }
}

/// One `key=value` or `key:=JSON` word.
fn pair(word: &str) -> Result<Pair, Failure> {
    let not_a_pair = || {
        Failure::usage(format!(
            "`{word}` is not key=value or key:=JSON (a JSON object, @FILE or - may only come first)"
        ))
    };
    let (key, text) = word.split_once('=').ok_or_else(not_a_pair)?;
    let (key, value) = match key.strip_suffix(':') {
        Some(key) => {
            let value = serde_json::from_str(text).map_err(|e| {
                Failure::usage(format!("`{word}`: the value after := is not JSON: {e}"))
            })?;
            (key, PairValue::Json(value))
        }
        None => (key, PairValue::Text(text.to_string())),
    };
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(not_a_pair());
    }
    Ok(Pair {
        key: key.to_string(),
        value,
    })
}

/// The path of `key` in the arguments: split at dots, unless the schema
/// has a property with the dotted name itself.
fn key_path(key: &str, schema: Option<&Value>) -> Vec<String> {
    let literal = schema
        .and_then(|s| s.get("properties"))
        .and_then(|p| p.get(key))
        .is_some();
    if literal {
        vec![key.to_string()]
    } else {
        key.split('.').map(str::to_string).collect()
    }
}

/// The schema of the property at `path`, when the schema describes it.
fn property_schema<'s>(schema: Option<&'s Value>, path: &[String]) -> Option<&'s Value> {
    path.iter()
        .try_fold(schema?, |schema, name| schema.get("properties")?.get(name))
}

/// The JSON types a schema allows (`type`, or those of `anyOf`/`oneOf`).
fn types_of(schema: &Value) -> Vec<&str> {
    let mut types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(options)) = schema.get(key) {
            types.extend(options.iter().flat_map(types_of));
        }
    }
    types
}

/// `text` as the type the property's schema allows: a string when it may
/// be one (or nothing is known), else the first type it parses as.
fn typed(key: &str, text: String, schema: Option<&Value>) -> Result<Value, String> {
    let types = schema.map(types_of).unwrap_or_default();
    if types.is_empty() || types.contains(&"string") {
        return Ok(Value::String(text));
    }
    for kind in &types {
        let value = match *kind {
            "integer" => text
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| text.trim().parse::<u64>().map(Value::from))
                .ok(),
            "number" => match text.trim().parse::<i64>() {
                Ok(n) => Some(Value::from(n)),
                Err(_) => text
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number),
            },
            "boolean" => match text.trim() {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
            "null" => (text.trim() == "null").then_some(Value::Null),
            "object" => serde_json::from_str(&text).ok().filter(Value::is_object),
            "array" => serde_json::from_str(&text).ok().filter(Value::is_array),
            _ => None,
        };
        if let Some(value) = value {
            return Ok(value);
        }
    }
    Err(format!(
        "`{key}` takes {}, not `{text}` (use {key}:=JSON to send raw JSON)",
        types
            .iter()
            .map(|t| match *t {
                "integer" => "an integer",
                "number" => "a number",
                "boolean" => "true or false",
                "object" => "a JSON object",
                "array" => "a JSON array",
                other => other,
            })
            .collect::<Vec<_>>()
            .join(" or ")
    ))
}

/// Puts `value` at `path`, making the objects on the way.
fn insert(object: &mut Map<String, Value>, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut here = object;
    for name in parents {
        let next = here
            .entry(name.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        here = next
            .as_object_mut()
            .ok_or_else(|| format!("`{name}` is already set to a value that is not an object"))?;
    }
    here.insert(last.clone(), value);
    Ok(())
}

fn parse_json(text: &str, source: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| Failure::usage(format!("invalid JSON in {source}: {e}")))
}

/// Reads `reader` to its end, up to [`MAX_INPUT_BYTES`].
fn read_capped(reader: impl Read, source: &str) -> Result<String, Failure> {
    let mut text = String::new();
    reader
        .take(MAX_INPUT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| Failure::usage(format!("cannot read arguments from {source}: {e}")))?;
    if text.len() as u64 > MAX_INPUT_BYTES {
        return Err(Failure::usage(format!(
            "the arguments in {source} are larger than {} MiB; pass a smaller object",
            MAX_INPUT_BYTES / (1024 * 1024)
        )));
    }
    Ok(text)
}

/// Reads stdin on a blocking thread; says once on stderr that it is
/// waiting when nothing has come for a while, so a forgotten pipe does not
/// look like a hang.
async fn read_stdin() -> Result<String, Failure> {
    let mut read = tokio::task::spawn_blocking(|| read_capped(std::io::stdin().lock(), "stdin"));
    let outcome = match tokio::time::timeout(STDIN_NOTE_AFTER, &mut read).await {
        Ok(outcome) => outcome,
        Err(_) => {
            eprintln!(
                "cortex: reading the arguments from stdin (it is not a terminal); end it with Ctrl-D, or give the arguments on the command line"
            );
            read.await
        }
    };
    outcome.map_err(|e| Failure::other(format!("reading stdin failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::exit::Code;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| (*w).to_string()).collect()
    }

    async fn build(list: &[&str], schema: Option<Value>) -> Result<Value, Failure> {
        ArgWords::parse(&words(list))?.build(schema.as_ref()).await
    }

    #[tokio::test]
    async fn pairs_are_typed_by_the_schema() {
        let schema = json!({"type": "object", "properties": {
            "item_id": {"type": "integer"},
            "limit": {"type": ["integer", "null"]},
            "score": {"type": "number"},
            "exact": {"type": "boolean"},
            "user_id": {"type": "string"},
            "tags": {"type": "array"},
            "a.b": {"type": "integer"},
            "input_data": {"type": "object", "properties": {"content": {"type": "string"}}},
        }});
        let value = build(
            &[
                "item_id=7",
                "limit=null",
                "score=0.5",
                "exact=true",
                "user_id=42",
                "tags=[1,2]",
                "a.b=3",
                "input_data.content=hi there",
                "input_data.extra:={\"x\":1}",
                "other=1",
            ],
            Some(schema.clone()),
        )
        .await;
        assert_eq!(
            value,
            Ok(json!({
                "item_id": 7, "limit": null, "score": 0.5, "exact": true,
                "user_id": "42", "tags": [1, 2], "a.b": 3,
                "input_data": {"content": "hi there", "extra": {"x": 1}},
                "other": "1",
            }))
        );
        let wrong = build(&["item_id=seven"], Some(schema)).await;
        let message = wrong.map_err(|f| (f.code, f.message));
        assert_eq!(
            message,
            Err((
                Code::Usage,
                "`item_id` takes an integer, not `seven` (use item_id:=JSON to send raw JSON)"
                    .into()
            ))
        );
    }

    #[tokio::test]
    async fn a_base_object_and_overrides() {
        assert_eq!(
            build(&[r#"{"a":1,"b":{"c":2}}"#, "b.d:=true"], None).await,
            Ok(json!({"a": 1, "b": {"c": 2, "d": true}}))
        );
        let code = |r: Result<Value, Failure>| r.map_err(|f| f.code);
        assert_eq!(code(build(&["{nope"], None).await), Err(Code::Usage));
        assert_eq!(code(build(&["[1]"], None).await), Err(Code::Usage));
        assert_eq!(
            code(build(&["@/nonexistent/args.json"], None).await),
            Err(Code::Usage)
        );
        assert_eq!(code(build(&["a=1", "{}"], None).await), Err(Code::Usage));
        assert_eq!(code(build(&["noequals"], None).await), Err(Code::Usage));
        assert_eq!(code(build(&["=1"], None).await), Err(Code::Usage));
        assert_eq!(code(build(&["a..b=1"], None).await), Err(Code::Usage));
        assert_eq!(code(build(&["a:={x"], None).await), Err(Code::Usage));
        assert_eq!(code(build(&["a=1", "a.b=2"], None).await), Err(Code::Usage));
    }

    #[tokio::test]
    async fn a_file_over_the_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("big.json");
        let size = usize::try_from(MAX_INPUT_BYTES).unwrap_or(usize::MAX) + 1;
        std::fs::write(&path, " ".repeat(size)).unwrap_or_else(|e| panic!("{e}"));
        let arg = format!("@{}", path.display());
        let refused = build(&[&arg], None).await.map_err(|f| (f.code, f.message));
        assert!(
            matches!(&refused, Err((Code::Usage, m)) if m.contains("larger than 8 MiB")),
            "{refused:?}"
        );
    }
}
