//! Tool arguments from the command line: a JSON object, `@FILE`, or `-`
//! for stdin.

use std::io::Read;

use serde_json::{Map, Value};

use crate::exit::Failure;

/// The arguments `raw` stands for (`{}` when absent). Anything wrong with
/// them is a usage error.
pub(crate) fn arguments(raw: Option<&str>) -> Result<Value, Failure> {
    let Some(raw) = raw else {
        return Ok(Value::Object(Map::new()));
    };
    let (text, source) = if raw == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::usage(format!("cannot read arguments from stdin: {e}")))?;
        (text, "stdin".to_string())
    } else if let Some(path) = raw.strip_prefix('@') {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("cannot read arguments file `{path}`: {e}")))?;
        (text, format!("file `{path}`"))
    } else {
        (raw.to_string(), "the arguments".to_string())
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("invalid JSON in {source}: {e}")))?;
    if !value.is_object() {
        return Err(Failure::usage(format!(
            "arguments must be a JSON object, got {}",
            cortex_proto::envelope::json_type(&value)
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Code;

    #[test]
    fn literal_file_and_errors() {
        assert_eq!(arguments(None), Ok(serde_json::json!({})));
        assert_eq!(
            arguments(Some(r#"{"a":1}"#)),
            Ok(serde_json::json!({"a": 1}))
        );
        let code = |raw| arguments(Some(raw)).map_err(|f| f.code);
        assert_eq!(code("{nope"), Err(Code::Usage));
        assert_eq!(code("[1]"), Err(Code::Usage));
        assert_eq!(code("@/nonexistent/args.json"), Err(Code::Usage));
    }
}
