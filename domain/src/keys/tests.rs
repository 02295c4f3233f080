//! Unit tests of key records, validation and the key-set rules.

use super::*;
use crate::time::parse_iso;

fn key() -> KeyRecord {
    KeyRecord {
        key_id: "gk_01".into(),
        secret_hash: hash_token("gw_x"),
        name: None,
        workspace_path: "/w".into(),
        created_at: None,
        allowed_models: None,
        daily_cap_usd: None,
        monthly_cap_usd: None,
        rpm: None,
        user_id: None,
        team_id: None,
        customer_tier: None,
        status: KeyStatus::Active,
        revoked_at: None,
        grace_period_until: None,
        expires_at: None,
        spend_account: None,
        customer_id: None,
        org_id: None,
        weekly_cap_usd: None,
        tpm: None,
        alert_at: None,
        extra: Map::new(),
    }
}

fn at(iso: &str) -> Timestamp {
    parse_iso(iso).unwrap_or_default()
}

fn keyed(id: &str, n: u8, created: &str) -> KeyRecord {
    let mut k = key();
    k.key_id = id.into();
    k.secret_hash = hash_token(&format!("gw_{n}"));
    k.created_at = Some(created.into());
    k
}

/// `old` rotated into a new key `id` at `when` with a grace end of `until`, as
/// `rotate-key` stores it (with or without the `rotated_from` link).
fn rotate(old: &mut KeyRecord, id: &str, n: u8, when: &str, until: &str, link: bool) -> KeyRecord {
    old.grace_period_until = Some(until.into());
    let mut succ = keyed(id, n, when);
    succ.spend_account = Some(old.account().to_owned());
    if link {
        succ.set_rotated_from(&old.key_id);
    }
    succ
}

fn ids(changes: &[KeyChangeEvent]) -> Vec<KeyChange> {
    changes.iter().map(KeyChangeEvent::change).collect()
}

fn issued(id: &str) -> KeyChange {
    KeyChange::Issued { key_id: id.into() }
}

fn revoked(id: &str) -> KeyChange {
    KeyChange::Revoked { key_id: id.into() }
}

fn rotated(old: &str, new: &str) -> KeyChange {
    KeyChange::Rotated {
        old_key_id: old.into(),
        new_key_id: new.into(),
    }
}

