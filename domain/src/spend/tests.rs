use super::*;
use crate::budgets::Policies;
use proptest::prelude::*;

/// 2026-09-21T14:13:20Z (a Monday).
const NOW: Timestamp = 1_790_000_000_000_000;
const DAY: Timestamp = 86_400_000_000;
const CAL: Calendar = Calendar::CALENDAR_MONTH;

fn daily(d: f64) -> Caps {
    Caps {
        daily_usd: Some(d),
        ..Caps::default()
    }
}

fn line(kind: ScopeKind, account: &str, caps: Caps) -> BudgetLine {
    BudgetLine {
        kind,
        account: Arc::from(account),
        caps,
    }
}

fn one(caps: Caps) -> Vec<BudgetLine> {
    vec![line(ScopeKind::Key, "gk_a", caps)]
}

fn fresh(n: usize) -> Vec<SpendState> {
    vec![SpendState::new(NOW, CAL); n]
}

#[test]
fn reservations_bound_concurrent_overshoot_to_one_request() {
    let lines = one(daily(1.0));
    let mut s = fresh(1);
    let admitted = (0..100)
        .filter(|_| reserve(&lines, &mut s, 0.3, CAL, NOW).is_ok())
        .count();
    assert_eq!(admitted, 4); // 0, 0.3, 0.6, 0.9 < 1.0
    for _ in 0..admitted {
        settle(&lines, &mut s, 0.3, 0.3, CAL, NOW);
    }
    assert!((s[0].day_usd - 1.2).abs() < 1e-9 && s[0].reserved_usd == 0.0);
    assert_eq!(
        check(&lines, &mut s, CAL, NOW).unwrap_err().scope,
        KEY_DAILY
    );
}

#[test]
fn a_budget_without_caps_is_never_refused_and_holds_nothing_but_is_charged() {
    let lines = vec![
        line(ScopeKind::Key, "gk_a", Caps::default()),
        line(ScopeKind::Team, "team:t", Caps::default()),
    ];
    let mut s = fresh(2);
    for _ in 0..10 {
        reserve(&lines, &mut s, 1e6, CAL, NOW).unwrap();
    }
    assert_eq!((s[0].reserved_usd, s[1].reserved_usd), (0.0, 0.0));
    settle(&lines, &mut s, 0.0, 2.0, CAL, NOW);
    assert_eq!((s[0].month_usd, s[1].month_usd), (2.0, 2.0));
}

#[test]
fn the_first_refusing_line_in_scope_order_is_named_with_its_spend() {
    let lines = vec![
        line(ScopeKind::Key, "gk_a", daily(10.0)),
        line(ScopeKind::User, "user:u", daily(5.0)),
        line(
            ScopeKind::Team,
            "team:t",
            Caps {
                monthly_usd: Some(3.0),
                ..Caps::default()
            },
        ),
    ];
    let mut s = fresh(3);
    s[1].day_usd = 5.0;
    s[2].month_usd = 3.5;
    let e = check(&lines, &mut s, CAL, NOW).unwrap_err();
    assert_eq!((e.scope, e.kind), ("user_daily", ScopeKind::User));
    assert_eq!(
        (&*e.account, e.limit_usd, e.current_usd),
        ("user:u", 5.0, 5.0)
    );
    s[1].day_usd = 1.0;
    let e = reserve(&lines, &mut s, 0.1, CAL, NOW).unwrap_err();
    assert_eq!(e.scope, "team_monthly");
    assert!(
        s.iter().all(|x| x.reserved_usd == 0.0),
        "a refusal holds nothing on any line"
    );
}

