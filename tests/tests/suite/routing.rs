//! Routes through the real server: a model alias served by deployments on separate fake
//! upstreams. An upstream outage or 429 storm falls back to the next priority group (across
//! API shapes), ejects the failing deployment after consecutive failures (visible in
//! `/metrics`, `/readyz` and `GET /admin/v1/routes`) and lets it back after a half-open probe;
//! weights split traffic; no fallback after the first byte; the opt-out header, the deadline
//! and a deployment's rpm ceiling are respected; `route.decided` records the chain tried and the
//! cost is the answering deployment's.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test scenarios outside #[test] functions"
)]

use metis_tests::fake_upstream::FakeUpstream;
use metis_tests::gateway::{
    UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY, chat_body, reply_text, stream_text,
};
use metis_tests::{GatewayOptions, Shape, TestGateway};
use reqwest::Method;
use serde_json::Value;
use std::time::{Duration, Instant};

const ADMIN: &str = "routing-admin-token-5d1e8a";

/// A gateway whose route `r` is `primary` (provider `b`, the second fake) at priority 0 and
/// `backup` (Anthropic on the gateway's own fake) at priority 1, plus `extra` TOML.
async fn gateway(b: &FakeUpstream, routes: &str, extra: &str) -> TestGateway {
    let toml = format!(
        r#"
[providers.b]
kind = "openai"
base_url = "{b}"
api_key = "{key}"

[prices."b:gpt-5-mini"]
input_per_mtok = 0.5
output_per_mtok = 2.0

{routes}

{extra}
"#,
        b = b.openai_base_url(),
        key = UPSTREAM_OPENAI_KEY,
    );
    TestGateway::spawn_with(GatewayOptions {
        config_toml: Some(toml),
        extra_args: vec!["--admin-token".into(), ADMIN.into()],
        ..GatewayOptions::default()
    })
    .await
    .expect("gateway starts")
}

const PRIMARY_AND_BACKUP: &str = r#"
[[routes.r]]
name = "primary"
provider = "b"
model = "gpt-5-mini"

[[routes.r]]
name = "backup"
provider = "anthropic"
model = "claude-haiku-4-5"
priority = 1
"#;

async fn second_upstream() -> FakeUpstream {
    FakeUpstream::start(UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY)
        .await
        .expect("second fake upstream")
}

fn model_calls(up: &FakeUpstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions") || r.path.ends_with("/messages"))
        .count()
}

