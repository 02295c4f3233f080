//! Trace events written by the real server, read from its SQLite file after a graceful stop
//! (which flushes the batching writer): one event chain per request with typed identity and
//! cost fields, failures and cancellations recorded, and no prompt/completion text or secret.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test scenarios outside #[test] functions"
)]

use metis_tests::fake_upstream::{
    CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, StreamOutcome, estimate_input_tokens, out_tokens,
};
use metis_tests::gateway::EventRow;
use metis_tests::{Combo, Shape, TestGateway, for_each_combo};
use std::collections::BTreeSet;
use std::time::Duration;

async fn gateway() -> TestGateway {
    TestGateway::spawn().await.expect("gateway starts")
}

fn of_type<'a>(events: &'a [EventRow], ty: &str) -> Vec<&'a EventRow> {
    events.iter().filter(|e| e.event_type == ty).collect()
}

fn types(events: &[EventRow]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

/// Request events only (key issuance audit events are written by `issue-key`, elsewhere).
fn request_events(gw: &TestGateway) -> Vec<EventRow> {
    gw.events()
        .expect("trace DB readable")
        .into_iter()
        .filter(|e| !e.event_type.starts_with("gateway.key_"))
        .collect()
}

for_each_combo!(
    sync_request_writes_one_event_chain,
    stream_request_writes_one_event_chain,
    mid_stream_failure_records_call_failed,
    client_disconnect_records_cancelled,
    usage_buckets_and_cost_are_exact,
);

fn assert_chain(gw: &TestGateway, combo: Combo, events: &[EventRow], stream: bool) {
    assert_eq!(
        types(events),
        vec![
            "route.decided",
            "llm.call_started",
            "llm.call_completed",
            "turn.completed",
            "pattern.recorded"
        ],
        "one chain, in order (the turn's pattern observation last)"
    );
    let sessions: BTreeSet<&str> = events.iter().map(|e| e.session_id.as_str()).collect();
    assert_eq!(sessions.len(), 1, "one session per request");
    let turns: BTreeSet<Option<&str>> = events.iter().map(|e| e.turn_id.as_deref()).collect();
    assert_eq!(turns.len(), 1, "one turn per request");
    assert!(turns.iter().all(Option::is_some));
    let started = of_type(events, "llm.call_started")[0];
    let completed = of_type(events, "llm.call_completed")[0];
    assert_eq!(
        completed.parent_event_id.as_deref(),
        Some(started.id.as_str()),
        "llm.call_completed's parent is its llm.call_started"
    );
    assert_eq!(started.payload["stream"], stream);

    let route = &of_type(events, "route.decided")[0].payload;
    assert_eq!(route["chosen_model"], combo.canonical_model());

    let p = &completed.payload;
    assert_eq!(p["gateway_key_id"], gw.key.key_id.as_str());
    assert_eq!(p["inbound_shape"], combo.client.event_name());
    assert_eq!(p["model"], combo.canonical_model());
    assert_eq!(
        p["provider"],
        match combo.upstream {
            Shape::OpenAi => "openai",
            Shape::Anthropic => "anthropic",
        }
    );
    assert!(p["input_tokens"].as_u64().unwrap() > 0, "{p}");
    assert!(p["output_tokens"].as_u64().unwrap() > 0, "{p}");
    assert!(
        p["cost_usd"].as_f64().unwrap() > 0.0,
        "priced model costs something: {p}"
    );
    assert!(!p["pricing_version"].as_str().unwrap().is_empty(), "{p}");
    assert!(p["latency_ms"].is_u64(), "{p}");
    assert!(!p["stop_reason"].as_str().unwrap().is_empty(), "{p}");

    let t = &of_type(events, "turn.completed")[0].payload;
    assert_eq!(t["gateway_key_id"], gw.key.key_id.as_str());
    assert_eq!(t["inbound_shape"], combo.client.event_name());
    assert_eq!(t["llm_call_count"], 1);
    assert_eq!(t["total_cost_usd"], p["cost_usd"]);
}

async fn sync_request_writes_one_event_chain(combo: Combo) {
    let mut gw = gateway().await;
    let r = gw.post(combo.client, &combo.body("trace me", false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    gw.stop().await.unwrap();
    let events = request_events(&gw);
    assert_chain(&gw, combo, &events, false);
}

async fn stream_request_writes_one_event_chain(combo: Combo) {
    let mut gw = gateway().await;
    // No `stream_options.include_usage` from an OpenAI client: the gateway still has to get
    // the usage from the upstream to cost-stamp the call.
    let body = combo.body("trace my stream", true);
    let r = gw.post(combo.client, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    gw.stop().await.unwrap();
    let events = request_events(&gw);
    assert_chain(&gw, combo, &events, true);
}

async fn mid_stream_failure_records_call_failed(combo: Combo) {
    let mut gw = gateway().await;
    let r = gw
        .post(
            combo.client,
            &combo.body("one two three four five six [stream-error]", true),
        )
        .await;
    assert_eq!(r.status, 200);
    gw.stop().await.unwrap();
    let events = request_events(&gw);
    assert!(
        of_type(&events, "llm.call_completed").is_empty(),
        "{:?}",
        types(&events)
    );
    let failed = of_type(&events, "llm.call_failed");
    assert_eq!(failed.len(), 1, "{:?}", types(&events));
    let p = &failed[0].payload;
    assert_eq!(p["gateway_key_id"], gw.key.key_id.as_str());
    assert_eq!(p["inbound_shape"], combo.client.event_name());
    let class = p["error_class"].as_str().unwrap();
    assert!(!class.is_empty() && class != "cancelled", "{p}");
}

async fn client_disconnect_records_cancelled(combo: Combo) {
    let mut gw = gateway().await;
    let mut resp = gw
        .start_stream(combo.client, &combo.body("[long] keep talking", true))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("a first chunk within 10s")
        .unwrap();
    assert!(first.is_some());
    drop(resp);

    // The upstream call is dropped promptly (the [long] stream would run for 10 s).
    let reqs = gw
        .upstream
        .wait_for_stream_outcomes(Duration::from_secs(5))
        .await;
    assert_eq!(
        reqs[0].stream_outcome,
        Some(StreamOutcome::ClientDropped),
        "the gateway dropped the upstream connection when the client left"
    );
    gw.stop().await.unwrap();
    let events = request_events(&gw);
    let failed = of_type(&events, "llm.call_failed");
    assert_eq!(failed.len(), 1, "{:?}", types(&events));
    let p = &failed[0].payload;
    assert_eq!(p["error_class"], "cancelled");
    assert_eq!(p["gateway_key_id"], gw.key.key_id.as_str());
    assert_eq!(p["inbound_shape"], combo.client.event_name());
    if combo.upstream == Shape::Anthropic {
        // Anthropic reports input usage in `message_start`: the abandoned stream's partial
        // usage is known and priced.
        assert!(
            p["input_tokens"].as_u64().unwrap_or(0) > 0,
            "partial usage recorded: {p}"
        );
        assert!(
            p["cost_usd"].as_f64().unwrap_or(0.0) > 0.0,
            "partial usage priced: {p}"
        );
    }
    assert!(of_type(&events, "llm.call_completed").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_error_records_call_failed_with_retries() {
    let mut gw = gateway().await;
    let r = gw
        .post(
            Shape::OpenAi,
            &Combo::OPENAI_TO_ANTHROPIC.body("[status:429] x", false),
        )
        .await;
    assert_eq!(r.status, 429);
    gw.stop().await.unwrap();
    let events = request_events(&gw);
    let failed = of_type(&events, "llm.call_failed");
    assert_eq!(failed.len(), 1, "{:?}", types(&events));
    let p = &failed[0].payload;
    assert_eq!(p["error_class"], "rate_limit");
    assert_eq!(
        p["retry_count"].as_u64(),
        Some(gw.upstream.requests().len() as u64 - 1),
        "retry_count matches the attempts the upstream saw: {p}"
    );
    assert!(of_type(&events, "llm.call_completed").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_audited_without_the_token() {
    let mut gw = gateway().await;
    let bogus = "gw_this_is_not_a_key_0123456789";
    let body = Combo::OPENAI_TO_OPENAI.body("x", false);
    assert_eq!(gw.post_as(Shape::OpenAi, bogus, &body).await.status, 401);
    gw.stop().await.unwrap();
    let events = gw.events().unwrap();
    let failed = of_type(&events, "gateway.auth_failed");
    assert_eq!(failed.len(), 1, "{:?}", types(&events));
    let p = &failed[0].payload;
    assert_eq!(p["reason"], "invalid_token");
    assert_eq!(p["inbound_shape"], "openai");
    assert_eq!(
        p["token_hash_prefix"].as_str().map(str::len),
        Some(8),
        "{p}"
    );
    assert!(!failed[0].payload_json.contains(bogus));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_prompt_completion_or_secret_text_in_the_trace() {
    let mut gw = gateway().await;
    let marker = format!("SECRET-PROMPT-{}", std::process::id());
    for combo in [
        Combo::OPENAI_TO_OPENAI,
        Combo::OPENAI_TO_ANTHROPIC,
        Combo::ANTHROPIC_TO_ANTHROPIC,
        Combo::ANTHROPIC_TO_OPENAI,
    ] {
        for stream in [false, true] {
            let mut body = combo.body(&format!("{marker} user text"), stream);
            match combo.client {
                Shape::OpenAi => body["messages"].as_array_mut().unwrap().insert(
                    0,
                    serde_json::json!({"role": "system", "content": format!("{marker} sys")}),
                ),
                Shape::Anthropic => body["system"] = serde_json::json!(format!("{marker} sys")),
            }
            let r = gw.post(combo.client, &body).await;
            assert_eq!(r.status, 200, "{combo:?}: {}", r.text);
        }
        let r = gw
            .post(
                combo.client,
                &combo.body(&format!("{marker} [tool:lookup]"), false),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    gw.stop().await.unwrap();
    let events = gw.events().unwrap();
    assert!(
        of_type(&events, "llm.call_completed").len() >= 12,
        "{:?}",
        types(&events)
    );
    for e in &events {
        let row = format!(
            "{} {} {:?} {:?} {} {} {} {}",
            e.id,
            e.session_id,
            e.turn_id,
            e.parent_event_id,
            e.event_type,
            e.actor,
            e.sensitivity,
            e.payload_json
        );
        assert!(
            !row.contains(&marker),
            "prompt text in {}: {row}",
            e.event_type
        );
        assert!(
            !row.contains("echo:"),
            "completion text in {}: {row}",
            e.event_type
        );
        assert!(
            !row.contains("Paris"),
            "tool arguments in {}: {row}",
            e.event_type
        );
        assert!(!row.contains(&gw.key.token), "token in {}", e.event_type);
        assert!(!row.contains("upstream-anthropic-key") && !row.contains("upstream-openai-key"));
    }
    // Also check the raw files, including anything not in `events`.
    for suffix in ["", "-wal"] {
        let path = format!("{}{suffix}", gw.db_path.display());
        if let Ok(raw) = std::fs::read(&path) {
            let raw = String::from_utf8_lossy(&raw);
            assert!(!raw.contains(&marker), "prompt text somewhere in {path}");
        }
    }
}

/// With cached tokens in play, the four usage buckets stay disjoint in the trace, each client
/// sees them the way its real API reports them, and the cost is exactly the built-in price of
/// those buckets.
async fn usage_buckets_and_cost_are_exact(combo: Combo) {
    use metis_domain::canonical::Usage;
    use metis_domain::pricing::{BUILTIN_PRICING_VERSION, PriceTable};

    let mut gw = gateway().await;
    let text = "[cache] count every bucket";
    let r = gw.post(combo.client, &combo.body(text, false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let client_usage = r.json()["usage"].clone();
    let up = gw.upstream.requests();
    let input = estimate_input_tokens(&up[0].body);
    let output = out_tokens(&format!("echo: {text}"));
    let write = match combo.upstream {
        Shape::Anthropic => CACHE_WRITE_TOKENS,
        Shape::OpenAi => 0,
    };
    match combo.client {
        Shape::OpenAi => {
            assert_eq!(
                client_usage["prompt_tokens"].as_u64(),
                Some(input + CACHE_READ_TOKENS + write),
                "OpenAI prompt_tokens counts every input token, cached ones included: {client_usage}"
            );
            assert_eq!(
                client_usage["prompt_tokens_details"]["cached_tokens"],
                CACHE_READ_TOKENS
            );
            assert_eq!(client_usage["completion_tokens"].as_u64(), Some(output));
        }
        Shape::Anthropic => {
            assert_eq!(
                client_usage["input_tokens"].as_u64(),
                Some(input),
                "{client_usage}"
            );
            assert_eq!(client_usage["cache_read_input_tokens"], CACHE_READ_TOKENS);
            assert_eq!(
                client_usage["cache_creation_input_tokens"]
                    .as_u64()
                    .unwrap_or(0),
                write
            );
            assert_eq!(client_usage["output_tokens"].as_u64(), Some(output));
        }
    }
    gw.stop().await.unwrap();
    let events = request_events(&gw);
    let p = &of_type(&events, "llm.call_completed")[0].payload;
    assert_eq!(
        p["input_tokens"].as_u64(),
        Some(input),
        "disjoint uncached input: {p}"
    );
    assert_eq!(p["cached_input_tokens"], CACHE_READ_TOKENS, "{p}");
    assert_eq!(
        p["cache_creation_input_tokens"].as_u64(),
        Some(write),
        "{p}"
    );
    assert_eq!(p["output_tokens"].as_u64(), Some(output), "{p}");
    let price = *PriceTable::builtin().get(combo.canonical_model()).unwrap();
    let expected = price.cost(&Usage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: CACHE_READ_TOKENS,
        cache_write_tokens: write,
    });
    let cost = p["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - expected).abs() < 1e-12,
        "cost {cost} != {expected} ({p})"
    );
    assert_eq!(p["pricing_version"], BUILTIN_PRICING_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_client_disconnect_records_cancelled() {
    let mut gw = gateway().await;
    for combo in [Combo::OPENAI_TO_ANTHROPIC, Combo::ANTHROPIC_TO_OPENAI] {
        let req = gw
            .client()
            .post(gw.url(combo.client.gateway_path()))
            .timeout(Duration::from_millis(400))
            .json(&combo.body("[slow:4000] never mind", false));
        let req = match combo.client {
            Shape::OpenAi => req.bearer_auth(&gw.key.token),
            Shape::Anthropic => req.header("x-api-key", &gw.key.token),
        };
        assert!(req.send().await.is_err(), "the client gave up");
    }
    // Give the gateway a moment to notice, then stop it (a drain would otherwise wait for the
    // upstream's 4 s answer and record a completion).
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.stop().await.unwrap();
    let events = request_events(&gw);
    assert!(
        of_type(&events, "llm.call_completed").is_empty(),
        "SPEC §3.3: a client that disconnects from a non-streaming request must cancel the \
         upstream call and record llm.call_failed(cancelled); instead the gateway waited for \
         the upstream and recorded a completion: {:?}",
        types(&events)
    );
    let failed = of_type(&events, "llm.call_failed");
    assert_eq!(failed.len(), 2, "{:?}", types(&events));
    for f in failed {
        assert_eq!(f.payload["error_class"], "cancelled", "{}", f.payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_team_tags_are_stamped_on_call_events() {
    let mut gw = TestGateway::spawn_with(metis_tests::GatewayOptions {
        extra_keys: vec![metis_tests::KeySpec {
            name: "tagged".into(),
            user: Some("alice".into()),
            team: Some("core-team".into()),
            ..metis_tests::KeySpec::default()
        }],
        ..metis_tests::GatewayOptions::default()
    })
    .await
    .unwrap();
    let token = gw.key_named("tagged").token.clone();
    let key_id = gw.key_named("tagged").key_id.clone();
    let r = gw
        .post_as(
            Shape::Anthropic,
            &token,
            &Combo::ANTHROPIC_TO_OPENAI.body("tags", false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    gw.stop().await.unwrap();
    let events = request_events(&gw);
    for ty in ["llm.call_completed", "turn.completed"] {
        let e = of_type(&events, ty);
        assert_eq!(e.len(), 1, "{ty}: {:?}", types(&events));
        assert_eq!(e[0].payload["gateway_key_id"], key_id.as_str(), "{ty}");
        assert_eq!(e[0].payload["user_id"], "alice", "{ty}: {}", e[0].payload);
        assert_eq!(
            e[0].payload["team_id"], "core-team",
            "{ty}: {}",
            e[0].payload
        );
    }
}