#[test]
fn a_hold_is_made_on_every_capped_line_and_released_exactly_on_settle() {
    let lines = vec![
        line(ScopeKind::Key, "gk_a", Caps::default()),
        line(ScopeKind::User, "user:u", daily(5.0)),
        line(
            ScopeKind::Team,
            "team:t",
            Caps {
                weekly_usd: Some(50.0),
                ..Caps::default()
            },
        ),
    ];
    let mut s = fresh(3);
    reserve(&lines, &mut s, 0.4, CAL, NOW).unwrap();
    assert_eq!(
        s.iter().map(|x| x.reserved_usd).collect::<Vec<_>>(),
        [0.0, 0.4, 0.4]
    );
    settle(&lines, &mut s, 0.4, 0.1, CAL, NOW);
    for x in &s {
        assert_eq!(x.reserved_usd, 0.0);
        assert!((x.day_usd - 0.1).abs() < 1e-12 && (x.week_usd - 0.1).abs() < 1e-12);
    }
}

#[test]
fn alerts_fire_once_per_level_and_window_up_to_exhausted_on_refusal() {
    let lines = one(daily(1.0));
    let mut s = fresh(1);
    s[0].settle(0.0, 0.85, NOW, CAL);
    let alerts = check(&lines, &mut s, CAL, NOW).unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].scope, alerts[0].severity, alerts[0].level),
        (KEY_DAILY, "warning", 80)
    );
    assert!(check(&lines, &mut s, CAL, NOW).unwrap().is_empty(), "once");
    s[0].settle(0.0, 0.12, NOW, CAL);
    let alerts = check(&lines, &mut s, CAL, NOW).unwrap();
    assert_eq!((alerts.len(), alerts[0].severity), (1, "critical"));
    s[0].settle(0.0, 0.05, NOW, CAL);
    // At the cap: refused, and the refusal raises the 100 % alert (once).
    let e = check(&lines, &mut s, CAL, NOW).unwrap_err();
    assert_eq!(e.alerts.len(), 1);
    assert_eq!(
        (e.alerts[0].level, e.alerts[0].severity),
        (100, "exhausted")
    );
    assert!(
        check(&lines, &mut s, CAL, NOW)
            .unwrap_err()
            .alerts
            .is_empty()
    );
    // Next day: spend and alert marks start over.
    s[0].roll(NOW + DAY, CAL);
    assert_eq!((s[0].day_usd, s[0].alerted), (0.0, 0));
}

#[test]
fn a_jump_past_two_levels_raises_the_highest_once() {
    let lines = one(daily(1.0));
    let mut s = fresh(1);
    s[0].settle(0.0, 0.97, NOW, CAL);
    let alerts = check(&lines, &mut s, CAL, NOW).unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].level, 95);
    assert!(check(&lines, &mut s, CAL, NOW).unwrap().is_empty());
}

#[test]
fn custom_levels_and_scope_alerts_name_their_line() {
    let mut caps = Caps {
        monthly_usd: Some(100.0),
        ..Caps::default()
    };
    caps.alert_at = AlertLevels::of(Some(&[50, 90]));
    let lines = vec![
        line(ScopeKind::Key, "gk_a", Caps::default()),
        line(ScopeKind::Team, "team:t", caps),
    ];
    let mut s = fresh(2);
    s[1].settle(0.0, 60.0, NOW, CAL);
    let alerts = check(&lines, &mut s, CAL, NOW).unwrap();
    assert_eq!(alerts.len(), 1);
    let a = &alerts[0];
    assert_eq!(
        (a.scope, a.kind, &*a.account, a.level),
        ("team_monthly", ScopeKind::Team, "team:t", 50)
    );
    assert!((a.ratio - 0.6).abs() < 1e-12);
    // Bad levels (hand-edited store) fall back to the defaults.
    assert_eq!(
        AlertLevels::of(Some(&[90, 80])).as_slice(),
        &DEFAULT_ALERT_LEVELS
    );
}

#[test]
fn windows_roll_over_and_never_back() {
    let mut s = SpendState::new(NOW, CAL);
    s.settle(0.0, 2.0, NOW, CAL);
    s.roll(NOW - DAY, CAL);
    assert_eq!(s.day_usd, 2.0, "an earlier time moves nothing");
    s.roll(NOW + DAY, CAL);
    assert_eq!((s.day_usd, s.week_usd, s.month_usd), (0.0, 2.0, 2.0));
    s.roll(NOW + 7 * DAY, CAL);
    assert_eq!(
        (s.week_usd, s.month_usd),
        (0.0, 2.0),
        "next Monday, same month"
    );
    s.roll(NOW + 40 * DAY, CAL);
    assert_eq!((s.day_usd, s.week_usd, s.month_usd), (0.0, 0.0, 0.0));
}

