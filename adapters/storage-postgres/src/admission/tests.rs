use super::*;
use crate::scratch::ScratchDatabase;
use metis_domain::spend::Caps;

const NOW: Timestamp = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

const CAL: Calendar = Calendar::CALENDAR_MONTH;

fn budget(account: &str, daily: f64) -> Budget {
    Budget::key_only(
        account,
        Caps {
            daily_usd: Some(daily),
            ..Caps::default()
        },
    )
}

fn setup() -> Result<(ScratchDatabase, Db), DbError> {
    let scratch = ScratchDatabase::from_env()?;
    let db = Db::new(scratch.config().clone())?;
    let m = db.clone();
    db.block_on(async move { migrate(&m).await })?;
    Ok((scratch, db))
}

fn stopped(e: StoreUnavailable) -> DbError {
    DbError::Stopped(e.to_string())
}

#[test]
fn a_dead_replica_s_holds_come_back_after_the_lease() -> Result<(), DbError> {
    let (_scratch, db) = setup()?;
    let store = PgSpendAdmission::new(db.clone());
    let d = db.clone();
    let (held, after) = db.block_on(async move {
        let b = budget("acct", 1.0);
        let held = store
            .reserve(HoldId(1), &b, 0.9, CAL, NOW)
            .get()
            .await
            .map_err(stopped)?;
        // The replica that held it dies; its lease runs out.
        d.get()
            .await?
            .execute(
                "UPDATE spend_holds SET expires_at = now() - interval '1 second'",
                &[],
            )
            .await?;
        let after = store.check(&b, CAL, NOW).get().await.map_err(stopped)?;
        Ok((held, after))
    })?;
    assert!(held.verdict.is_ok());
    assert!((held.balances[0].1.reserved_usd - 0.9).abs() < 1e-9);
    assert!(
        after.verdict.is_ok(),
        "the expired hold no longer blocks the cap"
    );
    assert!(after.balances[0].1.reserved_usd.abs() < 1e-9);
    Ok(())
}

#[test]
fn seeding_takes_only_accounts_the_store_has_never_seen() -> Result<(), DbError> {
    let (_scratch, db) = setup()?;
    let store = PgSpendAdmission::new(db.clone());
    let (seeded, known, fresh) = db.block_on(async move {
        store
            .settle(&Settlement {
                id: HoldId(7),
                budget: Budget::key_only("known", Caps::default()),
                reserved_usd: 0.0,
                cost_usd: 2.0,
                at: NOW,
                calendar: CAL,
            })
            .get()
            .await
            .map_err(stopped)?;
        let mut trace = SpendState::new(NOW, CAL);
        trace.day_usd = 5.0;
        trace.month_usd = 5.0;
        let seeded = store
            .seed(&[(Arc::from("known"), trace), (Arc::from("fresh"), trace)])
            .await
            .map_err(stopped)?;
        let known = store
            .balance("known", CAL, NOW)
            .get()
            .await
            .map_err(stopped)?;
        let fresh = store
            .balance("fresh", CAL, NOW)
            .get()
            .await
            .map_err(stopped)?;
        Ok((seeded, known, fresh))
    })?;
    assert_eq!(seeded, 1);
    assert!(
        (known.day_usd - 2.0).abs() < 1e-9,
        "the store's own balance wins"
    );
    assert!((fresh.day_usd - 5.0).abs() < 1e-9);
    Ok(())
}

fn team_budget(key: &str, key_daily: Option<f64>, team_monthly: f64) -> Budget {
    use metis_domain::budgets::ScopeKind;
    use metis_domain::spend::BudgetLine;
    Budget {
        lines: Arc::new([
            BudgetLine {
                kind: ScopeKind::Key,
                account: Arc::from(key),
                caps: Caps {
                    daily_usd: key_daily,
                    ..Caps::default()
                },
            },
            BudgetLine {
                kind: ScopeKind::Team,
                account: Arc::from("team:t"),
                caps: Caps {
                    monthly_usd: Some(team_monthly),
                    ..Caps::default()
                },
            },
        ]),
    }
}

