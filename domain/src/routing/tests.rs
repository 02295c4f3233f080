use super::*;

fn dep(name: &str, weight: u32, priority: u32) -> Deployment {
    Deployment {
        name: name.to_owned(),
        provider: "openai".to_owned(),
        model: name.to_owned(),
        weight,
        priority,
        rpm: None,
        tpm: None,
    }
}

/// A deterministic sequence of draws in [0, 1) (a small LCG).
fn lcg(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        #[expect(clippy::cast_precision_loss, reason = "test draws")]
        let v = (s >> 11) as f64 / (1u64 << 53) as f64;
        v
    }
}

#[test]
fn priority_groups_come_in_order_and_every_candidate_once() {
    let c = [
        Candidate {
            priority: 1,
            weight: 1,
            score: 1.0,
        },
        Candidate {
            priority: 0,
            weight: 1,
            score: 1.0,
        },
        Candidate {
            priority: 2,
            weight: 1,
            score: 1.0,
        },
        Candidate {
            priority: 0,
            weight: 1,
            score: 1.0,
        },
    ];
    let mut draw = lcg(7);
    for _ in 0..50 {
        let order = plan(&c, &mut draw);
        assert_eq!(order.len(), 4);
        let prios: Vec<u32> = order.iter().map(|&i| c[i].priority).collect();
        assert_eq!(prios, vec![0, 0, 1, 2]);
    }
}

#[test]
fn equal_load_splits_by_weight() {
    let c = [
        Candidate {
            priority: 0,
            weight: 3,
            score: 1.0,
        },
        Candidate {
            priority: 0,
            weight: 1,
            score: 1.0,
        },
    ];
    let mut draw = lcg(42);
    let n = 4000;
    let first_a = (0..n).filter(|_| plan(&c, &mut draw)[0] == 0).count();
    // Two distinct draws from two candidates always give both; equal scores keep the first
    // draw, which is weight-proportional: 3/4.
    let share = first_a as f64 / f64::from(n);
    assert!((0.70..0.80).contains(&share), "share {share}");
}

#[test]
fn similar_load_keeps_the_weighted_draw() {
    let c = [
        Candidate {
            priority: 0,
            weight: 1,
            score: 100.0,
        },
        Candidate {
            priority: 0,
            weight: 1,
            score: 90.0,
        },
    ];
    let mut draw = lcg(11);
    let n = 2000;
    let first = (0..n).filter(|_| plan(&c, &mut draw)[0] == 0).count();
    let share = first as f64 / f64::from(n);
    assert!((0.45..0.55).contains(&share), "share {share}");
}

#[test]
fn the_less_loaded_of_two_choices_goes_first() {
    let c = [
        Candidate {
            priority: 0,
            weight: 1,
            score: 50.0,
        },
        Candidate {
            priority: 0,
            weight: 1,
            score: 5.0,
        },
    ];
    let mut draw = lcg(3);
    for _ in 0..100 {
        assert_eq!(plan(&c, &mut draw)[0], 1);
    }
}

#[test]
fn consecutive_failures_open_then_a_probe_closes() {
    let policy = BreakerPolicy {
        failure_threshold: 3,
        base_cooldown_ms: 1000,
        max_cooldown_ms: 10_000,
    };
    let d = dep("a", 1, 0);
    let mut h = Health::new(&d, 0);
    for i in 0..3 {
        h.try_acquire(&d, 0, i).unwrap();
        let opened = h.failed(&policy, i, 0.5);
        h.release();
        assert_eq!(opened, i == 2);
    }
    assert_eq!(h.circuit.as_str(), "open");
    assert_eq!(h.ejections, 1);
    // Cool-down 1 s ±20 %: refused at 700 ms, probed at 1.3 s.
    assert!(matches!(
        h.try_acquire(&d, 0, 700_000),
        Err(Skip::CircuitOpen { .. })
    ));
    h.try_acquire(&d, 0, 1_300_000).unwrap();
    assert_eq!(h.circuit, Circuit::HalfOpen { probing: true });
    assert_eq!(h.try_acquire(&d, 0, 1_300_001), Err(Skip::Probing));
    h.succeeded(20.0);
    h.release();
    assert_eq!(h.circuit, Circuit::Closed);
    assert_eq!(h.consecutive_failures, 0);
}

