use super::*;
use proptest::prelude::*;

const SEC: i64 = 1_000_000;

#[test]
fn a_burst_of_rpm_passes_then_denies_with_retry_after() {
    let mut b = TokenBucket::full(60, 0);
    for _ in 0..60 {
        assert!(b.try_take(60, 0).is_ok());
    }
    assert_eq!(b.try_take(60, 0), Err(1));
    assert!(b.try_take(60, SEC).is_ok());
}

#[test]
fn retry_after_is_the_ceiling_of_the_wait() {
    let mut b = TokenBucket::full(6, 0); // one token per 10 s
    for _ in 0..6 {
        b.try_take(6, 0).unwrap();
    }
    assert_eq!(b.try_take(6, 0), Err(10));
    assert_eq!(b.try_take(6, 7 * SEC), Err(3));
}

#[test]
fn evicted_buckets_come_back_full() {
    let mut m = BucketMap::new(2);
    for _ in 0..5 {
        m.try_take("a", 5, 0).unwrap();
    }
    assert!(m.try_take("a", 5, 0).is_err());
    m.try_take("b", 5, 0).unwrap();
    m.try_take("c", 5, 0).unwrap(); // evicts "a"
    assert_eq!(m.len(), 2);
    assert!(m.try_take("a", 5, 0).is_ok());
}

#[test]
fn borrowed_keys_share_the_bucket_of_their_owned_form() {
    let mut m: BucketMap<String> = BucketMap::new(4);
    for _ in 0..3 {
        m.try_take_borrowed("k", 3, 0).unwrap();
    }
    assert_eq!(m.try_take("k".to_owned(), 3, 0), Err(20));
    assert_eq!(m.try_take_borrowed("k", 3, 0), Err(20));
    assert_eq!(m.len(), 1);
}

#[test]
fn a_bucket_round_trips_through_its_stored_parts() {
    let mut b = TokenBucket::full(6, 0);
    b.try_take(6, 0).unwrap();
    let mut stored = TokenBucket::from_parts(b.tokens(), b.last_us());
    assert_eq!(stored, b);
    assert_eq!(stored.try_take(6, 0), b.try_take(6, 0));
}

#[test]
fn forwarded_for_is_ignored_from_untrusted_peers() {
    let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
    let peer: IpAddr = "203.0.113.9".parse().unwrap();
    assert_eq!(client_ip(peer, Some("1.2.3.4"), &trusted), peer);
    let proxy: IpAddr = "10.1.2.3".parse().unwrap();
    assert_eq!(
        client_ip(proxy, Some("1.2.3.4, 198.51.100.7, 10.9.9.9"), &trusted),
        "198.51.100.7".parse::<IpAddr>().unwrap()
    );
    assert_eq!(client_ip(proxy, Some("garbage, 10.0.0.1"), &trusted), proxy);
}

#[test]
fn cidr_parsing_names_bad_values() {
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert!(Cidr::parse("nope").is_err());
    assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
    let v4 = Cidr::parse("127.0.0.0/8").unwrap();
    assert!(v4.contains("::ffff:127.0.0.1".parse().unwrap()));
}

#[test]
fn leak_signal_fires_once_per_hour_above_ten_ips() {
    let mut d = LeakDetector::new(100);
    for i in 0..10u8 {
        assert!(d.observe("gk_1", IpAddr::from([10, 0, 0, i]), 0).is_none());
    }
    let s = d
        .observe("gk_1", IpAddr::from([10, 0, 0, 10]), SEC)
        .unwrap();
    assert_eq!(s.distinct_ips, 11);
    assert!(
        d.observe("gk_1", IpAddr::from([10, 0, 0, 11]), 2 * SEC)
            .is_none()
    );
    assert!(
        d.observe("gk_1", IpAddr::from([10, 0, 1, 0]), 3_601 * SEC)
            .is_none()
    );
}

fn key_with(tpm: Option<u32>, user: Option<&str>, team: Option<&str>) -> KeyRecord {
    let mut k: KeyRecord = serde_json::from_value(serde_json::json!({
        "key_id": "gk_1", "secret_hash": "aa", "workspace_path": "/w"
    }))
    .unwrap();
    k.tpm = tpm;
    k.user_id = user.map(str::to_owned);
    k.team_id = team.map(str::to_owned);
    k
}

#[test]
fn a_request_takes_its_estimate_and_waits_for_the_refusing_bucket() {
    // 600 tpm: 10 tokens per second.
    let mut b = TokenBucket::full(600, 0);
    assert_eq!(b.wait_for(600, 500, 0), None);
    b.debit(600, 500, 0);
    assert_eq!(b.wait_for(600, 100, 0), None);
    // 100 left, 250 needed: 15 s.
    assert_eq!(b.wait_for(600, 250, 0), Some(15));
    assert_eq!(b.wait_for(600, 250, 14 * SEC), Some(1));
    assert_eq!(b.wait_for(600, 250, 15 * SEC), None);
}

