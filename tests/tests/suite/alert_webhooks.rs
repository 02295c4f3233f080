//! Budget alerts reach a webhook (issue 20 item 3), through the real server: a key with a
//! small daily cap is driven past 80 % by requests through the fake upstream; the next
//! request raises the alert, which a local receiver gets signed, after failures (500, a hang
//! past the timeout, a 503 with `Retry-After`), and the audit trail records the outcome per
//! endpoint. A receiver that hangs never slows a request; a receiver with another secret
//! detects the signature as wrong; what is pending at shutdown is recorded as dropped.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

use metis_tests::gateway::{EventRow, chat_body};
use metis_tests::webhook_receiver::{Answer, WebhookReceiver};
use metis_tests::{GatewayOptions, KeySpec, Shape, TestGateway};
use serde_json::Value;
use std::time::{Duration, Instant};

const SECRET: &str = "alert-test-secret-0123456789abcdef";
/// Part of the receivers' URL path: it must never reach an event or a log line.
const PATH_TOKEN: &str = "PATHTOKEN-s3cr3t";

/// `openai:gpt-5` at $100 per million tokens: a short request costs a few tenths of a cent,
/// a few percent of the cap below, so spend crosses 80 % in small steps.
const CONFIG: &str = "[pricing]\nversion = \"alert-test\"\n\n[prices.\"openai:gpt-5\"]\ninput_per_mtok = 100.0\noutput_per_mtok = 100.0\n";
const CAP: &str = "0.05";

async fn gateway(webhooks: &[String], extra: &[&str]) -> TestGateway {
    let mut args: Vec<String> = webhooks
        .iter()
        .flat_map(|u| ["--alert-webhook".to_owned(), u.clone()])
        .collect();
    args.extend(["--alert-webhook-secret".to_owned(), SECRET.to_owned()]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    TestGateway::spawn_with(GatewayOptions {
        extra_keys: vec![KeySpec {
            name: "capped".into(),
            daily_cap_usd: Some(CAP.into()),
            ..KeySpec::default()
        }],
        extra_args: args,
        config_toml: Some(CONFIG.to_owned()),
        ..GatewayOptions::default()
    })
    .await
    .unwrap()
}

/// One request with the capped key; its status and how long it took.
async fn request(gw: &TestGateway, i: usize) -> (u16, Duration) {
    let token = gw.key_named("capped").token.clone();
    let started = Instant::now();
    let r = gw
        .post_as(
            Shape::OpenAi,
            &token,
            &chat_body(
                Shape::OpenAi,
                "gpt-5",
                &format!("spend a little {i}"),
                false,
            ),
        )
        .await;
    (r.status, started.elapsed())
}

/// Requests until `receiver` saw an attempt (bounded); returns the statuses.
async fn spend_until_alerted(gw: &TestGateway, receiver: &WebhookReceiver) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..80 {
        let (status, _) = request(gw, i).await;
        statuses.push(status);
        assert!(
            status == 200 || status == 402 || status == 429,
            "request {i}: {status}"
        );
        if !receiver
            .wait_for(1, Duration::from_millis(100))
            .await
            .is_empty()
        {
            return statuses;
        }
    }
    panic!("no alert reached the receiver after 80 requests: {statuses:?}");
}

