//! Spend caps under concurrency and partial charges, through the real server:
//!
//! - waves of 50 parallel requests at a key with a small daily cap (the model priced by a
//!   `--config` file): the recorded spend never exceeds the cap by more than one request's
//!   cost; the observed overshoot is printed;
//! - a stream the upstream cuts mid-way and a stream the client abandons are charged for the
//!   usage they consumed: `cost_usd > 0` on their `llm.call_failed`, and the key's live spend
//!   (admin API) includes them.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use metis_tests::fake_upstream::StreamOutcome;
use metis_tests::gateway::{EventRow, chat_body};
use metis_tests::{Combo, GatewayOptions, KeySpec, Shape, TestGateway};
use serde_json::Value;
use std::time::Duration;

const ADMIN_TOKEN: &str = "quota-test-admin-token-0123456789";
const PRICING_VERSION: &str = "quota-test-2026";

/// A config file pricing `openai:gpt-5` at $100 per million tokens in and out.
fn priced_config(dir: &std::path::Path) -> String {
    let path = dir.join("metis.toml");
    std::fs::write(
        &path,
        format!(
            "[pricing]\nversion = \"{PRICING_VERSION}\"\n\n[prices.\"openai:gpt-5\"]\ninput_per_mtok = 100.0\noutput_per_mtok = 100.0\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn cost(e: &EventRow) -> f64 {
    e.payload["cost_usd"].as_f64().unwrap_or(0.0)
}

fn calls_of(events: &[EventRow], key_id: &str) -> Vec<EventRow> {
    events
        .iter()
        .filter(|e| {
            (e.event_type == "llm.call_completed" || e.event_type == "llm.call_failed")
                && e.payload["gateway_key_id"] == key_id
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_requests_overshoot_a_daily_cap_by_at_most_one_request() {
    const CAP: f64 = 0.02;
    let cfg_dir = tempfile::tempdir().unwrap();
    let mut gw = TestGateway::spawn_with(GatewayOptions {
        extra_keys: vec![KeySpec {
            name: "capped".into(),
            daily_cap_usd: Some(CAP.to_string()),
            ..KeySpec::default()
        }],
        extra_args: vec!["--config".into(), priced_config(cfg_dir.path())],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let capped = gw.key_named("capped").clone();
    let mut statuses = Vec::new();
    // Waves of 50 parallel calls until a whole wave is refused (bounded).
    for wave in 0..8 {
        let mut tasks = Vec::new();
        for i in 0..50 {
            let client = gw.client().clone();
            let url = gw.url("/v1/chat/completions");
            let token = capped.token.clone();
            // `max_tokens` bounds the output as a real provider would; the reply is shorter.
            let mut body = chat_body(
                Shape::OpenAi,
                "gpt-5",
                &format!("[slow:100] w{wave} q{i}"),
                false,
            );
            body["max_tokens"] = Value::from(32);
            tasks.push(tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                (status, v)
            }));
        }
        let mut ok_in_wave = 0;
        for t in tasks {
            let (status, v) = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("bounded")
                .unwrap();
            match status {
                200 => ok_in_wave += 1,
                429 => {
                    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
                    assert_eq!(v["error"]["scope"], "key_daily", "{v}");
                }
                other => panic!("only 200 or 429 quota_exceeded, got {other}: {v}"),
            }
            statuses.push(status);
        }
        if ok_in_wave == 0 {
            break;
        }
    }
    gw.stop().await.unwrap();
    let events = gw.events().unwrap();
    let calls = calls_of(&events, &capped.key_id);
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(calls.len(), ok, "one call event per admitted request");
    let total: f64 = calls.iter().map(cost).sum();
    let one = calls.iter().map(cost).fold(0.0_f64, f64::max);
    eprintln!(
        "quota concurrency: cap ${CAP} — {} requests in waves of 50, {ok} admitted, final spend \
         ${total:.6}, overshoot ${:.6} ({:.2} of one request's cost ${one:.6})",
        statuses.len(),
        total - CAP,
        ((total - CAP) / one).max(0.0),
    );
    assert!(ok >= 2, "the cap admits several calls ({ok})");
    assert!(statuses.contains(&429), "the cap was reached");
    assert!(
        total <= CAP + one + 1e-12,
        "final spend ${total} exceeds the cap ${CAP} by more than one request (${one})"
    );
    assert!(
        calls
            .iter()
            .all(|e| e.payload["pricing_version"] == PRICING_VERSION && cost(e) > 0.0),
        "every call is priced by the config file: {:?}",
        calls.first().map(|e| &e.payload)
    );
    let refused = events
        .iter()
        .filter(|e| e.event_type == "gateway.quota_exceeded")
        .count();
    assert!(refused >= 1, "refusals are audited (sampled)");
}

async fn admin_spend(gw: &TestGateway, key_id: &str) -> f64 {
    let v: Value = gw
        .client()
        .get(gw.url(&format!("/admin/v1/keys/{key_id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["spend_day_usd"]
        .as_f64()
        .unwrap_or_else(|| panic!("spend_day_usd in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_abandoned_streams_are_charged_their_partial_usage() {
    let mut gw = TestGateway::spawn_with(GatewayOptions {
        extra_args: vec!["--admin-token".into(), ADMIN_TOKEN.into()],
        ..GatewayOptions::default()
    })
    .await
    .unwrap();
    let key_id = gw.key.key_id.clone();
    assert!(
        admin_spend(&gw, &key_id).await.abs() < 1e-12,
        "nothing spent yet"
    );

    // Anthropic upstreams report input usage in `message_start`, so the consumed part is known.
    let combo = Combo::OPENAI_TO_ANTHROPIC;
    let r = gw
        .post(
            combo.client,
            &combo.body("alpha beta gamma delta [cut]", true),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let mut resp = gw
        .start_stream(combo.client, &combo.body("[long] keep talking", true))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("a first frame")
        .unwrap()
        .expect("a first frame");
    drop(resp);
    let reqs = gw
        .upstream
        .wait_for_stream_outcomes(Duration::from_secs(5))
        .await;
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].stream_outcome, Some(StreamOutcome::Cut));
    assert_eq!(reqs[1].stream_outcome, Some(StreamOutcome::ClientDropped));

    // Once both calls are in the trace, both partial charges are in the key's live spend
    // (settled, not just reserved).
    let mut recorded = 0;
    for _ in 0..100 {
        let v: Value = gw
            .client()
            .get(gw.url("/admin/v1/usage?group_by=key"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        recorded = v["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["group"] == key_id.as_str())
            .filter_map(|r| r["failed_calls"].as_u64())
            .sum::<u64>();
        if recorded >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recorded, 2, "both failed calls reach the usage report");
    let spend = admin_spend(&gw, &key_id).await;
    gw.stop().await.unwrap();
    let events = gw.events().unwrap();
    let failed: Vec<&EventRow> = events
        .iter()
        .filter(|e| e.event_type == "llm.call_failed")
        .collect();
    assert_eq!(
        failed.len(),
        2,
        "{:?}",
        failed.iter().map(|e| &e.payload).collect::<Vec<_>>()
    );
    for e in &failed {
        assert!(
            cost(e) > 0.0 && e.payload["input_tokens"].as_u64().unwrap_or(0) > 0,
            "partial usage is charged: {}",
            e.payload
        );
    }
    assert!(
        failed
            .iter()
            .any(|e| e.payload["error_class"] == "cancelled"),
        "the abandoned stream is recorded as cancelled"
    );
    let charged: f64 = failed.iter().map(|e| cost(e)).sum();
    assert!(
        (spend - charged).abs() < 1e-9,
        "the key's live spend ${spend} equals the partial charges ${charged}"
    );
    eprintln!("partial charges: cut + abandoned stream = ${charged:.8} (live spend ${spend:.8})");
}

/// OpenAI-compatible upstreams report usage only in the final chunk, so a stream cut or
/// abandoned before it carries no upstream usage. Issue #4 still asks that "cancelled and
/// failed streams are charged for the usage they consumed": the provider bills the prompt and
/// the tokens it streamed, so the gateway must charge at least its own estimate (the input it
/// reserved on plus the deltas it relayed). Otherwise a client dodges its cap by hanging up
/// just before the last frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_abandoned_openai_upstream_streams_are_charged_an_estimate() {
    let mut gw = TestGateway::spawn().await.unwrap();
    let combo = Combo::OPENAI_TO_OPENAI;
    let r = gw
        .post(
            combo.client,
            &combo.body("alpha beta gamma delta [cut]", true),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let combo = Combo::ANTHROPIC_TO_OPENAI;
    let mut resp = gw
        .start_stream(combo.client, &combo.body("[long] keep talking", true))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("frames")
            .unwrap();
    }
    drop(resp);
    let reqs = gw
        .upstream
        .wait_for_stream_outcomes(Duration::from_secs(5))
        .await;
    assert_eq!(reqs[1].stream_outcome, Some(StreamOutcome::ClientDropped));
    gw.stop().await.unwrap();
    let failed = gw.events_of("llm.call_failed").unwrap();
    assert_eq!(failed.len(), 2);
    let uncharged: Vec<String> = failed
        .iter()
        .filter(|e| cost(e) <= 0.0)
        .map(|e| {
            format!(
                "{} (error_class {}): input_tokens {}, output_tokens {}, cost_usd {}",
                e.payload["inbound_shape"],
                e.payload["error_class"],
                e.payload["input_tokens"],
                e.payload["output_tokens"],
                e.payload["cost_usd"]
            )
        })
        .collect();
    assert!(
        uncharged.is_empty(),
        "streams from an OpenAI-compatible upstream that end before the usage chunk are \
         charged nothing (expected cost_usd > 0 from the gateway's input estimate and the \
         relayed deltas):\n{}",
        uncharged.join("\n")
    );
}