#[test]
fn a_month_start_day_moves_the_monthly_window() {
    // NOW is 2026-09-21: with months starting on the 22nd, tomorrow is a new month.
    let cal = Calendar::new(22).unwrap();
    let mut s = SpendState::new(NOW, cal);
    s.settle(0.0, 3.0, NOW, cal);
    s.roll(NOW + DAY, cal);
    assert_eq!(s.month_usd, 0.0);
    let mut calendar_month = SpendState::new(NOW, CAL);
    calendar_month.settle(0.0, 3.0, NOW, CAL);
    calendar_month.roll(NOW + DAY, CAL);
    assert_eq!(calendar_month.month_usd, 3.0);
}

#[test]
fn a_settlement_replayed_after_its_day_charges_only_the_windows_still_current() {
    let lines = one(daily(10.0));
    let mut s = fresh(1);
    reserve(&lines, &mut s, 1.0, CAL, NOW).unwrap();
    s[0].roll(NOW + DAY, CAL);
    settle(&lines, &mut s, 1.0, 0.5, CAL, NOW);
    assert_eq!(s[0].reserved_usd, 0.0);
    assert_eq!(s[0].day_usd, 0.0, "yesterday's cost is not today's");
    assert_eq!(
        (s[0].week_usd, s[0].month_usd),
        (0.5, 0.5),
        "same week and month"
    );
}

#[test]
fn release_never_goes_below_zero_and_ignores_bad_amounts() {
    let mut s = SpendState::new(NOW, CAL);
    s.reserved_usd = 0.2;
    s.release(f64::NAN);
    assert!((s.reserved_usd - 0.2).abs() < 1e-12);
    s.release(5.0);
    assert_eq!(s.reserved_usd, 0.0);
    assert_eq!(hold_amount(-1.0), 0.0);
    assert_eq!(hold_amount(f64::INFINITY), 0.0);
}

fn key(json: &str) -> KeyRecord {
    serde_json::from_str(json).unwrap()
}

#[test]
fn a_key_s_budget_has_a_line_per_tag_capped_by_its_policy() {
    let k = key(
        r#"{"key_id":"gk_1","secret_hash":"00","workspace_path":"/w","user_id":"ann",
            "team_id":"platform","org_id":"acme","daily_cap_usd":"2","weekly_cap_usd":"5",
            "alert_at":[50]}"#,
    );
    let policies: Policies = serde_json::from_value(serde_json::json!({
        "budgets": [{"scope": "team", "id": "platform", "monthly_usd": "100"},
                    {"scope": "team", "id": "other", "monthly_usd": "1"}]
    }))
    .unwrap();
    let b = Budget::for_key(&k, &PolicyIndex::new(&policies));
    let shape: Vec<_> = b.lines.iter().map(|l| (l.kind, &*l.account)).collect();
    assert_eq!(
        shape,
        [
            (ScopeKind::Key, "gk_1"),
            (ScopeKind::User, "user:ann"),
            (ScopeKind::Team, "team:platform"),
            (ScopeKind::Org, "org:acme"),
        ]
    );
    assert_eq!(b.lines[0].caps.weekly_usd, Some(5.0));
    assert_eq!(b.lines[0].caps.alert_at.as_slice(), &[50]);
    assert!(
        b.lines[1].caps.is_empty(),
        "no user budget: charged, not capped"
    );
    assert_eq!(b.lines[2].caps.monthly_usd, Some(100.0));
    assert!(b.is_capped());
    let bare = key(r#"{"key_id":"gk_2","secret_hash":"01","workspace_path":"/w"}"#);
    let b = Budget::for_key(&bare, &PolicyIndex::default());
    assert_eq!(b.lines.len(), 1);
    assert!(!b.is_capped());
}