/// The `(deployment, verdict)` chain of every `route.decided`, in order.
fn chains(gw: &TestGateway) -> Vec<Vec<(String, String)>> {
    gw.events_of("route.decided")
        .unwrap()
        .iter()
        .map(|e| {
            e.payload["chain"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["deployment"].as_str().unwrap_or("").to_owned(),
                        c["verdict"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .collect()
}

fn pair(d: &str, v: &str) -> (String, String) {
    (d.to_owned(), v.to_owned())
}

async fn admin_routes(gw: &TestGateway) -> Value {
    let r = gw
        .client()
        .request(Method::GET, gw.url("/admin/v1/routes"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn metrics(gw: &TestGateway) -> String {
    gw.request(Method::GET, "/metrics").await.text
}

#[tokio::test]
async fn an_outage_falls_back_ejects_the_deployment_and_a_probe_brings_it_back() {
    let b = second_upstream().await;
    let mut gw = gateway(
        &b,
        PRIMARY_AND_BACKUP,
        "[routing]\nfailure_threshold = 2\ncooldown_ms = 400\nmax_cooldown_ms = 800\n",
    )
    .await;
    b.fail_all(Some(503));
    // Two failures on `primary`, each answered by `backup` (an OpenAI client served by
    // Anthropic: the fallback crosses shapes).
    for i in 0..2 {
        let r = gw
            .post(
                Shape::OpenAi,
                &chat_body(Shape::OpenAi, "r", &format!("hello {i}"), false),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            reply_text(Shape::OpenAi, &r.json()),
            format!("echo: hello {i}")
        );
    }
    assert_eq!(
        model_calls(&b),
        2,
        "no retries on the failing deployment: a fallback was left"
    );
    // Ejected: the third request goes straight to `backup`.
    let r = gw
        .post(
            Shape::OpenAi,
            &chat_body(Shape::OpenAi, "r", "third", false),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(model_calls(&b), 2);
    let m = metrics(&gw).await;
    assert!(
        m.contains(
            "metis_deployment_circuit_state{route=\"r\",deployment=\"primary\",provider=\"b\"} 2\n"
        ),
        "{m}"
    );
    assert!(m.contains(
        "metis_deployment_ejections_total{route=\"r\",deployment=\"primary\",provider=\"b\"} 1\n"
    ));
    let ready = gw.request(Method::GET, "/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "degraded");
    assert!(
        ready.json()["reason"]
            .as_str()
            .unwrap()
            .contains("r/primary ejected"),
        "{}",
        ready.text
    );
    let routes = admin_routes(&gw).await;
    let primary = &routes["routes"][0]["deployments"][0];
    assert_eq!(primary["name"], "primary");
    assert_eq!(primary["circuit"], "open");
    assert_eq!(primary["ejections"], 1);
    assert_eq!(routes["routes"][0]["fallbacks"], 3);

    // The upstream recovers; after the cool-down (≤ 480 ms with jitter) one probe goes to it
    // and closes the circuit.
    b.fail_all(None);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = gw
        .post(
            Shape::OpenAi,
            &chat_body(Shape::OpenAi, "r", "probe", false),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        model_calls(&b),
        3,
        "the probe reached the recovered upstream"
    );
    let routes = admin_routes(&gw).await;
    assert_eq!(routes["routes"][0]["deployments"][0]["circuit"], "closed");
    let ready = gw.request(Method::GET, "/readyz").await;
    assert_eq!(ready.json()["status"], "ready");

    // A 429 storm on `primary` while an Anthropic client streams: answered by `backup`.
    b.fail_all(Some(429));
    let r = gw
        .post(
            Shape::Anthropic,
            &chat_body(Shape::Anthropic, "r", "streamed", true),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(stream_text(Shape::Anthropic, &r.events()), "echo: streamed");

    gw.stop().await.unwrap();
    let chains = chains(&gw);
    assert_eq!(
        chains,
        vec![
            vec![pair("primary", "failed"), pair("backup", "chose")],
            vec![pair("primary", "failed"), pair("backup", "chose")],
            vec![pair("primary", "skipped"), pair("backup", "chose")],
            vec![pair("primary", "chose")],
            vec![pair("primary", "failed"), pair("backup", "chose")],
        ]
    );
    let decided = gw.events_of("route.decided").unwrap();
    assert!(
        decided[0].payload["chain"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("HTTP 503"),
        "{}",
        decided[0].payload
    );
    assert!(
        decided[2].payload["chain"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("circuit open")
    );
    // Cost is stamped with the deployment that answered, at its price.
    let completed = gw.events_of("llm.call_completed").unwrap();
    let models: Vec<&str> = completed
        .iter()
        .map(|e| e.payload["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        models,
        vec![
            "anthropic:claude-haiku-4-5",
            "anthropic:claude-haiku-4-5",
            "anthropic:claude-haiku-4-5",
            "b:gpt-5-mini",
            "anthropic:claude-haiku-4-5"
        ]
    );
    assert!(
        completed
            .iter()
            .all(|e| e.payload["cost_usd"].as_f64().unwrap() > 0.0)
    );
}

#[tokio::test]
async fn weights_split_traffic_between_two_upstreams() {
    let b = second_upstream().await;
    let routes = r#"
[[routes.w]]
name = "heavy"
provider = "openai"
model = "gpt-5-mini"
weight = 3

[[routes.w]]
name = "light"
provider = "b"
model = "gpt-5-mini"
weight = 1
"#;
    let gw = gateway(&b, routes, "").await;
    let n = 200;
    for i in 0..n {
        let r = gw
            .post(
                Shape::OpenAi,
                &chat_body(Shape::OpenAi, "w", &format!("n{i}"), false),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let heavy = model_calls(&gw.upstream);
    assert_eq!(heavy + model_calls(&b), n);
    let share = heavy as f64 / n as f64;
    assert!((0.65..0.85).contains(&share), "weight-3 share {share}");
}

#[tokio::test]
async fn no_fallback_after_the_first_byte_nor_when_the_client_opts_out() {
    let b = second_upstream().await;
    let gw = gateway(&b, PRIMARY_AND_BACKUP, "").await;
    // The stream breaks after its first deltas: the client gets them and an error, and the
    // backup is never asked.
    let r = gw
        .post(
            Shape::OpenAi,
            &chat_body(Shape::OpenAi, "r", "[cut] hi", true),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(!stream_text(Shape::OpenAi, &r.events()).is_empty());
    assert!(r.text.contains("error"), "{}", r.text);
    assert_eq!(model_calls(&gw.upstream), 0);

    b.fail_all(Some(429));
    let r = gw
        .client()
        .post(gw.url(Shape::OpenAi.gateway_path()))
        .bearer_auth(&gw.key.token)
        .header("x-metis-fallback", "off")
        .json(&chat_body(Shape::OpenAi, "r", "no fallback", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(model_calls(&gw.upstream), 0);
}

#[tokio::test]
async fn the_deadline_bounds_a_hanging_deployment_and_the_rpm_ceiling_moves_traffic_on() {
    // An upstream that accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_url = format!("http://{}/v1", hang.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = hang.accept().await {
            conns.push(c);
        }
    });
    let b = second_upstream().await;
    let routes = format!(
        r#"
[providers.hang]
kind = "openai"
base_url = "{hang_url}"
api_key = "k"

[[routes.slow]]
name = "hanging"
provider = "hang"
model = "gpt-5-mini"

[[routes.slow]]
name = "backup"
provider = "anthropic"
model = "claude-haiku-4-5"
priority = 1

[[routes.capped]]
name = "capped"
provider = "b"
model = "gpt-5-mini"
rpm = 2

[[routes.capped]]
name = "overflow"
provider = "anthropic"
model = "claude-haiku-4-5"
priority = 1
"#
    );
    let mut gw = gateway(&b, &routes, "[routing]\ndeadline_ms = 1500\n").await;
    let started = Instant::now();
    let r = gw
        .post(
            Shape::OpenAi,
            &chat_body(Shape::OpenAi, "slow", "hi", false),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{}", r.text);
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(
        model_calls(&gw.upstream),
        0,
        "no time was left for the backup"
    );

    for i in 0..3 {
        let r = gw
            .post(
                Shape::OpenAi,
                &chat_body(Shape::OpenAi, "capped", &format!("c{i}"), false),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(model_calls(&b), 2);
    assert_eq!(model_calls(&gw.upstream), 1);
    gw.stop().await.unwrap();
    held.abort();
    let last = gw.events_of("route.decided").unwrap().pop().unwrap();
    assert_eq!(last.payload["chain"][0]["verdict"], "skipped");
    assert!(
        last.payload["chain"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("rpm ceiling 2")
    );
}

/// An admin API call with the admin token: `(status, JSON body)`.
async fn admin(gw: &TestGateway, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = gw.client().request(method, gw.url(path)).bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn routes_set_through_the_admin_api_are_in_force_at_once_and_audited() {
    let b = second_upstream().await;
    let gw = gateway(&b, PRIMARY_AND_BACKUP, "").await;
    // A new alias over the second upstream.
    let (status, stored) = admin(
        &gw,
        Method::PUT,
        "/admin/v1/routes/r2",
        Some(serde_json::json!({"deployments": [{"provider": "b", "model": "gpt-5-mini"}]})),
    )
    .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["deployments"][0]["name"], "b:gpt-5-mini");
    assert_eq!(stored["deployments"][0]["weight"], 1);
    let r = gw
        .post(
            Shape::OpenAi,
            &chat_body(Shape::OpenAi, "r2", "via r2", false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(model_calls(&b), 1);
    let listed = gw
        .client()
        .get(gw.url("/v1/models"))
        .bearer_auth(&gw.key.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.contains("\"r2\""), "{listed}");
    let routes = admin_routes(&gw).await;
    let sources: Vec<(&str, &str)> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["alias"].as_str().unwrap(), r["source"].as_str().unwrap()))
        .collect();
    assert_eq!(sources, vec![("r", "config"), ("r2", "admin")]);

    // A provider this gateway does not have is refused, naming it.
    let (status, err) = admin(
        &gw,
        Method::PUT,
        "/admin/v1/routes/r3",
        Some(serde_json::json!({"deployments": [{"provider": "nope", "model": "m"}]})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(err.to_string().contains("provider 'nope'"), "{err}");

    // A stored route replaces the config file's route of its alias; deleting it brings the
    // config file's back.
    let (status, _) = admin(
        &gw,
        Method::PUT,
        "/admin/v1/routes/r",
        Some(serde_json::json!({"deployments": [
            {"name": "only-backup", "provider": "anthropic", "model": "claude-haiku-4-5"}
        ]})),
    )
    .await;
    assert_eq!(status, 200);
    let r = gw
        .post(
            Shape::OpenAi,
            &chat_body(Shape::OpenAi, "r", "overridden", false),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        model_calls(&b),
        1,
        "the stored route has no deployment on b"
    );
    let (status, _) = admin(&gw, Method::DELETE, "/admin/v1/routes/r", None).await;
    assert_eq!(status, 200);
    let r = gw
        .post(
            Shape::OpenAi,
            &chat_body(Shape::OpenAi, "r", "config again", false),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(model_calls(&b), 2, "the config file's primary is back");
    let (status, _) = admin(&gw, Method::DELETE, "/admin/v1/routes/r", None).await;
    assert_eq!(status, 404);

    let (_, audit) = admin(
        &gw,
        Method::GET,
        "/admin/v1/audit?since=2020-01-01T00:00:00Z&type=gateway.route_set&type=gateway.route_deleted",
        None,
    )
    .await;
    let events: Vec<(&str, &str)> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["payload"]["alias"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        events,
        vec![
            ("gateway.route_set", "r2"),
            ("gateway.route_set", "r"),
            ("gateway.route_deleted", "r")
        ],
        "{audit}"
    );
}

#[tokio::test]
async fn anthropic_direct_falls_back_to_bedrock_for_the_same_claude_model() {
    use metis_tests::fake_upstream::{Api, BEDROCK_ACCESS_KEY_ID, BEDROCK_SECRET_ACCESS_KEY};
    // Anthropic direct is overloaded (529 on every call); the same model on Bedrock (the
    // gateway's own fake, which verifies SigV4 and streams the binary event stream) is the
    // priority-1 fallback.
    let direct = second_upstream().await;
    direct.fail_all(Some(529));
    let routes = format!(
        r#"
[providers.anthropic-direct]
kind = "anthropic"
base_url = "{direct}"
api_key = "{UPSTREAM_ANTHROPIC_KEY}"

[providers.bedrock]
region = "us-east-1"
base_url = "{{fake_openai_url}}"
access_key_id = "{BEDROCK_ACCESS_KEY_ID}"
secret_access_key = "{BEDROCK_SECRET_ACCESS_KEY}"

[[routes.claude]]
name = "direct"
provider = "anthropic-direct"
model = "claude-haiku-4-5"

[[routes.claude]]
name = "bedrock"
provider = "bedrock"
model = "anthropic.claude-haiku-4-5-20251001-v1:0"
priority = 1
"#,
        direct = direct.base_url()
    );
    let mut gw = gateway(&direct, &routes, "").await;
    let r = gw
        .post(
            Shape::OpenAi,
            &chat_body(Shape::OpenAi, "claude", "sync via bedrock", false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        reply_text(Shape::OpenAi, &r.json()),
        "echo: sync via bedrock"
    );
    let r = gw
        .post(
            Shape::Anthropic,
            &chat_body(Shape::Anthropic, "claude", "streamed via bedrock", true),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        stream_text(Shape::Anthropic, &r.events()),
        "echo: streamed via bedrock"
    );
    assert_eq!(model_calls(&direct), 2);
    let converse = gw
        .upstream
        .requests()
        .into_iter()
        .filter(|r| matches!(r.api, Api::Converse | Api::ConverseStream))
        .count();
    assert_eq!(converse, 2);
    gw.stop().await.unwrap();
    assert_eq!(
        chains(&gw),
        vec![
            vec![pair("direct", "failed"), pair("bedrock", "chose")],
            vec![pair("direct", "failed"), pair("bedrock", "chose")],
        ]
    );
    for e in gw.events_of("llm.call_completed").unwrap() {
        assert_eq!(
            e.payload["model"],
            "bedrock:anthropic.claude-haiku-4-5-20251001-v1:0"
        );
        assert!(
            e.payload["cost_usd"].as_f64().unwrap() > 0.0,
            "{}",
            e.payload
        );
    }
}
