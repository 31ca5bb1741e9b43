//! JSON parsing that refuses an object with a repeated key.
//!
//! `serde_json` keeps the last of two equal keys (`{"code":"000000","code":"123456"}` reads as
//! `123456`), so what a proxy, a log or a signature checker saw need not be what we act on.
//! [`parse`] builds the same [`Value`] in one pass, but stops at the first repeated key at any
//! depth and names it by its JSON pointer. The path is kept as a chain of borrowed segments on
//! the stack, so a valid body costs no more than `serde_json::from_slice`.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a body is not acceptable JSON.
#[derive(Debug)]
pub enum Error {
    /// The key at this JSON pointer appears twice in its object.
    DuplicateKey(String),
    /// Not JSON (syntax, trailing characters, nesting deeper than 128).
    Syntax(serde_json::Error),
}

/// Parses `bytes` as one JSON value in which no object repeats a key.
pub fn parse(bytes: &[u8]) -> Result<Value, Error> {
    let mut duplicate = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = ValueSeed {
        path: Path::Root,
        duplicate: &mut duplicate,
    };
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match (parsed, duplicate) {
        (_, Some(pointer)) => Err(Error::DuplicateKey(pointer)),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(Error::Syntax(e)),
    }
}

/// Where a value is: the root, or a key or index under a parent.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    /// The RFC 6901 pointer (`""` for the root).
    fn pointer(&self) -> String {
        match self {
            Path::Root => String::new(),
            Path::Key(parent, key) => format!(
                "{}/{}",
                parent.pointer(),
                key.replace('~', "~0").replace('/', "~1")
            ),
            Path::Index(parent, i) => format!("{}/{i}", parent.pointer()),
        }
    }
}

struct ValueSeed<'p, 'd> {
    path: Path<'p>,
    /// Set to the repeated key's pointer; the error then only unwinds the parse.
    duplicate: &'d mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(ValueSeed {
            path: Path::Index(&self.path, out.len()),
            duplicate: &mut *self.duplicate,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = Path::Key(&self.path, &key);
            if out.contains_key(&key) {
                *self.duplicate = Some(path.pointer());
                return Err(de::Error::custom("repeated object key"));
            }
            let v = map.next_value_seed(ValueSeed {
                path,
                duplicate: &mut *self.duplicate,
            })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn duplicate(body: &str) -> Option<String> {
        match parse(body.as_bytes()) {
            Err(Error::DuplicateKey(p)) => Some(p),
            Err(Error::Syntax(e)) => panic!("{body}: {e}"),
            Ok(_) => None,
        }
    }

    #[test]
    fn reads_what_serde_json_reads() {
        let body = r#"{"a":[1,-2,3.5,true,null,{"b":"c~/"}],"e":{},"f":[],"g":"\u00e9","h":18446744073709551615}"#;
        assert_eq!(
            parse(body.as_bytes()).unwrap(),
            serde_json::from_str::<Value>(body).unwrap()
        );
        assert_eq!(parse(b" 5 ").unwrap(), json!(5));
    }

    #[test]
    fn a_repeated_key_at_any_depth_is_named_by_its_pointer() {
        assert_eq!(
            duplicate(r#"{"code":"000000","code":"123456"}"#).as_deref(),
            Some("/code")
        );
        assert_eq!(
            duplicate(r#"{"a":{"x":1},"m":{"k":[0,{"n":1,"n":2}]}}"#).as_deref(),
            Some("/m/k/1/n")
        );
        assert_eq!(
            duplicate(r#"{"a/b~":1,"a/b~":2}"#).as_deref(),
            Some("/a~1b~0")
        );
        // Equal after unescaping is equal.
        assert_eq!(duplicate(r#"{"\u0061":1,"a":2}"#).as_deref(), Some("/a"));
        // The same key in sibling objects is fine.
        assert_eq!(duplicate(r#"[{"a":1},{"a":2}]"#), None);
        assert_eq!(duplicate(r#"{"a":{"a":{"a":1}}}"#), None);
    }

    #[test]
    fn syntax_errors_stay_syntax_errors() {
        for body in ["{\"a\":", "{\"a\":1} x", "", "{\"a\":1,}"] {
            assert!(
                matches!(parse(body.as_bytes()), Err(Error::Syntax(_))),
                "{body}"
            );
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(parse(deep.as_bytes()), Err(Error::Syntax(_))));
    }
}
