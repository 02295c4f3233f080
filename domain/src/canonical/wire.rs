//! Helpers shared by the wire modules (`openai`, `anthropic`, `responses`) to read an untyped
//! JSON body while naming the JSON path of whatever is wrong (`messages[2].content[0].text
//! must be a string`). JSON `null` is treated as absent throughout, as the real APIs do.

use super::{
    ChatRequest, ChatResponse, ContentBlock, ImageSource, Opaque, ParsedRequest, Shape, ToolChoice,
    ToolDef, parse_tool_input,
};
use crate::error::{GatewayError, invalid};
use crate::sse::{SseFrame, format_frame};
use serde_json::{Map, Value, json};

pub(crate) type Res<T> = Result<T, GatewayError>;

/// Parse and validate a client body with its wire's reader, keeping the raw object for
/// same-shape passthrough.
pub(crate) fn parse_request(
    body: &[u8],
    read: fn(&Map<String, Value>) -> Res<ChatRequest>,
) -> Res<ParsedRequest> {
    let raw = parse_body(body)?;
    let request = read(&raw)?;
    Ok(ParsedRequest { request, raw })
}

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

    /// A non-empty array (`messages`).
    pub(crate) fn non_empty_array(&self, key: &str) -> Res<&'a [Value]> {
        match self.get(key) {
            Some(Value::Array(items)) if !items.is_empty() => Ok(items),
            _ => Err(invalid(format!(
                "{} must be a non-empty array",
                self.field(key)
            ))),
        }
    }

    /// The `content` of a message on the OpenAI wires: a string is one text part, an array
    /// is parts (each an object, with its path); absent is no parts.
    pub(crate) fn parts(&self) -> Res<Parts<'a>> {
        match self.get("content") {
            None => Ok(Parts::List(Vec::new())),
            Some(Value::String(s)) => Ok(Parts::Text(s)),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(j, p)| Obj::at(p, format!("{}[{j}]", self.field("content"))))
                .collect::<Res<Vec<_>>>()
                .map(Parts::List),
            Some(_) => Err(invalid(format!(
                "{} must be a string or an array of content parts",
                self.field("content")
            ))),
        }
    }

    /// The `arguments` of a tool call in a request: a JSON object, given as JSON text (the
    /// wire's form) or, leniently, as an object; absent or blank text is `{}`.
    pub(crate) fn call_arguments(&self) -> Res<Value> {
        match self.get("arguments") {
            None => Ok(Value::Object(Map::new())),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(Value::Object(Map::new())),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(v @ Value::Object(_)) => Ok(v),
                Ok(_) => Err(invalid(format!(
                    "{} must encode a JSON object",
                    self.field("arguments")
                ))),
                Err(e) => Err(invalid(format!(
                    "{} is not valid JSON: {e}",
                    self.field("arguments")
                ))),
            },
            Some(v @ Value::Object(_)) => Ok(v.clone()),
            Some(_) => Err(invalid(format!(
                "{} must be a JSON string or an object",
                self.field("arguments")
            ))),
        }
    }
}

/// The content parts of a message, each with its path; a string is one text part.
pub(crate) enum Parts<'a> {
    Text(&'a str),
    List(Vec<Obj<'a>>),
}

/// A function tool from an object holding its `name`, `description` and `parameters` (the
/// `function` of a Chat Completions tool, a Responses `function` tool itself).
pub(crate) fn function_tool(function: &Obj<'_>) -> Res<ToolDef> {
    let input_schema = match function.obj("parameters")? {
        Some(p) => Value::Object(p.map.clone()),
        None => empty_object_schema(),
    };
    Ok(ToolDef {
        name: function.req_str("name")?.to_owned(),
        description: function.str("description")?.map(str::to_owned),
        input_schema,
        cache_control: None,
    })
}

/// A `tool_choice` on both OpenAI wires: a mode string (`auto`, `none`, `required`), or an
/// object that `object` reads (each wire names a tool its own way; `expected` says how, for
/// the error on an unknown mode).
pub(crate) fn openai_tool_choice(
    v: &Value,
    expected: &str,
    object: fn(&Obj<'_>) -> Res<ToolChoice>,
) -> Res<ToolChoice> {
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Any),
            _ => Err(invalid(format!(
                "tool_choice '{s}' is not supported (expected auto, none, required or {expected})"
            ))),
        },
        Value::Object(map) => object(&Obj {
            map,
            path: "tool_choice".to_owned(),
        }),
        _ => Err(invalid("tool_choice must be a string or an object")),
    }
}

/// A `tool_choice` on both OpenAI wires: the modes as strings, a named tool as `named(name)`
/// (each wire writes that object its own way).
pub(crate) fn openai_choice(choice: &ToolChoice, named: impl FnOnce(&str) -> Value) -> Value {
    match choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::Any => json!("required"),
        ToolChoice::None => json!("none"),
        ToolChoice::Tool(name) => named(name),
    }
}

/// A text block without cache control.
pub(crate) fn text_block(text: &str) -> ContentBlock {
    ContentBlock::Text {
        text: text.to_owned(),
        cache_control: None,
    }
}

/// The schema a tool that declares no parameters accepts: any object.
pub(crate) fn empty_object_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

/// The `name`, `description` (when there is one) and `parameters` of a function tool, as
/// both OpenAI wires write them.
pub(crate) fn function_fields(tool: &ToolDef) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("name".into(), Value::String(tool.name.clone()));
    if let Some(d) = &tool.description {
        f.insert("description".into(), Value::String(d.clone()));
    }
    f.insert("parameters".into(), tool.input_schema.clone());
    f
}

