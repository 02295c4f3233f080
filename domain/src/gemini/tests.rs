use super::*;
use crate::canonical::{StreamAccumulator, SystemBlock, ToolDef};
use serde_json::json;

fn text(t: &str) -> ContentBlock {
    ContentBlock::Text {
        text: t.to_owned(),
        cache_control: None,
    }
}

fn tool_turns() -> ChatRequest {
    ChatRequest {
        model: "gemini:gemini-2.5-flash".into(),
        system: vec![
            SystemBlock {
                text: "be brief".into(),
                cache_control: None,
            },
            SystemBlock {
                text: "be kind".into(),
                cache_control: None,
            },
        ],
        messages: vec![
            Message {
                role: Role::User,
                content: vec![text("weather in Paris and Rome?")],
            },
            Message {
                role: Role::Assistant,
                content: vec![
                    ContentBlock::ToolUse {
                        id: "toolu_gm0123456789abcdef".into(),
                        name: "weather".into(),
                        input: json!({"city": "Paris"}),
                        cache_control: None,
                    },
                    ContentBlock::ToolUse {
                        id: "call_client_2".into(),
                        name: "time".into(),
                        input: json!({"city": "Rome"}),
                        cache_control: None,
                    },
                ],
            },
            Message {
                role: Role::User,
                content: vec![
                    // Results arrive in the other order: Gemini wants the calls' order.
                    ContentBlock::ToolResult {
                        tool_use_id: "call_client_2".into(),
                        content: vec![ToolResultContent::Text("12:00".into())],
                        is_error: false,
                        cache_control: None,
                    },
                    ContentBlock::ToolResult {
                        tool_use_id: "toolu_gm0123456789abcdef".into(),
                        content: vec![ToolResultContent::Text(r#"{"temp":21}"#.into())],
                        is_error: false,
                        cache_control: None,
                    },
                ],
            },
        ],
        tools: vec![ToolDef {
            name: "weather".into(),
            description: Some("the weather".into()),
            input_schema: json!({"type": "object", "additionalProperties": false}),
            cache_control: None,
        }],
        tool_choice: Some(ToolChoice::Tool("weather".into())),
        max_tokens: Some(100),
        temperature: Some(0.5),
        top_p: Some(0.9),
        stop: vec!["END".into()],
        thinking: Some(json!({"type": "enabled", "budget_tokens": 1024})),
        ..ChatRequest::default()
    }
}

#[test]
fn request_carries_system_turns_tools_config_and_results_by_name_and_order() {
    let body = render_request(&tool_turns(), "gemini-2.5-flash").unwrap();
    assert_eq!(
        body["systemInstruction"],
        json!({"parts": [{"text": "be brief\n\nbe kind"}]})
    );
    assert!(body.get("model").is_none(), "the model goes in the URL");
    let contents = body["contents"].as_array().unwrap();
    assert_eq!(contents.len(), 3);
    assert_eq!(contents[1]["role"], "model");
    // A minted id is not sent back; a client's own id is.
    assert_eq!(
        contents[1]["parts"][0],
        json!({"functionCall": {"name": "weather", "args": {"city": "Paris"}}})
    );
    assert_eq!(
        contents[1]["parts"][1]["functionCall"]["id"],
        "call_client_2"
    );
    assert_eq!(contents[2]["role"], "user");
    assert_eq!(
        contents[2]["parts"][0],
        json!({"functionResponse": {"name": "weather", "response": {"temp": 21}}})
    );
    assert_eq!(
        contents[2]["parts"][1]["functionResponse"]["response"],
        json!({"result": "12:00"})
    );
    assert_eq!(
        body["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"],
        json!({"type": "object", "additionalProperties": false})
    );
    assert_eq!(
        body["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}})
    );
    assert_eq!(
        body["generationConfig"],
        json!({"maxOutputTokens": 100, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"],
               "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": true}})
    );
}

#[test]
fn orphan_tool_result_and_foreign_blocks_are_refused_by_name() {
    let mut req = tool_turns();
    req.messages.remove(1);
    let err = render_request(&req, "m").unwrap_err();
    assert!(
        err.message().contains("answers no earlier tool call"),
        "{err:?}"
    );

    let mut req = tool_turns();
    req.messages[0]
        .content
        .push(ContentBlock::Other(crate::canonical::Opaque {
            shape: crate::canonical::Shape::Anthropic,
            value: json!({"type": "document"}),
        }));
    let err = render_request(&req, "m").unwrap_err();
    assert!(err.message().contains("'document'"), "{err:?}");
}

#[test]
fn consecutive_user_turns_merge_and_images_map() {
    let req = ChatRequest {
        messages: vec![
            Message {
                role: Role::User,
                content: vec![text("a")],
            },
            Message {
                role: Role::User,
                content: vec![
                    ContentBlock::Image {
                        source: ImageSource::Base64 {
                            media_type: "image/png".into(),
                            data: "AAAA".into(),
                        },
                        cache_control: None,
                    },
                    ContentBlock::Image {
                        source: ImageSource::Url {
                            url: "https://x.test/cat.JPG?s=1".into(),
                        },
                        cache_control: None,
                    },
                ],
            },
        ],
        ..ChatRequest::default()
    };
    let body = render_request(&req, "m").unwrap();
    let contents = body["contents"].as_array().unwrap();
    assert_eq!(contents.len(), 1);
    assert_eq!(
        contents[0]["parts"][1],
        json!({"inlineData": {"mimeType": "image/png", "data": "AAAA"}})
    );
    assert_eq!(
        contents[0]["parts"][2]["fileData"]["mimeType"],
        "image/jpeg"
    );
}

#[test]
fn response_parses_text_thoughts_calls_usage_and_stable_ids() {
    let body = json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "let me think", "thought": true, "thoughtSignature": "sig"},
            {"text": "Checking "}, {"text": "now."},
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "weather", "args": {"city": "Rome"}}}
        ]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 100, "cachedContentTokenCount": 40,
            "candidatesTokenCount": 20, "thoughtsTokenCount": 5, "totalTokenCount": 125},
        "modelVersion": "gemini-2.5-flash", "responseId": "r1"
    });
    let bytes = body.to_string().into_bytes();
    let r = parse_response(&bytes).unwrap();
    assert_eq!(r.stop_reason, StopReason::ToolUse);
    assert_eq!(
        r.usage,
        Usage {
            input_tokens: 60,
            output_tokens: 25,
            cache_read_tokens: 40,
            cache_write_tokens: 0
        }
    );
    assert_eq!(r.content.len(), 4);
    assert_eq!(
        r.content[0],
        ContentBlock::Thinking {
            thinking: "let me think".into(),
            signature: Some("sig".into())
        }
    );
    assert_eq!(r.content[1], text("Checking now."));
    let ids: Vec<String> = r
        .content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::ToolUse { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1], "same name, different calls: distinct ids");
    assert!(ids.iter().all(|i| is_minted(i)), "{ids:?}");
    // Stable: the same answer gives the same ids.
    assert_eq!(parse_response(&bytes).unwrap().content, r.content);
    assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
}

