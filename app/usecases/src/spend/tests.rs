//! The spend guard against a shared store that goes down (`metis_ports::fakes::FakeSpendStore`)
//! and against the in-process ledger: the outage policies, the replay of settlements, and
//! that nothing is lost or charged twice.

use super::*;
use futures_util::future::BoxFuture;
use metis_domain::canonical::Usage;
use metis_domain::spend::SpendState;
use metis_ports::admission::SpendAdmission;
use metis_ports::fakes::{FakeOutage, FakeSpendStore};
use metis_ports::metrics::{Attribution, CallLabels, Metrics, QuotaRatio, ScrapeGauges};
use metis_ports::system::Background;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NOW: i64 = 1_790_000_000_000_000;
const CAL: metis_domain::time::Calendar = metis_domain::time::Calendar::CALENDAR_MONTH;

/// Background work collected, run when the test says (a deterministic runtime).
#[derive(Default)]
struct Collected(Mutex<Vec<BoxFuture<'static, ()>>>);

impl Background for Collected {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.0.lock().unwrap().push(task);
    }

    fn spawn_after(&self, _delay: Duration, task: BoxFuture<'static, ()>) {
        self.0.lock().unwrap().push(task);
    }
}

impl Collected {
    /// Run the tasks queued now (not those they start: a replay against a store that is down
    /// reschedules itself).
    async fn run_once(&self) {
        let tasks: Vec<_> = std::mem::take(&mut *self.0.lock().unwrap());
        for t in tasks {
            t.await;
        }
    }

    /// Run every task, and the tasks they start, until none is left (bounded).
    async fn run(&self) -> usize {
        let mut ran = 0;
        for _ in 0..100 {
            let tasks: Vec<_> = std::mem::take(&mut *self.0.lock().unwrap());
            if tasks.is_empty() {
                return ran;
            }
            for t in tasks {
                t.await;
                ran += 1;
            }
        }
        panic!("background work keeps rescheduling itself");
    }

    fn pending(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Counts the admission outage decisions; every other measurement is ignored.
#[derive(Default)]
struct Outages(Mutex<Vec<(String, String)>>);

impl Outages {
    fn count(&self, step: &str, decision: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, d)| s == step && d == decision)
            .count()
    }
}

