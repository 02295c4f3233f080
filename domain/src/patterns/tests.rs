use super::*;

fn features() -> StructuralFeatures {
    StructuralFeatures::compute(&FingerprintInputs {
        user_text: "Please fix the failing test and update the README",
        workspace_path: "/work/repo",
        estimated_input_tokens: 1_500,
        has_images: false,
        has_tool_calls_in_history: true,
        tool_names: &["read_file".into(), "bash".into(), "bash".into()],
        file_paths: &[
            "./src/Main.RS".into(),
            "docs\\guide.md".into(),
            "top.txt".into(),
        ],
        side_effect_classes: &[],
        workload_id: None,
    })
}

#[test]
fn the_canonical_json_has_the_documented_field_order_and_a_null_workload() {
    let f = features();
    let json = f.canonical_json();
    let expected = format!(
        "{{\"file_extensions\":[\".md\",\".rs\",\".txt\"],\"file_path_buckets\":[\".\",\"docs\",\"src\"],\
         \"tool_names\":[\"bash\",\"read_file\"],\"side_effect_classes\":[],\"has_images\":false,\
         \"has_tool_calls_in_history\":true,\"estimated_input_tokens_bucket\":1,\
         \"intent_tags\":[\"debug\",\"doc\",\"test\"],\"workspace_hash\":\"{}\",\"workload_id\":null}}",
        workspace_hash("/work/repo")
    );
    assert_eq!(json, expected);
    assert_eq!(f.signature(), sha256_hex(expected.as_bytes()));
    assert_eq!(f.signature().len(), 64);
}

#[test]
fn intent_tags_keep_the_fixed_order() {
    assert_eq!(
        intent_tags("write tests, then refactor; commit it"),
        ["commit", "refactor", "test"]
    );
    assert!(intent_tags("hello there").is_empty());
    assert_eq!(intent_tags("Docker is not docs")[..], ["doc"]);
    assert!(intent_tags("docker").is_empty());
}

#[test]
fn token_buckets() {
    assert_eq!(
        [0, 999, 1_000, 9_999, 10_000, 99_999, 100_000].map(token_bucket),
        [0, 0, 1, 1, 2, 2, 3]
    );
}

#[test]
fn decimals_round_half_to_even_in_micros() {
    assert_eq!(decimal_to_micros("0.0015"), Some(1_500));
    assert_eq!(decimal_to_micros("1"), Some(1_000_000));
    assert_eq!(decimal_to_micros("0.0000005"), Some(0));
    assert_eq!(decimal_to_micros("0.0000015"), Some(2));
    assert_eq!(decimal_to_micros("0.00000151"), Some(2));
    assert_eq!(decimal_to_micros("1e-05"), Some(10));
    assert_eq!(decimal_to_micros("-2.5E-6"), Some(-2));
    assert_eq!(decimal_to_micros("abc"), None);
    assert_eq!(decimal_to_micros("."), None);
    assert_eq!(decimal_to_micros(&cost_decimal(0.000_123_4)), Some(123));
    assert_eq!(cost_decimal(f64::NAN), "0");
}

#[test]
fn similarity_weights_and_workload_wrap() {
    let a = features();
    assert!((structural_similarity(&a, &a) - 1.0).abs() < 1e-12);
    let mut b = a.clone();
    b.intent_tags.clear();
    assert!((structural_similarity(&a, &b) - 0.70).abs() < 1e-12);
    let (mut wa, mut wb) = (a.clone(), a.clone());
    wa.workload_id = Some("x".into());
    wb.workload_id = Some("y".into());
    assert!((structural_similarity(&wa, &wb) - 0.15).abs() < 1e-12);
    assert_eq!(jaccard(&[], &[]), 1.0);
    assert_eq!(jaccard(&["a".into()], &[]), 0.0);
    let e = [1.0_f32, 0.0];
    let f = [0.0_f32, 1.0];
    assert!((similarity(&a, &a, Some((&e, &f)), 0.6) - 0.4).abs() < 1e-12);
    assert!((similarity(&a, &a, Some((&e, &[1.0])), 0.6) - 1.0).abs() < 1e-12);
}

fn n(fp: &str, model: &str, sim: f64, samples: u64, score: Option<f64>, cost: i64) -> Neighbour {
    Neighbour {
        fingerprint_id: fp.into(),
        primary_model: model.into(),
        similarity: sim,
        sample_size: samples,
        success_score_mean: score.unwrap_or(0.0),
        success_score_count: u64::from(score.is_some()),
        sum_cost_usd_micros: cost,
        sum_latency_ms: 0.0,
    }
}

#[test]
fn aggregation_prefers_success_then_cost_and_applies_the_gates() {
    let rows = vec![
        n("fp_a", "big", 0.9, 10, Some(0.9), 10_000_000),
        n("fp_b", "small", 0.8, 10, Some(0.5), 1_000_000),
    ];
    let r = aggregate(&rows, &AggregationConfig::default());
    assert_eq!(r.chosen.as_deref(), Some("big"));
    assert_eq!(r.scores[0].model, "big");
    // big: 0.95·0.9 + 0.05·0 = 0.855; small: 0.95·0.5 + 0.05·1 = 0.525.
    assert!((r.scores[0].score - 0.855).abs() < 1e-12);
    assert!((r.confidence - (0.855 - 0.525) / 0.855).abs() < 1e-12);
    let few = vec![n("fp_a", "big", 0.9, 2, Some(0.9), 1)];
    assert_eq!(aggregate(&few, &AggregationConfig::default()).chosen, None);
    let unscored = vec![n("fp_a", "m", 0.9, 9, None, 5)];
    assert_eq!(
        aggregate(&unscored, &AggregationConfig::default()).chosen,
        None
    );
    let top = top_k(
        vec![
            n("fp_b", "m", 0.5, 1, None, 0),
            n("fp_a", "m", 0.5, 1, None, 0),
            n("fp_c", "m", 0.9, 1, None, 0),
        ],
        2,
    );
    assert_eq!(
        top.iter()
            .map(|t| t.fingerprint_id.as_str())
            .collect::<Vec<_>>(),
        ["fp_c", "fp_a"]
    );
}

#[test]
fn the_payload_round_trips_into_the_same_record() {
    let p = PatternRecorded::new(
        features(),
        "/work/repo",
        "anthropic:claude",
        0.0042,
        812.0,
        None,
    );
    let json = serde_json::to_string(&p).unwrap();
    let back = PatternRecorded::parse(&json).unwrap();
    assert_eq!(back, p);
    let r = back.to_record(7).unwrap();
    assert_eq!(r.cost_usd_micros, 4_200);
    assert_eq!(r.fingerprint_id, p.fingerprint_id);
    assert_eq!(r.structural_sig, p.structural_sig);
    assert_eq!(r.pricing_version, "v0");
    assert_eq!(r.at_us, 7);
    assert!(PatternRecorded::parse("{}").is_err());
}

#[test]
fn welford_add_and_remove_are_inverse() {
    let m = mean_add(0.5, 1, 1.0);
    assert!((m - 0.75).abs() < 1e-12);
    assert!((mean_remove(m, 2, 1.0) - 0.5).abs() < 1e-12);
    assert_eq!(mean_remove(0.3, 1, 0.3), 0.0);
}