/// All system text of a request as one string (`\n\n`-joined, empty blocks skipped), for
/// the OpenAI wires, which have no system blocks; `None` when there is none.
pub(crate) fn joined_system(req: &ChatRequest) -> Option<String> {
    let system: Vec<&str> = req
        .system
        .iter()
        .map(|b| b.text.as_str())
        .filter(|t| !t.is_empty())
        .collect();
    (!system.is_empty()).then(|| system.join("\n\n"))
}

/// How error messages name an upstream speaking `wire`.
fn upstream_of(wire: Shape) -> &'static str {
    match wire {
        Shape::OpenAi => "an OpenAI-compatible upstream",
        Shape::Anthropic => "an Anthropic upstream",
        Shape::Responses => "an OpenAI Responses upstream",
    }
}

/// An opaque object is only expressible on the wire it came from: its value for `wire`, or
/// an error naming its type (`what` says where it sits: `content block`, `tool`, …).
pub(crate) fn foreign(o: &Opaque, wire: Shape, what: &str) -> Res<Value> {
    if o.shape == wire {
        Ok(o.value.clone())
    } else {
        Err(invalid(format!(
            "{what} type '{}' cannot be sent to {}",
            o.kind(),
            upstream_of(wire)
        )))
    }
}

/// The `arguments` string of a tool call on the OpenAI wires: the input as compact JSON, or
/// the upstream's raw text when it was not a JSON object (see `ContentBlock::ToolUse`).
pub(crate) fn arguments_string(input: &Value) -> String {
    match input {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
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
pub(crate) fn image_from_url(url: &str, path: &str) -> Res<ImageSource> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(ImageSource::Url {
            url: url.to_owned(),
        });
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(invalid(format!("{path} is not a valid data URL")));
    };
    let Some(media_type) = meta.strip_suffix(";base64") else {
        return Err(invalid(format!("{path} must be a base64 data URL")));
    };
    Ok(ImageSource::Base64 {
        media_type: media_type.to_owned(),
        data: data.to_owned(),
    })
}

/// The URL form of an image (the inverse of [`image_from_url`]).
pub(crate) fn image_url(source: &ImageSource) -> String {
    match source {
        ImageSource::Base64 { media_type, data } => {
            format!("data:{media_type};base64,{data}")
        }
        ImageSource::Url { url } => url.clone(),
    }
}

/// The canonical input of a tool call in an upstream's answer (OpenAI wires): its
/// `arguments` text parsed leniently (see [`parse_tool_input`]), an object as is, else `{}`.
pub(crate) fn tool_input(arguments: Option<&Value>) -> Value {
    match arguments {
        Some(Value::String(s)) => parse_tool_input(s),
        Some(v @ Value::Object(_)) => v.clone(),
        _ => Value::Object(Map::new()),
    }
}

/// A string field of an upstream object, empty when absent or not a string.
pub(crate) fn str_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// An upstream's complete answer as JSON.
fn answer_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("upstream response is not valid JSON: {e}"))
}

/// The object of an answer on an OpenAI wire, or why there is none: not an object, or an
/// `error` member (an error envelope, or a failed Responses object). The message names the
/// error's type/code only, never its text.
pub(crate) fn openai_answer(v: &Value) -> Result<&Map<String, Value>, String> {
    let Some(obj) = v.as_object() else {
        return Err("upstream response is not a JSON object".to_owned());
    };
    if let Some(err) = obj.get("error").filter(|e| !e.is_null()) {
        return Err(format!("upstream returned an error: {}", error_kind(err)));
    }
    Ok(obj)
}

/// Parse a complete upstream answer with its wire's reader.
pub(crate) fn parse_response(
    body: &[u8],
    read: fn(&Value) -> Result<ChatResponse, String>,
) -> Result<ChatResponse, String> {
    read(&answer_json(body)?)
}

/// A same-shape answer: the upstream JSON with only `model` replaced by the client's string,
/// plus its canonical parse (with the wire's reader) for accounting.
pub(crate) fn passthrough_response(
    body: &[u8],
    client_model: &str,
    read: fn(&Value) -> Result<ChatResponse, String>,
) -> Result<(Value, ChatResponse), String> {
    let mut v = answer_json(body)?;
    let parsed = read(&v)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("model".into(), Value::String(client_model.to_owned()));
    }
    Ok((v, parsed))
}

/// The JSON data of a stream event on the wires with named events (Anthropic, Responses);
/// `None` for a frame without data.
///
/// # Errors
/// Data that is not JSON.
pub(crate) fn event_json(frame: &SseFrame) -> Result<Option<Value>, String> {
    let data = frame.data.trim();
    if data.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(data)
        .map(Some)
        .map_err(|_| "upstream sent a malformed stream event".to_owned())
}

/// The type of a stream event: its data's `type`, else the frame's `event:` name, else "".
pub(crate) fn event_type<'a>(v: &'a Value, frame: &'a SseFrame) -> &'a str {
    v.get("type")
        .and_then(Value::as_str)
        .or(frame.event.as_deref())
        .unwrap_or_default()
}

/// The frame that ends a stream which failed after its first byte: the error's envelope in
/// the client's `shape` (as an `event` when the wire names its events), so the client cannot
/// mistake the stream for a complete answer. Nothing once the stream has ended (`done`).
pub(crate) fn error_frames(
    done: &mut bool,
    err: &GatewayError,
    shape: Shape,
    event: Option<&str>,
) -> Vec<String> {
    if std::mem::replace(done, true) {
        return Vec::new();
    }
    vec![format_frame(event, &err.render(shape).body.to_string())]
}
