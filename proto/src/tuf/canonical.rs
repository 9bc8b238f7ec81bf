//! Canonical JSON as securesystemslib writes it (the OLPC dialect TUF signs over): object keys
//! sorted by their UTF-8 bytes, no whitespace, strings with only `\` and `"` escaped (every
//! other character written as itself), integers only.
//!
//! It is computed from a generic [`Value`], never from our own types, so that fields we do not
//! know (`custom`, a newer spec's additions) stay under the signature.

use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CanonicalError {
    /// Canonical JSON has no floating-point numbers.
    #[error("canonical JSON allows integers only; {path} is {number}")]
    NotAnInteger {
        /// Where, as a JSON path (`$.signed.meta...`).
        path: String,
        /// The number as written.
        number: String,
    },
}

/// The canonical bytes of `value`.
pub fn to_canonical(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write_value(value, &mut out, &mut String::from("$"))?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>, path: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => {
            if let Some(n) = number.as_u64() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else if let Some(n) = number.as_i64() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else {
                return Err(CanonicalError::NotAnInteger {
                    path: path.clone(),
                    number: number.to_string(),
                });
            }
        }
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                write_value(item, out, path)?;
                path.truncate(len);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sorted here, not by the map: serde_json keeps insertion order when another crate
            // in the build turns on its `preserve_order` feature.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                let len = path.len();
                path.push('.');
                path.push_str(key);
                write_value(item, out, path)?;
                path.truncate(len);
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for byte in text.bytes() {
        if byte == b'"' || byte == b'\\' {
            out.push(b'\\');
        }
        out.push(byte);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_by_bytes_and_escapes_only_quote_and_backslash() {
        let value = json!({"b": 1, "a": [true, null, -3], "Z": "tab\there \"q\" \\ é\n"});
        let bytes = to_canonical(&value).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "{\"Z\":\"tab\there \\\"q\\\" \\\\ é\n\",\"a\":[true,null,-3],\"b\":1}"
        );
    }

    #[test]
    fn refuses_floats_naming_the_field() {
        let value = json!({"signed": {"meta": [1, 2.5]}});
        let error = to_canonical(&value).unwrap_err();
        assert_eq!(
            error,
            CanonicalError::NotAnInteger {
                path: "$.signed.meta[1]".into(),
                number: "2.5".into()
            }
        );
    }
}