impl Metrics for Outages {
    fn http_request(&self, _: &str, _: &str, _: u16, _: &str, _: f64) {}
    fn upstream_call(&self, _: &CallLabels<'_>, _: &str, _: f64) {}
    fn upstream_retries(&self, _: &CallLabels<'_>, _: u32) {}
    fn first_token(&self, _: &CallLabels<'_>, _: f64) {}
    fn usage(&self, _: &CallLabels<'_>, _: &Attribution<'_>, _: &Usage, _: f64) {}
    fn auth_failure(&self, _: &str) {}
    fn rate_limit(&self, _: &str, _: bool) {}
    fn quota_ratios(&self, _: &[QuotaRatio]) {}
    fn quota_event(&self, _: &str, _: &str) {}
    fn key_leak_suspected(&self) {}
    fn admission_outage(&self, step: &str, decision: &str) {
        self.0
            .lock()
            .unwrap()
            .push((step.to_owned(), decision.to_owned()));
    }
    fn inflight(&self, _: i64) {}
    fn streams(&self, _: i64) {}
    fn token_count(&self, _: &str) {}
    fn accept_error(&self, _: &str) {}
    fn refused(&self, _: &str) {}
    fn connections(&self, _: i64) {}
    fn connection_limit(&self, _: u64) {}
    fn inflight_body_bytes(&self, _: i64) {}
    fn render(&self, _: &ScrapeGauges) -> String {
        String::new()
    }
}

struct Rig {
    guard: Arc<SpendGuard>,
    store: FakeSpendStore,
    background: Arc<Collected>,
    metrics: Arc<Outages>,
}

fn rig(outage: OutagePolicy, known: SpendLedger) -> Rig {
    let store = FakeSpendStore::new();
    let background = Arc::new(Collected::default());
    let metrics = Arc::new(Outages::default());
    let guard = SpendGuard::new(SpendGuardParts {
        store: Arc::new(store.clone()),
        outage,
        known,
        metrics: Arc::clone(&metrics) as Arc<dyn Metrics>,
        background: Arc::clone(&background) as Arc<dyn Background>,
        process_nonce: 42,
        calendar: metis_domain::time::Calendar::default(),
    });
    Rig {
        guard,
        store,
        background,
        metrics,
    }
}

fn capped(daily: f64) -> Budget {
    Budget::key_only(
        "gk_capped",
        Caps {
            daily_usd: Some(daily),
            ..Caps::default()
        },
    )
}

fn uncapped() -> Budget {
    Budget::key_only("gk_free", Caps::default())
}

fn day(store: &FakeSpendStore, account: &str) -> f64 {
    store.stored(account).map_or(0.0, |s| s.day_usd)
}

#[tokio::test]
async fn fail_closed_refuses_capped_keys_while_the_store_is_down_and_never_uncapped_ones() {
    let r = rig(OutagePolicy::FailClosed, SpendLedger::default());
    r.store.set_outage(FakeOutage::Down);
    let refused = r.guard.check(&capped(1.0), NOW).await.unwrap_err();
    assert!(
        matches!(&refused, Refusal::Unavailable(e) if e.store == "spend store"),
        "{refused:?}"
    );
    assert!(matches!(
        r.guard.reserve(&capped(1.0), 0.1, NOW).await,
        Err(Refusal::Unavailable(_))
    ));
    assert_eq!(r.metrics.count("spend", "refused"), 2);
    // A key without caps is neither checked nor reserved: no store call, no refusal.
    let calls = r.store.calls();
    r.guard.check(&uncapped(), NOW).await.unwrap();
    let (mut hold, alerts) = r.guard.reserve(&uncapped(), 0.1, NOW).await.unwrap();
    assert!(alerts.is_empty());
    assert_eq!(
        r.store.calls(),
        calls,
        "no store call before the settlement"
    );
    // Its cost still reaches the store, once it answers again.
    hold.settle(0.05, NOW);
    // The window's coalesced settlement, then its store call (which fails and is kept).
    r.background.run_once().await;
    r.background.run_once().await;
    assert_eq!(r.guard.backlog(), 1, "kept for replay");
    assert_eq!(r.metrics.count("spend_settlement", "deferred"), 1);
    r.store.set_outage(FakeOutage::Up);
    r.background.run().await;
    assert_eq!(r.guard.backlog(), 0);
    assert!((day(&r.store, "gk_free") - 0.05).abs() < 1e-12);
    assert_eq!(r.metrics.count("spend_settlement", "replayed"), 1);
}

#[tokio::test]
async fn fail_open_admits_against_the_last_known_balance_and_settles_into_the_store_later() {
    let r = rig(OutagePolicy::FailOpen, SpendLedger::default());
    // While the store answers: 0.5 of a 1.00 cap spent, and learnt by this process.
    let (mut hold, _) = r.guard.reserve(&capped(1.0), 0.5, NOW).await.unwrap();
    hold.settle(0.5, NOW);
    r.background.run().await;
    assert!((day(&r.store, "gk_capped") - 0.5).abs() < 1e-12);

    r.store.set_outage(FakeOutage::Down);
    r.guard.check(&capped(1.0), NOW).await.unwrap();
    let (mut local, _) = r.guard.reserve(&capped(1.0), 0.3, NOW).await.unwrap();
    // 0.5 spent + 0.3 held locally: the next 0.3 passes (0.8 < 1.0), then the cap holds.
    let (mut second, _) = r.guard.reserve(&capped(1.0), 0.3, NOW).await.unwrap();
    let refused = r.guard.reserve(&capped(1.0), 0.3, NOW).await.unwrap_err();
    assert!(
        matches!(&refused, Refusal::Exceeded(e) if e.scope == "key_daily"),
        "the last known balance is enforced: {refused:?}"
    );
    assert_eq!(r.metrics.count("spend", "local"), 4);
    assert_eq!(r.metrics.count("spend", "refused"), 0);
    local.settle(0.2, NOW);
    second.settle(0.0, NOW);
    assert_eq!(
        r.guard.backlog(),
        1,
        "a zero-cost local hold needs no replay"
    );
    assert!(
        (day(&r.store, "gk_capped") - 0.5).abs() < 1e-12,
        "the store is down: nothing reached it yet"
    );

    r.store.set_outage(FakeOutage::Up);
    r.background.run().await;
    assert_eq!(r.guard.backlog(), 0);
    let stored = r.store.stored("gk_capped").unwrap();
    assert!(
        (stored.day_usd - 0.7).abs() < 1e-12 && stored.reserved_usd == 0.0,
        "charged once, and the outage holds were never reserved in the store: {stored:?}"
    );
}

#[tokio::test]
async fn a_settlement_whose_answer_was_lost_is_replayed_without_a_second_charge() {
    let r = rig(OutagePolicy::FailClosed, SpendLedger::default());
    let (mut hold, _) = r.guard.reserve(&capped(10.0), 1.0, NOW).await.unwrap();
    r.store.set_outage(FakeOutage::AnswersLost);
    hold.settle(0.4, NOW);
    r.background.run_once().await;
    assert_eq!(
        r.guard.backlog(),
        1,
        "the answer was lost: the guard cannot know"
    );
    r.store.set_outage(FakeOutage::Up);
    r.background.run().await;
    assert_eq!(r.guard.backlog(), 0);
    let stored = r.store.stored("gk_capped").unwrap();
    assert!(
        (stored.day_usd - 0.4).abs() < 1e-12 && stored.reserved_usd == 0.0,
        "applied once: {stored:?}"
    );
}

#[tokio::test]
async fn a_dropped_hold_releases_its_reservation_in_the_store() {
    let r = rig(OutagePolicy::FailClosed, SpendLedger::default());
    let (hold, _) = r.guard.reserve(&capped(1.0), 1.0, NOW).await.unwrap();
    assert!(
        matches!(
            r.guard.reserve(&capped(1.0), 0.2, NOW).await,
            Err(Refusal::Exceeded(_))
        ),
        "1.00 held"
    );
    drop(hold);
    r.background.run().await;
    assert_eq!(r.store.stored("gk_capped").unwrap().reserved_usd, 0.0);
    assert!(r.guard.reserve(&capped(1.0), 0.2, NOW).await.is_ok());
}

#[tokio::test]
async fn fail_open_decides_an_unseen_account_on_the_spend_this_process_started_with() {
    let known = SpendLedger::default();
    let mut at_start = SpendState::new(NOW, CAL);
    at_start.day_usd = 0.95;
    known.put(&Arc::from("gk_capped"), at_start);
    let r = rig(OutagePolicy::FailOpen, known);
    r.store.set_outage(FakeOutage::Down);
    let held = r.guard.reserve(&capped(1.0), 0.1, NOW).await;
    assert!(held.is_ok(), "0.95 < 1.00");
    assert!(
        matches!(
            r.guard.check(&capped(1.0), NOW).await,
            Err(Refusal::Exceeded(_))
        ),
        "0.95 spent at start + 0.1 held reach the 1.00 cap"
    );
}

#[tokio::test]
async fn the_backlog_is_bounded_and_counts_what_it_drops() {
    // Holds admitted during an outage (fail-open) each wait for the store with their cost.
    let r = rig(OutagePolicy::FailOpen, SpendLedger::default());
    r.store.set_outage(FakeOutage::Down);
    for _ in 0..=MAX_BACKLOG {
        let (mut hold, _) = r.guard.reserve(&capped(1e12), 0.0, NOW).await.unwrap();
        hold.settle(0.01, NOW);
    }
    assert_eq!(r.guard.backlog(), MAX_BACKLOG);
    assert_eq!(r.metrics.count("spend_settlement", "dropped"), 1);
}

#[tokio::test]
async fn the_in_process_ledger_answers_inline_with_no_background_work() {
    let background = Arc::new(Collected::default());
    let ledger = Arc::new(SpendLedger::default());
    let guard = SpendGuard::new(SpendGuardParts {
        store: Arc::clone(&ledger) as Arc<dyn SpendAdmission>,
        outage: OutagePolicy::FailClosed,
        known: SpendLedger::default(),
        metrics: Arc::new(Outages::default()),
        background: Arc::clone(&background) as Arc<dyn Background>,
        process_nonce: 1,
        calendar: metis_domain::time::Calendar::default(),
    });
    let (mut hold, _) = guard.reserve(&capped(1.0), 0.4, NOW).await.unwrap();
    assert!((ledger.snapshot("gk_capped", CAL, NOW).reserved_usd - 0.4).abs() < 1e-12);
    hold.settle(0.25, NOW);
    let (mut free, _) = guard.reserve(&uncapped(), 0.4, NOW).await.unwrap();
    assert_eq!(ledger.snapshot("gk_free", CAL, NOW).reserved_usd, 0.0);
    free.settle(0.5, NOW);
    assert_eq!(background.pending(), 0, "nothing was spawned");
    let s = ledger.snapshot("gk_capped", CAL, NOW);
    assert!((s.day_usd - 0.25).abs() < 1e-12 && s.reserved_usd == 0.0);
    assert!((guard.known_balance("gk_free", NOW).day_usd - 0.5).abs() < 1e-12);
    assert!((guard.balance("gk_free", NOW).await.day_usd - 0.5).abs() < 1e-12);
    assert_eq!(guard.flush().await, 0);
}

#[tokio::test]
async fn charges_of_keys_without_caps_reach_a_shared_store_summed_once_per_window() {
    let r = rig(OutagePolicy::FailClosed, SpendLedger::default());
    let before = r.store.calls();
    for _ in 0..500 {
        let (mut hold, _) = r.guard.reserve(&uncapped(), 0.5, NOW).await.unwrap();
        hold.settle(0.01, NOW);
    }
    assert_eq!(
        r.store.calls(),
        before,
        "nothing reaches the store per request"
    );
    r.background.run().await;
    assert_eq!(
        r.store.calls() - before,
        1,
        "one settlement carries the window's sum"
    );
    let stored = r.store.stored("gk_free").unwrap();
    assert!((stored.day_usd - 5.0).abs() < 1e-9, "{stored:?}");

    // Shutdown flushes what waits.
    let (mut hold, _) = r.guard.reserve(&uncapped(), 0.5, NOW).await.unwrap();
    hold.settle(0.25, NOW);
    assert_eq!(r.guard.flush().await, 0);
    let stored = r.store.stored("gk_free").unwrap();
    assert!((stored.day_usd - 5.25).abs() < 1e-9, "{stored:?}");
}

/// A key without caps of its own whose team has a budget is capped: it goes through the
/// store, its hold is on the team line only, and its settlement charges both accounts.
#[tokio::test]
async fn a_scope_cap_makes_a_budget_capped_and_the_settlement_charges_every_line() {
    use metis_domain::budgets::ScopeKind;
    use metis_domain::spend::BudgetLine;
    let r = rig(OutagePolicy::FailClosed, SpendLedger::default());
    let budget = Budget {
        lines: Arc::new([
            BudgetLine {
                kind: ScopeKind::Key,
                account: Arc::from("gk_team"),
                caps: Caps::default(),
            },
            BudgetLine {
                kind: ScopeKind::Team,
                account: Arc::from("team:t"),
                caps: Caps {
                    monthly_usd: Some(1.0),
                    ..Caps::default()
                },
            },
        ]),
    };
    let (mut hold, _) = r.guard.reserve(&budget, 1.0, NOW).await.unwrap();
    assert!((r.store.stored("team:t").unwrap().reserved_usd - 1.0).abs() < 1e-12);
    assert_eq!(r.store.stored("gk_team").unwrap().reserved_usd, 0.0);
    let refused = r.guard.reserve(&budget, 0.1, NOW).await;
    assert!(
        matches!(&refused, Err(Refusal::Exceeded(e)) if e.scope == "team_monthly"),
        "1.00 held on the team line: {refused:?}"
    );
    hold.settle(0.4, NOW);
    r.background.run().await;
    let team = r.store.stored("team:t").unwrap();
    let key = r.store.stored("gk_team").unwrap();
    assert_eq!(team.reserved_usd, 0.0);
    assert!((team.month_usd - 0.4).abs() < 1e-12 && (key.month_usd - 0.4).abs() < 1e-12);
    // While the store is down the team cap cannot be checked: refused under fail-closed.
    r.store.set_outage(FakeOutage::Down);
    assert!(matches!(
        r.guard.check(&budget, NOW).await,
        Err(Refusal::Unavailable(_))
    ));
}