fn payload_mentions_secrets(e: &EventRow) -> bool {
    e.payload_json.contains(SECRET) || e.payload_json.contains(PATH_TOKEN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_is_delivered_signed_after_failures_and_the_outcome_is_audited() {
    let flaky = WebhookReceiver::start(
        SECRET,
        vec![
            Answer::Status(500),
            // Past the 2 s attempt timeout (2 s, not less: on a loaded machine the attempts
            // that should count may take a while to be answered).
            Answer::Hang(Duration::from_secs(8)),
            Answer::RetryAfter(503, 2),
        ],
    )
    .await
    .unwrap();
    let refusing = WebhookReceiver::start(SECRET, vec![Answer::Status(401)])
        .await
        .unwrap();
    let mut gw = gateway(
        &[
            flaky.url(&format!("/hooks/{PATH_TOKEN}")),
            refusing.url("/hook"),
        ],
        &[
            "--alert-webhook-timeout",
            "2s",
            "--alert-webhook-max-attempts",
            "5",
        ],
    )
    .await;
    let capped = gw.key_named("capped").key_id.clone();
    let statuses = spend_until_alerted(&gw, &flaky).await;
    eprintln!("requests until the alert: {}", statuses.len());
    // 500, timeout, 503 + Retry-After: 2, then 204.
    let attempts = flaky.wait_for(4, Duration::from_secs(30)).await;
    assert_eq!(attempts.len(), 4, "{attempts:?}");
    let answered: Vec<Option<u16>> = attempts.iter().map(|a| a.answered).collect();
    assert_eq!(answered, [Some(500), None, Some(503), Some(204)]);
    let first = &attempts[0];
    let id = first.delivery.clone().unwrap();
    for a in &attempts {
        assert!(
            a.verified,
            "signature verifies with the shared secret: {a:?}"
        );
        assert_eq!(
            a.delivery.as_deref(),
            Some(id.as_str()),
            "same delivery id on retries"
        );
        assert_eq!(a.body, first.body, "same body on retries");
        assert_eq!(a.content_type.as_deref(), Some("application/json"));
        assert!(a.path.ends_with(PATH_TOKEN));
    }
    let gap = attempts[3].at - attempts[2].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After: 2 honoured, waited {gap:?}"
    );
    eprintln!(
        "attempt gaps: {:?}",
        attempts
            .windows(2)
            .map(|w| w[1].at - w[0].at)
            .collect::<Vec<_>>()
    );
    let body = first.json();
    assert_eq!(body["type"], "budget.alert");
    assert_eq!(body["id"], Value::from(id.clone()));
    assert_eq!(body["cap"], "key_daily");
    assert_eq!(body["window"], "day");
    assert_eq!(body["level_percent"], 80);
    assert_eq!(body["severity"], "warning");
    assert_eq!(body["limit_usd"], CAP);
    assert_eq!(body["scope"]["kind"], "key");
    assert_eq!(body["gateway_key_id"], Value::from(capped.clone()));
    assert!(body["ratio"].as_f64().unwrap() >= 0.8, "{body}");
    // The other endpoint refused with 401: one attempt, no retry.
    let refused = refusing.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].delivery.as_deref(), Some(id.as_str()));

    gw.stop().await.unwrap();
    assert_eq!(refusing.attempts().len(), 1, "a 401 is not retried");
    let alert = gw.events_of("quota.alert").unwrap();
    assert!(
        alert.iter().any(|e| e.id == id),
        "the delivery id is the quota.alert event id"
    );
    let delivered = gw.events_of("quota.alert_delivered").unwrap();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let d = &delivered[0].payload;
    assert_eq!(d["alert_id"], Value::from(id.clone()));
    assert_eq!(d["attempts"], 4);
    assert_eq!(d["status"], 204);
    assert_eq!(d["cap"], "key_daily");
    assert_eq!(
        d["endpoint"],
        Value::from(format!("#1 http://{}", flaky.addr))
    );
    assert!(
        d["audit_seq"].as_u64().is_some(),
        "chained audit event: {d}"
    );
    let undelivered = gw.events_of("quota.alert_undelivered").unwrap();
    assert_eq!(undelivered.len(), 1, "{undelivered:?}");
    let u = &undelivered[0].payload;
    assert_eq!(u["alert_id"], Value::from(id));
    assert_eq!(u["reason"], "rejected");
    assert_eq!(u["attempts"], 1);
    assert_eq!(u["last_error"], "status 401");
    assert_eq!(
        u["endpoint"],
        Value::from(format!("#2 http://{}", refusing.addr))
    );
    let all = gw.events().unwrap();
    assert!(!all.iter().any(payload_mentions_secrets));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_never_slows_requests_and_pending_deliveries_are_dropped_at_shutdown() {
    // Signs with the gateway's secret but verifies with another one: the wrong secret shows.
    let hanging = WebhookReceiver::start(
        "not-the-gateways-secret-0123456789",
        vec![Answer::Hang(Duration::from_secs(60)); 4],
    )
    .await
    .unwrap();
    let failing = WebhookReceiver::start(SECRET, vec![Answer::Status(500); 4])
        .await
        .unwrap();
    let mut gw = gateway(
        &[hanging.url("/hook"), failing.url("/hook")],
        &[
            "--alert-webhook-timeout",
            "20s",
            "--alert-webhook-max-attempts",
            "2",
        ],
    )
    .await;
    spend_until_alerted(&gw, &hanging).await;
    let a = &hanging.attempts()[0];
    assert!(!a.verified, "a receiver with another secret detects it");
    // While the delivery hangs (up to 20 s), requests take their usual time.
    let mut took = Vec::new();
    for i in 100..105 {
        let (status, t) = request(&gw, i).await;
        assert!(status == 200 || status == 402 || status == 429, "{status}");
        took.push(t);
    }
    eprintln!("request latency while a webhook hangs: {took:?}");
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(10)),
        "no request waits on the webhook (its attempt timeout is 20 s): {took:?}"
    );
    // The failing endpoint gives up after its 2 attempts.
    // (The requests above may have raised the 95 % alert too: more attempts then.)
    let failed = failing.wait_for(2, Duration::from_secs(15)).await;
    assert!(failed.len() >= 2, "{failed:?}");
    assert_eq!(
        failed[0].delivery, failed[1].delivery,
        "the first alert's two attempts"
    );
    assert!(failed.iter().all(|a| a.verified));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    gw.stop().await.unwrap();
    eprintln!("stop with a hanging delivery took {:?}", stopping.elapsed());
    let undelivered = gw.events_of("quota.alert_undelivered").unwrap();
    let by_reason = |r: &str| -> Vec<Value> {
        undelivered
            .iter()
            .filter(|e| e.payload["reason"] == r)
            .map(|e| e.payload.clone())
            .collect()
    };
    let gave_up = by_reason("gave_up");
    assert!(!gave_up.is_empty(), "{undelivered:?}");
    assert_eq!(gave_up[0]["attempts"], 2);
    assert_eq!(gave_up[0]["last_error"], "status 500");
    assert_eq!(
        gave_up[0]["endpoint"],
        Value::from(format!("#2 http://{}", failing.addr))
    );
    let shutdown = by_reason("shutdown");
    assert!(!shutdown.is_empty(), "{undelivered:?}");
    assert_eq!(
        shutdown[0]["endpoint"],
        Value::from(format!("#1 http://{}", hanging.addr))
    );
    assert_eq!(shutdown[0]["attempts"], 1, "the cut attempt counts as made");
    assert!(gw.events_of("quota.alert_delivered").unwrap().is_empty());
    let all = gw.events().unwrap();
    assert!(!all.iter().any(payload_mentions_secrets));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_without_a_secret_or_over_plain_http_elsewhere_is_refused_at_start() {
    let no_secret = TestGateway::spawn_with(GatewayOptions {
        extra_args: vec![
            "--alert-webhook".into(),
            "https://hooks.example.com/x".into(),
        ],
        ..GatewayOptions::default()
    })
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(no_secret.contains("--alert-webhook-secret"), "{no_secret}");
    let plain = TestGateway::spawn_with(GatewayOptions {
        extra_args: vec![
            "--alert-webhook".into(),
            format!("http://hooks.example.com/{PATH_TOKEN}"),
            "--alert-webhook-secret".into(),
            SECRET.into(),
        ],
        ..GatewayOptions::default()
    })
    .await
    .err()
    .unwrap();
    let plain = format!("{plain:#}");
    assert!(plain.contains("loopback"), "{plain}");
    assert!(
        !plain.contains(PATH_TOKEN) && !plain.contains(SECRET),
        "{plain}"
    );
}
