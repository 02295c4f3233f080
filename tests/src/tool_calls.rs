//! Tool-call helpers shared by the translation and provider suites: the `get_weather` tool in
//! each client shape, and the reader of a sync answer's tool call.

use crate::gateway::Shape;
use serde_json::{Value, json};

/// The `get_weather` tool definition in `shape`'s request format (one tool, a `city`
/// argument), as the tool tests send it.
#[must_use]
pub fn weather_tools(shape: Shape) -> Value {
    let schema =
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    match shape {
        Shape::OpenAi => json!([{"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city", "parameters": schema}}]),
        Shape::Anthropic => json!([{"name": "get_weather", "description": "Weather for a city",
            "input_schema": schema}]),
    }
}

/// `(id, name, arguments)` of the first tool call of a sync answer in `shape`.
///
/// # Panics
/// When the answer has no tool call (the test's failure).
#[must_use]
#[expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test helper: a missing tool call fails the test"
)]
pub fn tool_call_of(shape: Shape, v: &Value) -> (String, String, Value) {
    match shape {
        Shape::OpenAi => {
            let c = &v["choices"][0]["message"]["tool_calls"][0];
            assert_eq!(c["type"], "function");
            let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap())
                .expect("arguments are a JSON string");
            (
                c["id"].as_str().unwrap().to_owned(),
                c["function"]["name"].as_str().unwrap().to_owned(),
                args,
            )
        }
        Shape::Anthropic => {
            let b = v["content"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["type"] == "tool_use")
                .expect("a tool_use block");
            (
                b["id"].as_str().unwrap().to_owned(),
                b["name"].as_str().unwrap().to_owned(),
                b["input"].clone(),
            )
        }
    }
}