#[test]
fn an_estimate_above_the_capacity_passes_on_a_full_bucket_and_goes_negative() {
    let mut b = TokenBucket::full(60, 0);
    let mut buckets = [b];
    assert_eq!(take_all(&mut buckets, &[60], 200, 0), Ok(()));
    b = buckets[0];
    assert!((b.tokens() + 140.0).abs() < 1e-9, "{}", b.tokens());
    // -140 back to full (60) takes 200 s at 1 token per second.
    assert_eq!(b.wait_for(60, 200, 0), Some(200));
    assert_eq!(b.wait_for(60, 1, 0), Some(141));
}

#[test]
fn settlement_refunds_up_to_the_capacity_and_charges_below_zero() {
    let mut b = TokenBucket::full(100, 0);
    b.debit(100, 80, 0);
    b.debit(100, -500, 0);
    assert!(
        (b.tokens() - 100.0).abs() < 1e-9,
        "a refund never overfills"
    );
    b.debit(100, 300, 0);
    assert!((b.tokens() + 200.0).abs() < 1e-9);
}

#[test]
fn take_all_is_all_or_none_and_names_the_longest_wait() {
    let mut buckets = [
        TokenBucket::full(6000, 0),
        TokenBucket::from_parts(10.0, 0),
        TokenBucket::from_parts(50.0, 0),
    ];
    let before = buckets;
    // user: 100 is above its capacity of 60, so it waits to be full: (60-10)/1 = 50 s;
    // team: (100-50)/10 = 5 s.
    assert_eq!(
        take_all(&mut buckets, &[6000, 60, 600], 100, 0),
        Err((1, 50))
    );
    assert_eq!(buckets, before, "a refusal takes nothing");
    assert_eq!(take_all(&mut buckets, &[6000, 6000, 6000], 10, 0), Ok(()));
    assert!((buckets[1].tokens() - 0.0).abs() < 1e-9);
    assert!((buckets[0].tokens() - 5990.0).abs() < 1e-9);
}

#[test]
fn the_map_takes_amounts_atomically_and_settles() {
    let mut m: BucketMap<String> = BucketMap::new(8);
    let lines = [("tpm:key:a", 100u32), ("tpm:team:t", 150u32)];
    assert_eq!(m.take_amount(&lines, 100, 0), Ok(()));
    // The key bucket is empty: refused, and the team bucket keeps its 50.
    assert_eq!(m.take_amount(&lines, 40, 0), Err((0, 24)));
    assert_eq!(m.take_amount(&[("tpm:team:t", 150)], 50, 0), Ok(()));
    // Settling a 100-token estimate to 30 gives 70 back to both.
    m.adjust(&lines, -70, 0);
    assert_eq!(m.take_amount(&lines, 70, 0), Ok(()));
    assert_eq!(m.len(), 2);
}

#[test]
fn tpm_lines_come_from_the_key_and_its_user_and_team_budgets() {
    use crate::budgets::{BudgetPolicy, Policies};
    let policy = |scope, id: &str, tpm| BudgetPolicy {
        scope,
        id: id.to_owned(),
        daily_usd: None,
        weekly_usd: None,
        monthly_usd: None,
        tpm,
        alert_at: None,
        allowed_models: None,
        updated_at: None,
    };
    let index = PolicyIndex::new(&Policies {
        budgets: vec![
            policy(ScopeKind::User, "ana", Some(5000)),
            policy(ScopeKind::Team, "ml", Some(20000)),
            policy(ScopeKind::Team, "nocap", None),
        ],
        ..Policies::default()
    });
    let lines = tpm_lines(
        &key_with(Some(1000), Some("ana"), Some("ml")),
        "acct",
        &index,
    );
    let got: Vec<_> = lines
        .iter()
        .map(|l| (l.scope_name(), l.bucket.as_str(), l.tpm))
        .collect();
    assert_eq!(
        got,
        [
            ("key_tpm", "tpm:key:acct", 1000),
            ("user_tpm", "tpm:user:ana", 5000),
            ("team_tpm", "tpm:team:ml", 20000)
        ]
    );
    assert!(tpm_lines(&key_with(None, Some("bob"), Some("nocap")), "a", &index).is_empty());
    assert!(tpm_lines(&key_with(None, None, None), "a", &PolicyIndex::default()).is_empty());
}

