//! JSON as upstream's fastjson reads and writes it.
//!
//! fastjson writes maps with integer keys without quotes (`{0:"host:port"}`)
//! and maps with object keys as objects. That is not JSON, so encoding such
//! maps is done by hand here, and decoding first quotes bare keys.

use serde::de::DeserializeOwned;

/// A body that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("request body does not decode as {what}: {reason}")]
pub struct BodyError {
    pub what: &'static str,
    pub reason: String,
}

/// Decodes a JSON body, accepting fastjson's bare numeric keys.
pub fn decode<T: DeserializeOwned>(body: &[u8], what: &'static str) -> Result<T, BodyError> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(first) => {
            let text = std::str::from_utf8(body).map_err(|_| BodyError { what, reason: "not UTF-8".into() })?;
            let fixed = quote_bare_keys(text);
            serde_json::from_str(&fixed).map_err(|_| BodyError { what, reason: first.to_string() })
        }
    }
}

/// Puts quotes around object keys that are bare words or numbers.
pub fn quote_bare_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    let mut escaped = false;
    // True right after `{` or `,` inside an object, where a key may start.
    let mut key_position = false;
    let mut stack: Vec<char> = Vec::new();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                key_position = false;
                out.push(c);
            }
            '{' | '[' => {
                stack.push(c);
                key_position = c == '{';
                out.push(c);
            }
            '}' | ']' => {
                stack.pop();
                key_position = false;
                out.push(c);
            }
            ',' => {
                key_position = stack.last() == Some(&'{');
                out.push(c);
            }
            c if c.is_whitespace() => out.push(c),
            c if key_position && (c.is_ascii_alphanumeric() || c == '-' || c == '_') => {
                let mut word = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '-' || n == '_' || n == '.' {
                        word.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push('"');
                out.push_str(&word);
                out.push('"');
                key_position = false;
            }
            c => {
                key_position = false;
                out.push(c);
            }
        }
    }
    out
}

/// A JSON string literal.
pub fn string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn bare_numeric_keys_are_quoted_and_strings_left_alone() {
        let text = r#"{"brokerAddrs":{0:"127.0.0.1:10911",1:"a,{0:b}"},"x":[{2:"y"}]}"#;
        let fixed = quote_bare_keys(text);
        assert_eq!(fixed, r#"{"brokerAddrs":{"0":"127.0.0.1:10911","1":"a,{0:b}"},"x":[{"2":"y"}]}"#);
        let v: serde_json::Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(v["brokerAddrs"]["1"], "a,{0:b}");
    }

    #[test]
    fn decode_accepts_both_forms() {
        let a: BTreeMap<i64, String> = decode(br#"{0:"m",1:"s"}"#, "map").unwrap();
        let b: BTreeMap<i64, String> = decode(br#"{"0":"m","1":"s"}"#, "map").unwrap();
        assert_eq!(a, b);
        assert!(decode::<BTreeMap<i64, String>>(b"{0:", "map").is_err());
    }
}
