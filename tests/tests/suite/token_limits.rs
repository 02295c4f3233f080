//! Token limits (tokens per minute) against a real gateway and the fake upstream: a call takes
//! its estimate (input + requested maximum output) and settles to the usage the upstream
//! reports; a refusal is a 429 with `Retry-After` and the scope and limit in the body, in
//! every API shape.
//!
//! Timing: buckets refill while a test runs, so every bound allows a few seconds of refill and
//! the separations asserted are tens of seconds wide (an unsettled estimate would be far
//! outside them).
#![expect(
    clippy::unwrap_used,
    reason = "test scenarios outside #[test] functions"
)]

use metis_tests::fake_upstream::parse_sse;
use metis_tests::gateway::{GatewayOptions, IssuedKey, KeySpec, Reply, TestGateway, send};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn gateway(keys: &[(&str, u32)]) -> TestGateway {
    TestGateway::spawn_with(GatewayOptions {
        extra_keys: keys
            .iter()
            .map(|(name, tpm)| KeySpec {
                name: (*name).to_owned(),
                tpm: Some(*tpm),
                ..KeySpec::default()
            })
            .collect(),
        ..GatewayOptions::default()
    })
    .await
    .unwrap()
}

/// The three client shapes: path, auth headers, and a body asking for `max_out` tokens.
#[derive(Debug, Clone, Copy)]
enum Api {
    Chat,
    Messages,
    Responses,
}

impl Api {
    fn request(
        self,
        gw: &TestGateway,
        key: &IssuedKey,
        text: &str,
        max_out: u64,
        stream: bool,
    ) -> reqwest::RequestBuilder {
        let (path, body) = match self {
            Api::Chat => {
                let mut body = json!({"model": "gpt-5", "stream": stream,
                                      "max_completion_tokens": max_out,
                                      "messages": [{"role": "user", "content": text}]});
                if stream {
                    // So the client sees the usage the gateway settles to.
                    body["stream_options"] = json!({"include_usage": true});
                }
                ("/v1/chat/completions", body)
            }
            Api::Messages => (
                "/v1/messages",
                json!({"model": "haiku", "stream": stream, "max_tokens": max_out,
                       "messages": [{"role": "user", "content": text}]}),
            ),
            Api::Responses => (
                "/v1/responses",
                json!({"model": "gpt-5", "stream": stream, "max_output_tokens": max_out,
                       "input": text}),
            ),
        };
        let req = gw.client().post(gw.url(path)).json(&body);
        match self {
            Api::Messages => req
                .header("x-api-key", &key.token)
                .header("anthropic-version", "2023-06-01"),
            Api::Chat | Api::Responses => req.bearer_auth(&key.token),
        }
    }
}