#[test]
fn a_key_set_shows_issues_rotations_and_revocations_in_time_order() {
    let mut a = keyed("gk_a", 1, "2026-01-01T00:00:00Z");
    let b = rotate(
        &mut a,
        "gk_b",
        2,
        "2026-01-02T00:00:00Z",
        "2026-01-03T00:00:00Z",
        true,
    );
    let mut c = keyed("gk_c", 3, "2026-01-01T12:00:00Z");
    c.status = KeyStatus::Revoked;
    c.revoked_at = Some("2026-01-04T00:00:00Z".into());
    let keys = vec![a, b, c];
    // Before a's grace end: no revocation of a yet (c is stored as revoked, so it shows).
    let before = shown_changes(&keys, at("2026-01-02T12:00:00Z"), "cli");
    assert_eq!(
        ids(&before),
        vec![
            issued("gk_a"),
            issued("gk_c"),
            rotated("gk_a", "gk_b"),
            issued("gk_b"),
            revoked("gk_c"),
        ]
    );
    // After it (and after c's revoke): a's lapse is shown, in time order.
    let after = shown_changes(&keys, at("2026-01-05T00:00:00Z"), "keystore_observed");
    assert_eq!(
        ids(&after),
        vec![
            issued("gk_a"),
            issued("gk_c"),
            rotated("gk_a", "gk_b"),
            issued("gk_b"),
            revoked("gk_a"),
            revoked("gk_c"),
        ]
    );
    let reasons: Vec<(&str, &str, &str)> = after
        .iter()
        .filter_map(|e| match e {
            KeyChangeEvent::Revoked(r) => {
                Some((r.gateway_key_id.as_str(), r.reason, r.revoked_at.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("gk_a", GRACE_EXPIRED, "2026-01-03T00:00:00+00:00"),
            ("gk_c", ADMIN_REVOKE, "2026-01-04T00:00:00Z"),
        ]
    );
    assert!(after.iter().all(|e| match e {
        KeyChangeEvent::Issued(p) => p.source == "keystore_observed",
        KeyChangeEvent::Rotated(p) => p.source == "keystore_observed",
        KeyChangeEvent::Revoked(p) => p.source == "keystore_observed",
        KeyChangeEvent::Expired(_) => false,
    }));
    match &after[2] {
        KeyChangeEvent::Rotated(r) => assert_eq!(r.grace_period_until, "2026-01-03T00:00:00Z"),
        other => panic!("expected the rotation, got {other:?}"),
    }
}

#[test]
fn a_swept_grace_lapse_keeps_its_reason() {
    let mut a = keyed("gk_a", 1, "2026-01-01T00:00:00Z");
    a.grace_period_until = Some("2026-01-03T00:00:00+00:00".into());
    a.status = KeyStatus::Revoked;
    a.revoked_at = Some("2026-01-03T00:00:00+00:00".into());
    let r = shown_revocation(&a, at("2026-02-01T00:00:00Z"), "x");
    assert_eq!(r.map(|r| r.reason), Some(GRACE_EXPIRED));
    assert_eq!(next_lapse(&[a], at("2026-01-02T00:00:00Z")), None);
}

#[test]
fn rotations_of_older_releases_are_inferred_from_the_spend_account() {
    // A -> B -> C without links: C's predecessor is B, not A.
    let mut a = keyed("gk_a", 1, "2026-01-01T00:00:00Z");
    let mut b = rotate(
        &mut a,
        "gk_b",
        2,
        "2026-01-02T00:00:00Z",
        "2026-01-03T00:00:00Z",
        false,
    );
    let c = rotate(
        &mut b,
        "gk_c",
        3,
        "2026-01-04T00:00:00Z",
        "2026-01-05T00:00:00Z",
        false,
    );
    let keys = vec![a, b, c];
    let rotations: Vec<KeyChange> = ids(&shown_changes(&keys, at("2026-01-04T01:00:00Z"), "x"))
        .into_iter()
        .filter(|c| matches!(c, KeyChange::Rotated { .. }))
        .collect();
    assert_eq!(
        rotations,
        vec![rotated("gk_a", "gk_b"), rotated("gk_b", "gk_c")]
    );
    assert_eq!(
        next_lapse(&keys, at("2026-01-04T01:00:00Z")),
        Some(at("2026-01-05T00:00:00Z"))
    );
}

#[test]
fn a_rotation_without_its_predecessor_shows_only_the_issue() {
    let mut a = keyed("gk_a", 1, "2026-01-01T00:00:00Z");
    let b = rotate(
        &mut a,
        "gk_b",
        2,
        "2026-01-02T00:00:00Z",
        "2026-01-03T00:00:00Z",
        true,
    );
    assert_eq!(ids(&shown_changes(&[b], 0, "x")), vec![issued("gk_b")]);
}

#[test]
fn stored_events_name_the_change_they_record() {
    let mut a = keyed("gk_a", 1, "2026-01-01T00:00:00Z");
    let b = rotate(
        &mut a,
        "gk_b",
        2,
        "2026-01-02T00:00:00Z",
        "2026-01-03T00:00:00Z",
        true,
    );
    a.status = KeyStatus::Revoked;
    a.revoked_at = Some("2026-01-02T06:00:00Z".into());
    for event in shown_changes(&[a, b], at("2026-01-02T07:00:00Z"), "cli") {
        let (ty, json) = match &event {
            KeyChangeEvent::Issued(p) => (
                crate::events::types::GATEWAY_KEY_ISSUED,
                serde_json::to_string(p),
            ),
            KeyChangeEvent::Rotated(p) => (
                crate::events::types::GATEWAY_KEY_ROTATED,
                serde_json::to_string(p),
            ),
            KeyChangeEvent::Revoked(p) => (
                crate::events::types::GATEWAY_KEY_REVOKED,
                serde_json::to_string(p),
            ),
            KeyChangeEvent::Expired(p) => (
                crate::events::types::GATEWAY_KEY_EXPIRED,
                serde_json::to_string(p),
            ),
        };
        let json = json.unwrap_or_default();
        assert_eq!(
            KeyChange::of_event(ty, &json),
            Some(event.change()),
            "{json}"
        );
    }
    assert_eq!(KeyChange::of_event("gateway.auth_failed", "{}"), None);
    assert_eq!(
        KeyChange::of_event(crate::events::types::GATEWAY_KEY_ISSUED, "{}"),
        None
    );
}

#[test]
fn grace_end_is_exclusive() {
    let mut k = key();
    k.grace_period_until = Some("2026-01-01T00:00:00+00:00".into());
    let end = parse_iso("2026-01-01T00:00:00Z").unwrap_or_default();
    assert!(k.check_active(end - 1).is_ok());
    assert!(matches!(
        k.check_active(end),
        Err(Inactive::GraceLapsed { .. })
    ));
}

#[test]
fn caps_reject_nan_infinity_and_zero() {
    assert!(validate_cap("--daily-cap-usd", "NaN").is_err());
    assert!(validate_cap("--daily-cap-usd", "inf").is_err());
    assert!(validate_cap("--daily-cap-usd", "0").is_err());
    assert!(validate_cap("--daily-cap-usd", "1e3").is_ok());
}

#[test]
fn tags_are_lowercase_slugs() {
    assert!(validate_tag("--user", "alice_1-b").is_ok());
    assert!(validate_tag("--user", "Alice").is_err());
}

#[test]
fn unknown_fields_survive_a_round_trip() {
    let raw = r#"{"key_id":"gk_1","secret_hash":"00","workspace_path":"/w","x_custom":42}"#;
    let k: KeyRecord = serde_json::from_str(raw).unwrap_or_else(|_| key());
    let back = serde_json::to_string(&k).unwrap_or_default();
    assert!(back.contains("\"x_custom\":42"));
}

/// A set is refused for a duplicate id, a hash shared by two keys (whatever its case) or
/// an invalid record; the message names the key.
#[test]
fn a_key_set_needs_unique_ids_and_hashes() {
    let a = keyed("gk_a", 1, "2026-01-01T00:00:00Z");
    let b = keyed("gk_b", 2, "2026-01-01T00:00:00Z");
    assert_eq!(validate_key_set(&[a.clone(), b.clone()]), Ok(()));
    let e = validate_key_set(&[a.clone(), a.clone()]).unwrap_err();
    assert_eq!(e, "duplicate key_id 'gk_a'");
    let mut upper = keyed("gk_c", 1, "2026-01-01T00:00:00Z");
    upper.secret_hash.make_ascii_uppercase();
    let e = validate_key_set(&[a.clone(), upper]).unwrap_err();
    assert!(
        e.contains("'gk_c' has the same secret_hash as key 'gk_a'"),
        "{e}"
    );
    let mut bad = b;
    bad.workspace_path.clear();
    assert!(validate_key_set(&[a, bad]).unwrap_err().contains("gk_b"));
}

// ---- key expiry ----

fn expiring(at_iso: &str) -> KeyRecord {
    let mut k = key();
    k.created_at = Some("2026-01-01T00:00:00Z".into());
    k.expires_at = Some(at_iso.into());
    k
}

#[test]
fn a_key_is_valid_strictly_before_its_expiry_and_refused_at_and_after_it() {
    let k = expiring("2026-01-02T00:00:00Z");
    let end = at("2026-01-02T00:00:00Z");
    assert_eq!(k.check_active(end - 1), Ok(()));
    assert_eq!(k.effective_status(end - 1), "active");
    let refused = Inactive::Expired {
        at: "2026-01-02T00:00:00+00:00".into(),
    };
    assert_eq!(k.check_active(end), Err(refused.clone()));
    assert_eq!(k.check_active(end + 1), Err(refused));
    assert_eq!(k.effective_status(end), "expired");
}

#[test]
fn revocation_outranks_expiry_and_an_unparseable_expiry_fails_closed() {
    let mut k = expiring("2026-01-02T00:00:00Z");
    k.status = KeyStatus::Revoked;
    k.revoked_at = Some("2026-01-01T12:00:00Z".into());
    assert!(matches!(
        k.check_active(at("2026-01-03T00:00:00Z")),
        Err(Inactive::Revoked { .. })
    ));
    let bad = expiring("tomorrow");
    assert!(matches!(bad.check_active(0), Err(Inactive::Expired { .. })));
    let err = bad.validate().unwrap_err();
    assert!(err.contains("expires_at"), "{err}");
}

#[test]
fn records_without_expires_at_load_unchanged_and_round_trip() {
    let old: KeyRecord = serde_json::from_value(serde_json::json!({
        "key_id": "gk_old", "secret_hash": hash_token("gw_o"), "workspace_path": "/w"
    }))
    .unwrap();
    assert_eq!(old.expires_at, None);
    assert!(!serde_json::to_string(&old).unwrap().contains("expires_at"));
    let k = expiring("2026-01-02T00:00:00Z");
    let back: KeyRecord = serde_json::from_str(&serde_json::to_string(&k).unwrap()).unwrap();
    assert_eq!(back, k);
}

#[test]
fn issue_expiry_names_the_field_and_must_be_in_the_future() {
    let now = at("2026-01-01T00:00:00Z");
    let r = |i: Option<&str>, a: Option<&str>| {
        resolve_expiry(i, a, now, "--expires-in", "--expires-at")
    };
    assert_eq!(r(None, None), Ok(None));
    assert_eq!(
        r(Some("30d"), None),
        Ok(Some("2026-01-31T00:00:00+00:00".into()))
    );
    assert_eq!(
        r(None, Some("2026-02-01T01:00:00+01:00")),
        Ok(Some("2026-02-01T00:00:00+00:00".into()))
    );
    for (i, a, field) in [
        (Some("soon"), None, "--expires-in"),
        (Some("0"), None, "--expires-in"),
        (Some("99999999999999w"), None, "--expires-in"),
        (None, Some("2025-12-31T23:59:59Z"), "--expires-at"),
        (None, Some("2026-01-01T00:00:00Z"), "--expires-at"),
        (None, Some("2026-02-01 00:00"), "--expires-at"),
    ] {
        let e = r(i, a).unwrap_err();
        assert!(e.starts_with(field), "{e}");
    }
    let both = r(Some("1d"), Some("2026-02-01T00:00:00Z")).unwrap_err();
    assert!(both.contains("not both"), "{both}");
}

#[test]
fn rotation_keeps_or_resets_the_expiry_explicitly() {
    let old = expiring("2026-03-01T00:00:00Z");
    let now = at("2026-02-01T00:00:00Z");
    assert_eq!(
        RotationExpiry::Keep.successor_expiry(&old, now),
        Ok(Some("2026-03-01T00:00:00Z".into()))
    );
    assert_eq!(RotationExpiry::Never.successor_expiry(&old, now), Ok(None));
    assert_eq!(
        RotationExpiry::ExpiresIn(86_400).successor_expiry(&old, now),
        Ok(Some("2026-02-02T00:00:00+00:00".into()))
    );
    assert_eq!(RotationExpiry::Keep.successor_expiry(&key(), now), Ok(None));
}

#[test]
fn an_expiry_is_shown_once_passed_unless_the_key_ended_before_it() {
    let k = expiring("2026-01-02T00:00:00Z");
    let end = at("2026-01-02T00:00:00Z");
    assert!(shown_expiry(&k, end - 1).is_none());
    let shown = shown_expiry(&k, end).unwrap();
    assert_eq!(shown.gateway_key_id, "gk_01");
    assert_eq!(shown.expires_at, "2026-01-02T00:00:00+00:00");
    assert_eq!(shown.source, "gateway");
    let changes = shown_changes(std::slice::from_ref(&k), end, "keystore_observed");
    assert_eq!(
        ids(&changes),
        vec![
            issued("gk_01"),
            KeyChange::Expired {
                key_id: "gk_01".into()
            }
        ]
    );
    // Revoked (or grace-lapsed) before the expiry: the key never expired.
    let mut r = k.clone();
    r.status = KeyStatus::Revoked;
    r.revoked_at = Some("2026-01-01T12:00:00Z".into());
    assert!(shown_expiry(&r, end + 1).is_none());
    let mut g = k.clone();
    g.grace_period_until = Some("2026-01-01T12:00:00Z".into());
    assert!(shown_expiry(&g, end + 1).is_none());
    // Revoked after it expired: the expiry happened first and is shown.
    r.revoked_at = Some("2026-01-03T00:00:00Z".into());
    assert!(shown_expiry(&r, end + 1).is_some());
    // The event round-trips through the stored payload.
    let json = serde_json::to_string(&shown).unwrap();
    assert_eq!(
        KeyChange::of_event(crate::events::types::GATEWAY_KEY_EXPIRED, &json),
        Some(KeyChange::Expired {
            key_id: "gk_01".into()
        })
    );
}

#[test]
fn the_next_lapse_includes_expiries_of_active_keys() {
    let k = expiring("2026-01-02T00:00:00Z");
    assert_eq!(
        next_lapse(std::slice::from_ref(&k), at("2026-01-01T00:00:00Z")),
        Some(at("2026-01-02T00:00:00Z"))
    );
    assert_eq!(
        next_lapse(std::slice::from_ref(&k), at("2026-01-02T00:00:00Z")),
        None
    );
}

proptest::proptest! {
    /// For any expiry and any instant, the key is usable iff the instant is before the expiry.
    #[test]
    fn usable_iff_before_expiry(exp in 0i64..4_000_000_000_000_000, now in 0i64..4_000_000_000_000_000) {
        let mut k = key();
        k.expires_at = Some(format_iso(exp));
        proptest::prop_assert_eq!(k.check_active(now).is_ok(), now < exp);
        proptest::prop_assert_eq!(shown_expiry(&k, now).is_some(), now >= exp);
    }
}