/// A hold is one row per capped line; the settlement releases each and charges every
/// line, once.
#[test]
fn holds_are_per_capped_line_and_a_settlement_releases_each_once() -> Result<(), DbError> {
    let (_scratch, db) = setup()?;
    let store = PgSpendAdmission::new(db.clone());
    let d = db.clone();
    let (rows, refused, after, again) = db.block_on(async move {
        let b = team_budget("gk_1", None, 1.0);
        let held = store
            .reserve(HoldId(1), &b, 1.0, CAL, NOW)
            .get()
            .await
            .map_err(stopped)?;
        assert!(held.verdict.is_ok());
        let rows: Vec<(String, f64)> = d
            .get()
            .await?
            .query(
                "SELECT account, amount_usd FROM spend_holds ORDER BY account",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let other = team_budget("gk_2", Some(5.0), 1.0);
        let refused = store
            .reserve(HoldId(2), &other, 0.1, CAL, NOW)
            .get()
            .await
            .map_err(stopped)?;
        let s = Settlement {
            id: HoldId(1),
            budget: b,
            reserved_usd: 1.0,
            cost_usd: 0.25,
            at: NOW,
            calendar: CAL,
        };
        let after = store.settle(&s).get().await.map_err(stopped)?;
        let again = store.settle(&s).get().await.map_err(stopped)?;
        Ok((rows, refused, after, again))
    })?;
    assert_eq!(
        rows,
        [("team:t".to_owned(), 1.0)],
        "the uncapped key line holds nothing"
    );
    let e = refused.verdict.unwrap_err();
    assert_eq!(
        e.scope, "team_monthly",
        "another key of the team is refused"
    );
    assert!(
        refused
            .balances
            .iter()
            .all(|(a, s)| &**a != "gk_2" || s.reserved_usd == 0.0)
    );
    for (_, st) in after.iter().chain(&again) {
        assert!(
            (st.month_usd - 0.25).abs() < 1e-9 && st.reserved_usd.abs() < 1e-9,
            "{st:?}"
        );
    }
    Ok(())
}

/// A database at the first admission schema upgrades in place: accounts keep their spend
/// and their raised 80/95 % day and month alerts, a hold taken before the upgrade is
/// released by its settlement after it.
#[test]
fn a_version_1_database_upgrades_in_place() -> Result<(), DbError> {
    let scratch = ScratchDatabase::from_env()?;
    let db = Db::new(scratch.config().clone())?;
    let d = db.clone();
    let (state, week_cols) = db.block_on(async move {
        let v1 = Component {
            steps: &COMPONENT.steps[..1],
            compatible_from: 1,
            ..COMPONENT
        };
        let mut client = d.get().await?;
        crate::schema::migrate(&mut client, &v1).await?;
        // Day warning + critical, month warning (the old bits 1, 2, 4).
        client
            .batch_execute(&format!(
                "INSERT INTO spend_accounts VALUES ('gk_old', {day}, 0.97, {month}, 3.0, 0.5, 7);
                 INSERT INTO spend_holds VALUES ('{hold}', 'gk_old', 0.5, now() + interval '1 hour');",
                day = metis_domain::time::day_start(NOW),
                month = metis_domain::time::month_start(NOW),
                hold = hold_key(HoldId(9)),
            ))
            .await?;
        drop(client);
        migrate(&d).await?;
        let week_cols: i64 = d
            .get()
            .await?
            .query_one(
                "SELECT count(*) FROM information_schema.columns
                 WHERE table_name = 'spend_accounts' AND column_name LIKE 'week_%'",
                &[],
            )
            .await?
            .get(0);
        let store = PgSpendAdmission::new(d.clone());
        let after = store
            .settle(&Settlement {
                id: HoldId(9),
                budget: budget("gk_old", 1.0),
                reserved_usd: 0.5,
                cost_usd: 0.01,
                at: NOW,
                calendar: CAL,
            })
            .get()
            .await
            .map_err(stopped)?;
        Ok((after[0].1, week_cols))
    })?;
    assert_eq!(week_cols, 2);
    assert!((state.day_usd - 0.98).abs() < 1e-9 && (state.month_usd - 3.01).abs() < 1e-9);
    assert!(
        state.reserved_usd.abs() < 1e-9,
        "the pre-upgrade hold is released: {state:?}"
    );
    assert!(
        (state.week_usd - 0.01).abs() < 1e-9,
        "the week starts at the upgrade"
    );
    use metis_domain::budgets::Window;
    use metis_domain::spend::alert_bit;
    assert_eq!(
        state.alerted,
        alert_bit(Window::Day, 0) | alert_bit(Window::Day, 1) | alert_bit(Window::Month, 0)
    );
    Ok(())
}

#[test]
fn idle_buckets_are_swept_and_the_table_stays_bounded() -> Result<(), DbError> {
    let (_scratch, db) = setup()?;
    let limiter = PgKeyRateLimiter::new(db.clone(), 5);
    let d = db.clone();
    let (swept, left) = db.block_on(async move {
        for i in 0..12 {
            limiter
                .try_take(&format!("bucket-{i}"), 60)
                .get()
                .await
                .map_err(|e| DbError::Stopped(e.to_string()))?;
        }
        let client = d.get().await?;
        // Two buckets idle for more than a minute: full again, so deleted first.
        client
            .execute(
                "UPDATE rate_buckets SET last_us = last_us - 120000000
                 WHERE bucket IN ('bucket-0', 'bucket-1')",
                &[],
            )
            .await?;
        let swept = PgKeyRateLimiter::sweep(d.clone(), 5).await?;
        let left: Vec<String> = client
            .query("SELECT bucket FROM rate_buckets ORDER BY bucket", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok((swept, left))
    })?;
    assert_eq!(swept, 7, "2 idle, then 5 trimmed beyond the newest 5");
    assert_eq!(left.len(), 5);
    assert!(!left.contains(&"bucket-0".to_owned()));
    Ok(())
}