/// The 429 of a token limit: status, `Retry-After` equal to the body's, scope and limit.
fn assert_tpm_refusal(r: &Reply, scope: &str, tpm: u32) -> u64 {
    assert_eq!(r.status, 429, "{}", r.text);
    let body = r.json();
    let e = &body["error"];
    assert_eq!(e["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(e["type"], "rate_limit_error", "{body}");
    assert_eq!(e["scope"], scope, "{body}");
    assert_eq!(e["tpm"], tpm, "{body}");
    let secs = e["retry_after_seconds"].as_u64().unwrap();
    assert!(secs >= 1);
    assert_eq!(
        r.header("retry-after"),
        Some(secs.to_string().as_str()),
        "the header says what the body says"
    );
    secs
}

/// Retry `probe` until it is admitted (a settlement happens when the gateway notices the end
/// of a stream); panics after `within`.
async fn admitted_within(within: Duration, probe: impl Fn() -> reqwest::RequestBuilder) -> Reply {
    let deadline = Instant::now() + within;
    loop {
        let r = send(probe()).await;
        if r.status == 200 || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_beyond_the_key_tpm_gets_429_in_every_shape_and_a_dropped_stream_gives_back() {
    // 600 tokens per minute: 10 per second.
    let gw = gateway(&[("chat", 600), ("messages", 600), ("responses", 600)]).await;
    for (api, name) in [
        (Api::Chat, "chat"),
        (Api::Messages, "messages"),
        (Api::Responses, "responses"),
    ] {
        let key = gw.key_named(name).clone();
        // A long stream holds ~555 of the 600 tokens while it runs.
        let mut stream = api
            .request(&gw, &key, "[long] hold", 550, true)
            .send()
            .await
            .expect("stream");
        assert_eq!(stream.status(), 200, "{api:?}");
        let first = stream.chunk().await.expect("first frame");
        assert!(first.is_some(), "{api:?}");
        // 300 more cannot be covered: ~25 s until the bucket has them.
        let r = send(api.request(&gw, &key, "probe", 300, false)).await;
        let secs = assert_tpm_refusal(&r, "key_tpm", 600);
        assert!((18..=31).contains(&secs), "{api:?}: retry after {secs}s");
        // The client hangs up: the call settles to what it used so far, far below 550, so
        // the same request passes within seconds instead of waiting ~25 s.
        drop(stream);
        let r = admitted_within(Duration::from_secs(10), || {
            api.request(&gw, &key, "probe", 300, false)
        })
        .await;
        assert_eq!(
            r.status, 200,
            "{api:?} after the stream was dropped: {}",
            r.text
        );
    }
    // Another key is untouched by these buckets.
    let r = send(Api::Chat.request(&gw, &gw.key, "free", 100_000, false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The refusals are in the trace (sampled: at least one event), with scope and limit.
    let deadline = Instant::now() + Duration::from_secs(10);
    let limited = loop {
        let rows = gw.events_of("gateway.rate_limited").unwrap();
        if !rows.is_empty() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = &limited
        .first()
        .expect("a gateway.rate_limited event")
        .payload;
    assert_eq!(first["scope"], "key_tpm", "{first}");
    assert_eq!(first["tpm"], 600, "{first}");
    assert!(first.get("rpm").is_none(), "{first}");
}

/// Input + output tokens a finished stream reports (Anthropic `message_start` /
/// `message_delta`, OpenAI the final `usage` chunk).
fn stream_usage(text: &str) -> u64 {
    let mut input = 0;
    let mut output = 0;
    for ev in parse_sse(text) {
        let Some(v) = ev.json() else { continue };
        let usage = [
            v.pointer("/message/usage"),
            v.pointer("/response/usage"),
            v.get("usage").filter(|u| !u.is_null()),
        ];
        for u in usage.into_iter().flatten() {
            let n = |k: &str| u.get(k).and_then(Value::as_u64);
            if let Some(i) = n("input_tokens").or_else(|| n("prompt_tokens")) {
                input = input.max(i);
            }
            if let Some(o) = n("output_tokens").or_else(|| n("completion_tokens")) {
                output = output.max(o);
            }
        }
    }
    input + output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_settle_to_their_final_usage_above_and_below_the_estimate() {
    // 1200 tokens per minute: 20 per second.
    let gw = gateway(&[
        ("up-messages", 1200),
        ("up-chat", 1200),
        ("up-responses", 1200),
        ("down", 1200),
    ])
    .await;

    // Above: a maximum output of 1 makes the estimate ~the input (~400), but the fake echoes
    // the whole text back (~400 more). The extra is charged when the stream ends.
    let text = "word ".repeat(320);
    let estimate = u64::try_from(text.len() / 4).unwrap() + 1;
    for (api, name) in [
        (Api::Messages, "up-messages"),
        (Api::Chat, "up-chat"),
        (Api::Responses, "up-responses"),
    ] {
        let up = gw.key_named(name).clone();
        let r = send(api.request(&gw, &up, &text, 1, true)).await;
        assert_eq!(r.status, 200, "{api:?}: {}", r.text);
        let actual = stream_usage(&r.text);
        assert!(
            actual > estimate + 300,
            "{api:?}: the upstream used more than estimated: {actual} vs {estimate}"
        );
        // A request of more than the capacity needs a full bucket: the wait shows what is
        // missing, the actual usage (~40 s), not the estimate (~20 s).
        let r = send(api.request(&gw, &up, "probe", 5000, false)).await;
        let secs = assert_tpm_refusal(&r, "key_tpm", 1200);
        let by_actual = actual.div_ceil(20);
        let by_estimate = estimate.div_ceil(20);
        eprintln!(
            "{api:?}: estimate ~{estimate}, actual {actual}: retry after {secs}s \
             (actual needs {by_actual}s, the estimate {by_estimate}s)"
        );
        assert!(
            secs + 4 >= by_actual && secs <= by_actual,
            "{api:?}: retry after {secs}s: actual usage {actual} needs {by_actual}s, the estimate {by_estimate}s"
        );
    }

    // Below: the estimate is ~1000 (max_completion_tokens), the call uses a few dozen; the
    // rest comes back when the stream ends, so a second ~1000-token call passes at once.
    let down = gw.key_named("down").clone();
    let r = send(Api::Chat.request(&gw, &down, "hello there", 1000, true)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let used = stream_usage(&r.text);
    assert!(used > 0 && used < 200, "usage {used}");
    let r = send(Api::Chat.request(&gw, &down, "hello again", 1000, false)).await;
    assert_eq!(r.status, 200, "the refund made room: {}", r.text);
}

/// A team's token limit, set through the admin API on a running gateway, is one bucket shared
/// by every key of the team: what one key takes, the other cannot, and the refusal names
/// `team_tpm`; a key outside the team is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_tpm_set_on_a_running_gateway_is_shared_by_the_team_keys() {
    const ADMIN: &str = "token-limits-admin-token-42";
    let member = |name: &str, team: &str| KeySpec {
        name: name.to_owned(),
        team: Some(team.to_owned()),
        ..KeySpec::default()
    };
    let gw = TestGateway::spawn_with(GatewayOptions {
        extra_keys: vec![member("a", "ml"), member("b", "ml"), member("c", "web")],
        extra_args: vec!["--admin-token".into(), ADMIN.into()],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let (a, b, c) = (
        gw.key_named("a").clone(),
        gw.key_named("b").clone(),
        gw.key_named("c").clone(),
    );
    // Before any budget: both keys of the team call freely.
    for key in [&a, &b] {
        let r = send(Api::Chat.request(&gw, key, "warm", 700, false)).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // 1,200 tokens per minute for the team (20 per second), and an allow-list that shows when
    // the running gateway has loaded the budget (the key reload, within 2 s).
    let put = send(
        gw.client()
            .put(gw.url("/admin/v1/budgets/team/ml"))
            .bearer_auth(ADMIN)
            .json(&json!({"tpm": 1200, "allowed_models": ["gpt-5"]})),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let r = async {
        loop {
            let r = send(Api::Messages.request(&gw, &b, "not gpt-5", 1, false)).await;
            if r.status == 403 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let r = tokio::time::timeout(Duration::from_secs(5), r)
        .await
        .expect("the team budget is in force within 5 s");
    assert!(r.text.contains("team 'ml'"), "{}", r.text);
    // a's stream holds ~705 of the team's 1,200 while it runs; b cannot take 705 more.
    let mut stream = Api::Chat
        .request(&gw, &a, "[long] hold", 700, true)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    assert!(stream.chunk().await.expect("first frame").is_some());
    let r = send(Api::Chat.request(&gw, &b, "probe", 700, false)).await;
    let secs = assert_tpm_refusal(&r, "team_tpm", 1200);
    assert!(secs >= 5, "retry after {secs}s");
    // A key of another team shares nothing with it.
    let r = send(Api::Chat.request(&gw, &c, "other team", 700, false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    drop(stream);
}
