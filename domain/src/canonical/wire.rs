//! Helpers shared by the wire modules (`openai`, `anthropic`, `responses`) to read an untyped
//! JSON body while naming the JSON path of whatever is wrong (`messages[2].content[0].text
//! must be a string`). JSON `null` is treated as absent throughout, as the real APIs do.

use crate::error::{GatewayError, invalid};
use serde_json::{Map, Value};

pub(crate) type Res<T> = Result<T, GatewayError>;

/// Decode a request body that must be a JSON object.
pub(crate) fn parse_body(body: &[u8]) -> Res<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("request body must be a JSON object")),
        Err(e) => Err(invalid(format!("invalid JSON body: {e}"))),
    }
}

/// An object being read, with its path for error messages (empty at the top level).
#[derive(Debug, Clone)]
pub(crate) struct Obj<'a> {
    pub(crate) map: &'a Map<String, Value>,
    pub(crate) path: String,
}

impl<'a> Obj<'a> {
    pub(crate) fn root(map: &'a Map<String, Value>) -> Self {
        Obj {
            map,
            path: String::new(),
        }
    }

    /// `value` as an object at `path`, or an error naming the path.
    pub(crate) fn at(value: &'a Value, path: String) -> Res<Self> {
        match value.as_object() {
            Some(map) => Ok(Obj { map, path }),
            None => Err(invalid(format!("{path} must be an object"))),
        }
    }

    /// The path of `key` inside this object.
    pub(crate) fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of `key`, `None` when absent or `null`.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn str(&self, key: &str) -> Res<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(format!("{} must be a string", self.field(key)))),
        }
    }

    pub(crate) fn req_str(&self, key: &str) -> Res<&'a str> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s),
            _ => Err(invalid(format!(
                "{} is required and must be a string",
                self.field(key)
            ))),
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Res<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(invalid(format!("{} must be a boolean", self.field(key)))),
        }
    }

    pub(crate) fn number(&self, key: &str) -> Res<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(n) if v.is_number() => Ok(Some(n)),
                _ => Err(invalid(format!("{} must be a number", self.field(key)))),
            },
        }
    }

    /// A positive integer, `None` when absent.
    pub(crate) fn positive_int(&self, key: &str) -> Res<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(invalid(format!(
                    "{} must be a positive integer",
                    self.field(key)
                ))),
            },
        }
    }

    pub(crate) fn obj(&self, key: &str) -> Res<Option<Obj<'a>>> {
        self.get(key)
            .map(|v| Obj::at(v, self.field(key)))
            .transpose()
    }

    pub(crate) fn req_obj(&self, key: &str) -> Res<Obj<'a>> {
        match self.get(key) {
            Some(v) => Obj::at(v, self.field(key)),
            None => Err(invalid(format!(
                "{} is required and must be an object",
                self.field(key)
            ))),
        }
    }

    pub(crate) fn array(&self, key: &str) -> Res<Option<&'a [Value]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => Err(invalid(format!("{} must be an array", self.field(key)))),
        }
    }

    /// A string or an array of strings (`stop`), each element named on error.
    pub(crate) fn strings(&self, key: &str) -> Res<Vec<String>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(invalid(format!(
                        "{}[{i}] must be a string",
                        self.field(key)
                    ))),
                })
                .collect(),
            Some(_) => Err(invalid(format!(
                "{} must be a string or an array of strings",
                self.field(key)
            ))),
        }
    }
}

/// The `type`/`code` of an upstream `error` object, for messages that must not carry the
/// upstream's free text (it may echo prompt content).
pub(crate) fn error_kind(err: &Value) -> String {
    let ty = err.get("type").and_then(Value::as_str);
    let code = err.get("code").and_then(|c| match c {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    match (ty, code) {
        (Some(t), Some(c)) => format!("{t}/{c}"),
        (Some(t), None) => t.to_owned(),
        (None, Some(c)) => c,
        (None, None) => "unknown".to_owned(),
    }
}

/// Unsigned integer field of a usage object (0 when absent or not a number).
pub(crate) fn count(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// An image URL as the OpenAI wires carry it: a `data:<media type>;base64,<data>` URL
/// becomes inline base64, anything else stays a URL. `path` names the field on error.
pub(crate) fn image_from_url(url: &str, path: &str) -> Res<super::ImageSource> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(super::ImageSource::Url {
            url: url.to_owned(),
        });
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(invalid(format!("{path} is not a valid data URL")));
    };
    let Some(media_type) = meta.strip_suffix(";base64") else {
        return Err(invalid(format!("{path} must be a base64 data URL")));
    };
    Ok(super::ImageSource::Base64 {
        media_type: media_type.to_owned(),
        data: data.to_owned(),
    })
}

/// The URL form of an image (the inverse of [`image_from_url`]).
pub(crate) fn image_url(source: &super::ImageSource) -> String {
    match source {
        super::ImageSource::Base64 { media_type, data } => {
            format!("data:{media_type};base64,{data}")
        }
        super::ImageSource::Url { url } => url.clone(),
    }
}