#[test]
fn a_failed_probe_reopens_for_twice_as_long_and_is_capped() {
    let policy = BreakerPolicy {
        failure_threshold: 1,
        base_cooldown_ms: 1000,
        max_cooldown_ms: 3000,
    };
    let d = dep("a", 1, 0);
    let mut h = Health::new(&d, 0);
    h.try_acquire(&d, 0, 0).unwrap();
    assert!(h.failed(&policy, 0, 0.5));
    h.release();
    let mut now = 0;
    let mut cooldowns = Vec::new();
    for _ in 0..3 {
        let Circuit::Open { until_us } = h.circuit else {
            panic!("not open")
        };
        cooldowns.push((until_us - now) / 1000);
        now = until_us;
        h.try_acquire(&d, 0, now).unwrap();
        assert!(h.failed(&policy, now, 0.5));
        h.release();
    }
    assert_eq!(cooldowns, vec![1000, 2000, 3000]);
}

#[test]
fn an_abandoned_probe_frees_the_slot() {
    let policy = BreakerPolicy {
        failure_threshold: 1,
        base_cooldown_ms: 10,
        max_cooldown_ms: 10,
    };
    let d = dep("a", 1, 0);
    let mut h = Health::new(&d, 0);
    h.try_acquire(&d, 0, 0).unwrap();
    h.failed(&policy, 0, 0.0);
    h.release();
    h.try_acquire(&d, 0, 1_000_000).unwrap();
    h.release();
    assert_eq!(h.circuit, Circuit::HalfOpen { probing: false });
    assert!(h.try_acquire(&d, 0, 1_000_001).is_ok());
}

#[test]
fn ceilings_skip_without_taking_anything() {
    let mut d = dep("a", 1, 0);
    d.rpm = Some(2);
    d.tpm = Some(1000);
    let mut h = Health::new(&d, 0);
    h.try_acquire(&d, 400, 0).unwrap();
    h.try_acquire(&d, 400, 0).unwrap();
    assert!(matches!(
        h.try_acquire(&d, 100, 0),
        Err(Skip::Rpm { limit: 2, .. })
    ));
    let mut t = dep("b", 1, 0);
    t.tpm = Some(1000);
    let mut h = Health::new(&t, 0);
    h.try_acquire(&t, 700, 0).unwrap();
    let skip = h.try_acquire(&t, 700, 0).unwrap_err();
    assert!(skip.is_ceiling());
    assert!(skip.retry_after_secs() >= 1);
    assert_eq!(h.outstanding, 1);
    // 300 left: a small request still fits.
    h.try_acquire(&t, 300, 0).unwrap();
}

#[test]
fn validation_names_the_problem() {
    assert!(validate("r", &[]).unwrap_err().contains("no deployments"));
    let err = validate("r", &[dep("a", 1, 0), dep("a", 1, 1)]).unwrap_err();
    assert!(err.contains("two deployments are named 'a'"), "{err}");
    assert!(
        validate("r", &[dep("a", 0, 0)])
            .unwrap_err()
            .contains("weight 0")
    );
    assert!(validate("r", &[dep("a", 1, 0), dep("b", 2, 1)]).is_ok());
}

#[test]
fn latency_ewma_moves_toward_samples() {
    let d = dep("a", 1, 0);
    let mut h = Health::new(&d, 0);
    for _ in 0..30 {
        h.succeeded(10.0);
    }
    assert!((h.latency_ewma_ms - 10.0).abs() < 0.1);
    let idle = h.score();
    h.try_acquire(&d, 0, 0).unwrap();
    assert!(h.score() > idle);
}
