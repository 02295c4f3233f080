use super::*;
use metis_domain::budgets::ScopeKind;

#[derive(Default)]
struct Recorded {
    outcomes: Mutex<Vec<(String, String, Outcome)>>,
    depth: Mutex<i64>,
}

impl DeliveryReport for Recorded {
    fn outcome(&self, notice: &AlertNotice, endpoint: &str, outcome: &Outcome) {
        lock(&self.outcomes).push((notice.id.clone(), endpoint.to_owned(), outcome.clone()));
    }
    fn queue_depth(&self, delta: i64) {
        *lock(&self.depth) += delta;
    }
    fn retrying(&self, _: &AlertNotice, _: &str, _: u32, _: &str, _: Duration) {}
}

fn notice(id: &str) -> AlertNotice {
    AlertNotice {
        id: id.to_owned(),
        kind: metis_domain::alerts::NOTICE_TYPE,
        raised_at: "2026-12-07T00:00:00+00:00".to_owned(),
        cap: "key_daily",
        scope: metis_domain::alerts::NoticeScope {
            kind: ScopeKind::Key,
            id: "gk_a".to_owned(),
            account: "gk_a".to_owned(),
        },
        window: "day",
        level_percent: 80,
        severity: "warning",
        limit_usd: "1.00".to_owned(),
        current_usd: "0.80".to_owned(),
        ratio: 0.8,
        gateway_key_id: Some("gk_a".to_owned()),
        user_id: None,
        team_id: None,
        customer_id: None,
        org_id: None,
    }
}

fn config(urls: &[&str]) -> WebhookConfig {
    WebhookConfig {
        urls: urls.iter().map(|u| (*u).to_owned()).collect(),
        secret: "0123456789abcdef".to_owned(),
        timeout: Duration::from_secs(30),
        max_attempts: 3,
        allow_http: false,
        queue_capacity: 2,
        backoff: Backoff::default(),
    }
}

#[test]
fn urls_are_checked_and_labelled_without_credentials_or_path() {
    let eps = endpoints(
        &[
            "https://user:pw@hooks.example.com/services/T0/B0/SECRET?token=x".to_owned(),
            "http://127.0.0.1:9000/hook".to_owned(),
            "http://localhost/hook".to_owned(),
        ],
        false,
    )
    .unwrap();
    let labels: Vec<&str> = eps.iter().map(|e| e.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "#1 https://hooks.example.com",
            "#2 http://127.0.0.1:9000",
            "#3 http://localhost"
        ]
    );
    let err = endpoints(
        &["http://hooks.example.com/x?token=SECRET".to_owned()],
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("loopback") && !err.contains("SECRET"), "{err}");
    assert!(endpoints(&["http://hooks.example.com/x".to_owned()], true).is_ok());
    let err = endpoints(&["ftp://h/x".to_owned()], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("scheme"), "{err}");
    assert!(endpoints(&["not a url".to_owned()], false).is_err());
}

#[tokio::test]
async fn a_short_secret_and_zero_attempts_are_refused() {
    let report: Arc<dyn DeliveryReport> = Arc::new(Recorded::default());
    let mut c = config(&["https://hooks.example.com/x"]);
    c.secret = "short".to_owned();
    let err = Webhooks::start(c, Arc::clone(&report)).unwrap_err();
    assert_eq!(err, ConfigError::Secret(5));
    assert!(!err.to_string().contains("short"));
    let mut c = config(&["https://hooks.example.com/x"]);
    c.max_attempts = 0;
    assert_eq!(
        Webhooks::start(c, report).unwrap_err(),
        ConfigError::Attempts
    );
}

/// A receiver that accepts connections and never answers: the lane is stuck on its first
/// alert, so the queue fills; the oldest waiting alert is dropped (never the caller blocked),
/// and the drain reports what is left as dropped at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_and_shutdown_reports_the_rest() {
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hang.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = hang.accept().await {
            conns.push(c);
        }
    });
    let report = Arc::new(Recorded::default());
    let url = format!("http://{addr}/hook");
    let hooks = Webhooks::start(config(&[&url]), report.clone()).unwrap();
    hooks.notify(notice("a1"));
    // Let the lane take a1 before the others arrive.
    for _ in 0..100 {
        if lock(&hooks.shared.lanes[0].current).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    for id in ["a2", "a3", "a4"] {
        hooks.notify(notice(id));
    }
    let enqueue = started.elapsed();
    let outcomes = lock(&report.outcomes).clone();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].0, "a2");
    assert_eq!(
        outcomes[0].2,
        Outcome::Undelivered {
            reason: "queue_full",
            attempts: 0,
            last_error: None
        }
    );
    assert_eq!(*lock(&report.depth), 2);
    let dropped = hooks.drain(Duration::from_millis(200)).await;
    assert_eq!(dropped, 3);
    let ids: Vec<(String, &'static str)> = lock(&report.outcomes)
        .iter()
        .map(|(id, _, o)| (id.clone(), o.label()))
        .collect();
    assert_eq!(
        ids,
        [
            ("a2".to_owned(), "queue_full"),
            ("a1".to_owned(), "shutdown"),
            ("a3".to_owned(), "shutdown"),
            ("a4".to_owned(), "shutdown"),
        ]
    );
    assert_eq!(*lock(&report.depth), 0);
    // After the drain, a new alert is reported at once.
    hooks.notify(notice("a5"));
    assert_eq!(
        lock(&report.outcomes).last().map(|o| o.2.label()),
        Some("shutdown")
    );
    eprintln!("3 notifies onto a stuck lane took {enqueue:?}");
    held.abort();
}