fn caps_of(d: Option<f64>, w: Option<f64>, m: Option<f64>) -> Caps {
    Caps {
        daily_usd: d,
        weekly_usd: w,
        monthly_usd: m,
        ..Caps::default()
    }
}

proptest! {
    /// Whatever the interleaving of reservations, settlements and releases across budgets
    /// sharing lines, no line's settled spend plus reservations passes any of its caps by more
    /// than one request's worth; a refusal holds nothing on any line.
    #[test]
    fn no_line_passes_a_cap_by_more_than_one_request(
        caps in proptest::collection::vec(
            (proptest::option::of(0.05f64..5.0), proptest::option::of(0.05f64..10.0), proptest::option::of(0.05f64..20.0)),
            4,
        ),
        ops in proptest::collection::vec((0usize..3, 0.0f64..2.0, 0.0f64..1.0, any::<bool>()), 1..300),
    ) {
        // Accounts: 0 = key a, 1 = key b, 2 = user, 3 = team. Budgets: key a + user + team,
        // key b + team, key a + team (a budget set changed by a reload).
        let accounts = ["gk_a", "gk_b", "user:u", "team:t"];
        let kinds = [ScopeKind::Key, ScopeKind::Key, ScopeKind::User, ScopeKind::Team];
        let mk = |i: usize| line(kinds[i], accounts[i], caps_of(caps[i].0, caps[i].1, caps[i].2));
        let budgets: [Vec<usize>; 3] = [vec![0, 2, 3], vec![1, 3], vec![0, 3]];
        let mut states = [SpendState::new(NOW, CAL); 4];
        let mut held: Vec<(usize, f64)> = Vec::new();
        let mut largest = 0.0f64;
        for (which, estimate, fraction, settle_one) in ops {
            let idx = &budgets[which];
            let lines: Vec<BudgetLine> = idx.iter().map(|&i| mk(i)).collect();
            let mut st: Vec<SpendState> = idx.iter().map(|&i| states[i]).collect();
            let before = st.clone();
            match reserve(&lines, &mut st, estimate, CAL, NOW) {
                Ok(_) => {
                    held.push((which, estimate));
                    largest = largest.max(estimate);
                }
                Err(_) => {
                    for (a, b) in st.iter().zip(&before) {
                        prop_assert_eq!(a.reserved_usd, b.reserved_usd);
                    }
                }
            }
            for (k, &i) in idx.iter().enumerate() { states[i] = st[k]; }
            if settle_one && let Some((w, r)) = held.pop() {
                let idx = &budgets[w];
                let lines: Vec<BudgetLine> = idx.iter().map(|&i| mk(i)).collect();
                let mut st: Vec<SpendState> = idx.iter().map(|&i| states[i]).collect();
                // The actual cost is at most the reservation (the estimate is worst-case).
                settle(&lines, &mut st, r, r * fraction, CAL, NOW);
                for (k, &i) in idx.iter().enumerate() { states[i] = st[k]; }
            }
            for (i, s) in states.iter().enumerate() {
                for w in WINDOWS {
                    if let Some(cap) = mk(i).caps.cap(w) {
                        prop_assert!(s.spent(w) + s.reserved_usd < cap + largest + 1e-9,
                            "{} {:?}: {} + {} vs cap {}", accounts[i], w, s.spent(w), s.reserved_usd, cap);
                    }
                }
                prop_assert!(s.reserved_usd >= 0.0);
            }
        }
        // Every hold settled: nothing stays reserved anywhere.
        while let Some((w, r)) = held.pop() {
            let idx = &budgets[w];
            let lines: Vec<BudgetLine> = idx.iter().map(|&i| mk(i)).collect();
            let mut st: Vec<SpendState> = idx.iter().map(|&i| states[i]).collect();
            settle(&lines, &mut st, r, 0.0, CAL, NOW);
            for (k, &i) in idx.iter().enumerate() { states[i] = st[k]; }
        }
        for s in &states {
            prop_assert!(s.reserved_usd.abs() < 1e-6, "{:?}", s);
        }
    }
}