proptest! {
    /// Whatever the estimates, settlements and timing, the tokens admitted (as settled)
    /// never exceed the capacity plus the refill since the start plus the one request
    /// admitted on a full bucket beyond the capacity.
    #[test]
    fn settled_tokens_never_exceed_capacity_plus_refill_plus_one_request(
        tpm in 1u32..100_000,
        reqs in proptest::collection::vec((0i64..3_000_000, 0u64..200_000, 0u64..200_000), 1..200),
    ) {
        let mut b = [TokenBucket::full(tpm, 0)];
        let mut now = 0i64;
        let mut settled = 0u64;
        let mut largest = 0u64;
        for (gap, estimate, actual) in &reqs {
            now += gap;
            if take_all(&mut b, &[tpm], *estimate, now).is_ok() {
                let delta = i64::try_from(*actual).unwrap() - i64::try_from(*estimate).unwrap();
                adjust_all(&mut b, &[tpm], delta, now);
                settled += actual;
                largest = largest.max(*actual);
            }
        }
        #[expect(clippy::cast_precision_loss, reason = "test bounds")]
        let bound = f64::from(tpm) + now as f64 / 1e6 * f64::from(tpm) / 60.0 + largest as f64;
        #[expect(clippy::cast_precision_loss, reason = "test bounds")]
        let settled_f = settled as f64;
        prop_assert!(settled_f <= bound + 1e-3, "{settled_f} > {bound}");
    }

    /// The `Retry-After` of a refusal is at least 1 and enough: after that many seconds the
    /// same request passes (an estimate above the capacity included).
    #[test]
    fn token_retry_after_is_at_least_one_and_sufficient(
        tpm in 1u32..100_000,
        level in -200_000i64..100_000,
        estimate in 1u64..300_000,
    ) {
        let mut b = TokenBucket::full(tpm, 0);
        b.debit(tpm, i64::from(tpm) - level, 0);
        let mut probe = b;
        if let Some(wait) = probe.wait_for(tpm, estimate, 0) {
            prop_assert!(wait >= 1);
            let mut later = [b];
            let at = i64::try_from(wait).unwrap() * SEC;
            prop_assert_eq!(take_all(&mut later, &[tpm], estimate, at), Ok(()));
            if wait > 1 {
                let mut early = [b];
                let before = (i64::try_from(wait).unwrap() - 1) * SEC;
                prop_assert!(take_all(&mut early, &[tpm], estimate, before).is_err());
            }
        }
    }

    /// A refusal leaves every bucket as it was; an admission debits each by the amount.
    #[test]
    fn take_all_changes_all_buckets_or_none(
        levels in proptest::collection::vec((1u32..10_000, -10_000i64..10_000), 1..4),
        amount in 0u64..20_000,
    ) {
        let tpms: Vec<u32> = levels.iter().map(|(t, _)| *t).collect();
        let mut buckets: Vec<TokenBucket> = levels
            .iter()
            .map(|(t, l)| TokenBucket::from_parts((*l).min(i64::from(*t)) as f64, 0))
            .collect();
        let before = buckets.clone();
        match take_all(&mut buckets, &tpms, amount, 0) {
            Ok(()) => {
                for (b, a) in buckets.iter().zip(&before) {
                    prop_assert!((a.tokens() - b.tokens() - amount as f64).abs() < 1e-6);
                }
            }
            Err((i, _)) => {
                prop_assert_eq!(&buckets, &before);
                prop_assert!(i < buckets.len());
            }
        }
    }

    #[test]
    fn admitted_requests_never_exceed_capacity_plus_refill(
        rpm in 1u32..600,
        gaps in proptest::collection::vec(0i64..2_000_000, 1..400),
    ) {
        let mut b = TokenBucket::full(rpm, 0);
        let mut now = 0i64;
        let mut admitted = 0u64;
        for g in &gaps {
            now += g;
            if b.try_take(rpm, now).is_ok() { admitted += 1; }
        }
        #[expect(clippy::cast_precision_loss, reason = "test bounds")]
        let bound = f64::from(rpm) + now as f64 / 1e6 * f64::from(rpm) / 60.0;
        #[expect(clippy::cast_precision_loss, reason = "test bounds")]
        let admitted_f = admitted as f64;
        prop_assert!(admitted_f <= bound + 1e-6);
    }

    #[test]
    fn retry_after_is_at_least_one_and_sufficient(rpm in 1u32..1000, start in 0i64..10_000_000) {
        let mut b = TokenBucket::full(rpm, start);
        for _ in 0..rpm { b.try_take(rpm, start).unwrap(); }
        let wait = b.try_take(rpm, start).unwrap_err();
        prop_assert!(wait >= 1);
        #[expect(clippy::cast_possible_wrap, reason = "wait <= 60")]
        let later = start + wait as i64 * 1_000_000;
        prop_assert!(b.try_take(rpm, later).is_ok());
    }
}