#[test]
fn finish_reasons_and_errors_map() {
    let with = |reason: &str| {
        let b = json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]});
        parse_response(b.to_string().as_bytes())
            .unwrap()
            .stop_reason
    };
    assert_eq!(with("STOP"), StopReason::EndTurn);
    assert_eq!(with("MAX_TOKENS"), StopReason::MaxTokens);
    assert_eq!(with("SAFETY"), StopReason::Refusal);
    assert_eq!(with("RECITATION"), StopReason::Refusal);
    let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}});
    assert_eq!(
        parse_response(blocked.to_string().as_bytes())
            .unwrap()
            .stop_reason,
        StopReason::Refusal
    );
    let err = json!({"error": {"code": 429, "message": "secret prompt echo", "status": "RESOURCE_EXHAUSTED"}});
    let e = parse_response(err.to_string().as_bytes()).unwrap_err();
    assert!(
        e.contains("RESOURCE_EXHAUSTED") && !e.contains("secret"),
        "{e}"
    );
}

fn frame(v: &Value) -> SseFrame {
    SseFrame {
        event: None,
        data: v.to_string(),
    }
}

#[test]
fn stream_yields_canonical_events_and_ends_cleanly_only_with_finish_reason() {
    let mut p = StreamParser::new();
    let mut events = Vec::new();
    for chunk in [
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "hm", "thought": true}]}}],
               "usageMetadata": {"promptTokenCount": 10}, "modelVersion": "gemini-2.5-flash", "responseId": "r"}),
        json!({"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]}),
        json!({"candidates": [{"content": {"parts": [{"text": "lo"}]}}]}),
        json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "weather", "args": {"city": "Paris"}}}]},
               "finishReason": "STOP"}],
               "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 7, "thoughtsTokenCount": 2}}),
    ] {
        assert!(!p.ended_cleanly());
        events.extend(p.push(&frame(&chunk)).unwrap());
    }
    assert!(p.ended_cleanly());
    events.extend(p.finish());
    assert!(p.finish().is_empty());
    let mut acc = StreamAccumulator::new();
    for e in &events {
        acc.push(e);
    }
    let r = acc.into_response();
    assert_eq!(r.stop_reason, StopReason::ToolUse);
    assert_eq!(r.usage.input_tokens, 10);
    assert_eq!(r.usage.output_tokens, 9);
    assert_eq!(r.content.len(), 3);
    assert_eq!(r.content[1], text("Hello"));
    match &r.content[2] {
        ContentBlock::ToolUse {
            id, name, input, ..
        } => {
            assert_eq!(name, "weather");
            assert_eq!(input, &json!({"city": "Paris"}));
            // The stream mints the same id the sync parse would.
            assert_eq!(id, &mint_id(0, "weather", &json!({"city": "Paris"})));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(events.last(), Some(StreamEvent::Finish { .. })));
}

#[test]
fn stream_without_finish_reason_is_not_clean_and_errors_surface() {
    let mut p = StreamParser::new();
    p.push(&frame(
        &json!({"candidates": [{"content": {"parts": [{"text": "x"}]}}]}),
    ))
    .unwrap();
    assert!(!p.ended_cleanly());
    let mut p = StreamParser::new();
    let e = p
        .push(&frame(
            &json!({"error": {"code": 500, "status": "INTERNAL", "message": "m"}}),
        ))
        .unwrap_err();
    assert!(e.contains("INTERNAL"), "{e}");
    assert!(
        p.push(&SseFrame {
            event: None,
            data: "{nope".into()
        })
        .is_err()
    );
}

#[test]
fn an_empty_trailing_text_part_opens_no_block() {
    let mut p = StreamParser::new();
    let mut events = p
        .push(&frame(&json!({"candidates": [{"content": {"parts": [
            {"functionCall": {"name": "f", "args": {}}}]}}]})))
        .unwrap();
    events.extend(
        p.push(&frame(
            &json!({"candidates": [{"content": {"parts": [{"text": ""}]},
            "finishReason": "STOP"}]}),
        ))
        .unwrap(),
    );
    events.extend(p.finish());
    let starts = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::BlockStart { .. }))
        .count();
    assert_eq!(starts, 1, "{events:?}");
}
