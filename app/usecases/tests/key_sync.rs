//! `KeySync` over the in-memory fakes: admin changes are in force before they return, and the
//! key lifecycle changes the keystore shows (made by a CLI writing into another database, or a
//! grace period lapsing in a read-only keystore) are recorded once in the gateway's store,
//! across restarts, never duplicating an event another writer committed.
#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use metis_domain::audit::{ChainedRow, verify};
use metis_domain::keys::{RotationExpiry, hash_token};
use metis_ports::fakes::{InMemoryKeyStore, InMemoryTraceStore};
use metis_ports::keys::{KeyStore, KeyStoreError};
use metis_ports::system::{Clock, IdSource};
use metis_ports::trace::{EventRow, EventSink, TraceQuery};
use metis_usecases::key_admin::IssueRequest;
use metis_usecases::{KeyAdmin, KeyRing, KeySync, KeySyncParts};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(3);
const T0: i64 = 1_780_000_000_000_000;

/// A clock the test moves.
#[derive(Debug)]
struct ManualClock(AtomicI64);

impl ManualClock {
    fn advance(&self, d: Duration) {
        self.0
            .fetch_add(i64::try_from(d.as_micros()).unwrap(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Unique, increasing ids and distinct token bytes.
#[derive(Debug, Default)]
struct CountingIds(AtomicU64);

impl IdSource for CountingIds {
    fn ulid(&self) -> String {
        format!("01TEST{:020}", self.0.fetch_add(1, Ordering::SeqCst))
    }

    fn secret_bytes(&self) -> [u8; 24] {
        let n = self.0.fetch_add(1, Ordering::SeqCst).to_be_bytes();
        let mut b = [7u8; 24];
        b[..8].copy_from_slice(&n);
        b
    }
}

struct World {
    clock: Arc<ManualClock>,
    ids: Arc<CountingIds>,
    keys: InMemoryKeyStore,
    /// The gateway's database.
    gateway_db: InMemoryTraceStore,
    /// The operator laptop's database (the CLI's default `--db-path`).
    laptop_db: InMemoryTraceStore,
}

impl World {
    fn new() -> Self {
        World {
            clock: Arc::new(ManualClock(AtomicI64::new(T0))),
            ids: Arc::new(CountingIds::default()),
            keys: InMemoryKeyStore::new(),
            gateway_db: InMemoryTraceStore::new(),
            laptop_db: InMemoryTraceStore::new(),
        }
    }

    fn admin(&self, sink: Arc<dyn EventSink>, source: &'static str) -> KeyAdmin {
        KeyAdmin::new(
            Arc::new(self.keys.clone()),
            sink,
            self.clock.clone(),
            self.ids.clone(),
            source,
        )
    }

    /// The CLI on the laptop: same keystore, its own database.
    fn laptop_cli(&self) -> KeyAdmin {
        self.admin(Arc::new(self.laptop_db.clone()), "cli")
    }

    /// A gateway process over the keystore and its database (a fresh handle: a restart).
    async fn gateway(&self) -> (Arc<KeySync>, InMemoryTraceStore) {
        let db = self.gateway_db.reopen().unwrap();
        let sync = Arc::new(KeySync::new(KeySyncParts {
            store: Arc::new(self.keys.clone()),
            ring: Arc::new(KeyRing::default()),
            sink: Arc::new(db.clone()),
            query: Arc::new(db.clone()),
            clock: self.clock.clone(),
            ids: self.ids.clone(),
            settle: SETTLE,
        }));
        match sync.reload().await {
            Ok(_) | Err(KeyStoreError::NotFound { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        (sync, db)
    }

    fn gateway_admin(
        &self,
        sync: &Arc<KeySync>,
        db: &InMemoryTraceStore,
        source: &'static str,
    ) -> KeyAdmin {
        self.admin(Arc::new(db.clone()), source)
            .with_sync(Arc::clone(sync))
    }
}

fn req(name: &str) -> IssueRequest {
    IssueRequest {
        name: name.into(),
        workspace: "/srv/app".into(),
        ..IssueRequest::default()
    }
}

/// (type, key ids, source) of every key lifecycle event in `db`, in order.
async fn key_events(db: &InMemoryTraceStore) -> Vec<(String, String, String)> {
    let rows = db.audit_events(0, i64::MAX, &[]).await.unwrap();
    rows.iter()
        .filter(|r| r.event_type.starts_with("gateway.key_"))
        .map(|r| {
            let v: Value = serde_json::from_str(&r.payload_json).unwrap();
            let ids = match r.event_type.as_str() {
                "gateway.key_rotated" => format!(
                    "{}>{}",
                    v["old_gateway_key_id"].as_str().unwrap(),
                    v["new_gateway_key_id"].as_str().unwrap()
                ),
                _ => v["gateway_key_id"].as_str().unwrap().to_owned(),
            };
            (
                r.event_type.clone(),
                ids,
                v["source"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

fn ev(t: &str, ids: &str, source: &str) -> (String, String, String) {
    (
        format!("gateway.key_{t}"),
        ids.to_owned(),
        source.to_owned(),
    )
}

fn assert_chain_intact(db: &InMemoryTraceStore) {
    let mut rows: Vec<EventRow> = db.rows();
    let seq = |r: &EventRow| {
        serde_json::from_str::<Value>(&r.payload_json).unwrap()["audit_seq"]
            .as_u64()
            .unwrap_or(0)
    };
    rows.retain(|r| seq(r) > 0);
    rows.sort_by_key(seq);
    let chained = rows.iter().map(|r| ChainedRow {
        id: &r.id,
        timestamp_us: r.timestamp_us,
        session_id: &r.session_id,
        event_type: &r.event_type,
        payload_json: &r.payload_json,
    });
    assert_eq!(verify(chained), Ok(rows.len() as u64));
}

#[tokio::test]
async fn changes_made_with_a_cli_on_another_database_are_recorded_once_across_restarts() {
    let w = World::new();
    let cli = w.laptop_cli();
    let a = cli.issue(&req("alpha")).await.unwrap();
    let b = cli.issue(&req("beta")).await.unwrap();

    let (gw, db) = w.gateway().await;
    gw.poll().await;
    // Held for the settle delay: a CLI on the same database may still be committing.
    assert!(key_events(&db).await.is_empty());
    assert_eq!(gw.pending().len(), 2);
    w.clock.advance(SETTLE);
    gw.poll().await;
    let (ida, idb) = (a.record.key_id.clone(), b.record.key_id.clone());
    assert_eq!(
        key_events(&db).await,
        vec![
            ev("issued", &ida, "keystore_observed"),
            ev("issued", &idb, "keystore_observed")
        ]
    );

    // Out-of-band revoke and rotate while the gateway runs.
    cli.revoke(&idb).await.unwrap();
    let rotated = cli.rotate(&ida, 3600, RotationExpiry::Keep).await.unwrap();
    let idc = rotated.successor.record.key_id.clone();
    gw.poll().await;
    w.clock.advance(SETTLE);
    gw.poll().await;
    gw.poll().await;
    let expected = vec![
        ev("issued", &ida, "keystore_observed"),
        ev("issued", &idb, "keystore_observed"),
        ev("revoked", &idb, "keystore_observed"),
        ev("rotated", &format!("{ida}>{idc}"), "keystore_observed"),
        ev("issued", &idc, "keystore_observed"),
    ];
    assert_eq!(key_events(&db).await, expected);
    let rows = db.audit_events(0, i64::MAX, &[]).await.unwrap();
    let revoked: Value = serde_json::from_str(&rows[2].payload_json).unwrap();
    assert_eq!(revoked["reason"], "admin_revoke");

    // A restart (a new process on the same database) and the grace end of the rotated key.
    drop(gw);
    let (gw, db) = w.gateway().await;
    gw.poll().await;
    w.clock.advance(Duration::from_secs(3600));
    gw.poll().await;
    w.clock.advance(SETTLE);
    gw.poll().await;
    let mut expected = expected;
    expected.push(ev("revoked", &ida, "keystore_observed"));
    assert_eq!(key_events(&db).await, expected);
    assert!(gw.pending().is_empty());
    assert_chain_intact(&db);
    // The laptop's own database holds the CLI's events, untouched by the gateway.
    assert!(
        key_events(&w.laptop_db)
            .await
            .iter()
            .all(|(_, _, s)| s == "cli")
    );
}

#[tokio::test]
async fn a_cli_writing_into_the_gateways_database_is_not_recorded_twice() {
    let w = World::new();
    let (gw, db) = w.gateway().await;
    // The CLI's writer commits only on flush: the gateway sees the keystore change first.
    let cli_db = w.gateway_db.reopen_with(Some(100)).unwrap();
    let cli = w.admin(Arc::new(cli_db.clone()), "cli");
    let k = cli.issue(&req("same-db")).await.unwrap();
    gw.poll().await;
    assert_eq!(gw.pending().len(), 1);
    w.clock.advance(Duration::from_secs(1));
    cli_db.flush().await.unwrap();
    w.clock.advance(SETTLE);
    gw.poll().await;
    assert_eq!(
        key_events(&db).await,
        vec![ev("issued", &k.record.key_id, "cli")]
    );
    assert!(gw.pending().is_empty());
}

#[tokio::test]
async fn admin_api_changes_are_in_force_before_they_return_and_are_not_observed_again() {
    let w = World::new();
    let (gw, db) = w.gateway().await;
    let api = w.gateway_admin(&gw, &db, "admin_api");
    let k = api.issue(&req("api")).await.unwrap();
    let hash = hash_token(&k.token);
    // No poll in between: the admin call itself put the key in force.
    assert!(gw.ring().snapshot().get(&hash).is_some());
    api.revoke(&k.record.key_id).await.unwrap();
    let now = w.clock.now_us();
    assert!(
        gw.ring()
            .snapshot()
            .get(&hash)
            .unwrap()
            .check_active(now)
            .is_err()
    );
    let r = api.rotate(&k.record.key_id, 60, RotationExpiry::Keep).await;
    assert!(r.is_err(), "a revoked key cannot be rotated");
    let k2 = api.issue(&req("api2")).await.unwrap();
    let r = api
        .rotate(&k2.record.key_id, 60, RotationExpiry::Keep)
        .await
        .unwrap();
    let succ = r.successor.record.key_id.clone();
    assert!(
        gw.ring()
            .snapshot()
            .get(&hash_token(&r.successor.token))
            .is_some()
    );
    for _ in 0..3 {
        gw.poll().await;
        w.clock.advance(SETTLE);
    }
    let id = k.record.key_id.clone();
    let id2 = k2.record.key_id.clone();
    assert_eq!(
        key_events(&db).await,
        vec![
            ev("issued", &id, "admin_api"),
            ev("revoked", &id, "admin_api"),
            ev("issued", &id2, "admin_api"),
            ev("rotated", &format!("{id2}>{succ}"), "admin_api"),
            ev("issued", &succ, "admin_api"),
        ]
    );
}

#[tokio::test]
async fn a_grace_lapse_in_a_read_only_keystore_is_recorded_once() {
    let w = World::new();
    let cli = w.laptop_cli();
    let a = cli.issue(&req("alpha")).await.unwrap();
    let r = cli
        .rotate(&a.record.key_id, 60, RotationExpiry::Keep)
        .await
        .unwrap();
    let (ida, idb) = (a.record.key_id.clone(), r.successor.record.key_id.clone());
    // A mounted Secret: nothing can write the keystore.
    w.keys.set_read_only(true);
    let (gw, db) = w.gateway().await;
    let sweeper = w.gateway_admin(&gw, &db, "gateway");
    gw.poll().await;
    w.clock.advance(SETTLE);
    gw.poll().await;
    w.clock.advance(Duration::from_secs(60));
    assert!(
        sweeper.sweep().await.is_empty(),
        "the keystore is read-only"
    );
    gw.poll().await;
    w.clock.advance(SETTLE);
    gw.poll().await;
    let observed = vec![
        ev("issued", &ida, "keystore_observed"),
        ev("rotated", &format!("{ida}>{idb}"), "keystore_observed"),
        ev("issued", &idb, "keystore_observed"),
        ev("revoked", &ida, "keystore_observed"),
    ];
    assert_eq!(key_events(&db).await, observed);
    let rows = db.audit_events(0, i64::MAX, &[]).await.unwrap();
    let lapse: Value = serde_json::from_str(&rows.last().unwrap().payload_json).unwrap();
    assert_eq!(lapse["reason"], "grace_period_expired");
    assert_eq!(
        lapse["revoked_at"],
        r.grace_period_until.replace('Z', "+00:00")
    );

    // The keystore becomes writable: the gateway's sweep writes the lapse into it but does
    // not record it again, nor does the next observation.
    w.keys.set_read_only(false);
    assert_eq!(sweeper.sweep().await, vec![ida.clone()]);
    assert_eq!(
        w.keys.load().await.unwrap()[0].status,
        metis_domain::keys::KeyStatus::Revoked
    );
    gw.poll().await;
    w.clock.advance(SETTLE);
    gw.poll().await;
    assert_eq!(key_events(&db).await, observed);
    assert_chain_intact(&db);
}

/// An expiry passing is recorded once per database as `gateway.key_expired` (source
/// `gateway`, with the key id and `expires_at`): not before the instant, not again on later
/// polls or after a restart; the chain stays intact.
#[tokio::test]
async fn an_expiry_is_recorded_once_when_it_passes() {
    let w = World::new();
    let (gw, db) = w.gateway().await;
    let api = w.gateway_admin(&gw, &db, "admin_api");
    let k = api
        .issue(&IssueRequest {
            expires_in: Some("60s".into()),
            ..req("short")
        })
        .await
        .unwrap();
    let id = k.record.key_id.clone();
    let expires_at = k.record.expires_at.clone().unwrap();
    assert_eq!(expires_at, metis_domain::time::format_iso(T0 + 60_000_000));
    let issued = vec![ev("issued", &id, "admin_api")];
    // Just before the expiry: nothing to record.
    w.clock.advance(Duration::from_secs(59));
    gw.poll().await;
    w.clock.advance(Duration::from_micros(999_999));
    gw.poll().await;
    assert_eq!(key_events(&db).await, issued);
    // At the expiry instant the change is shown; recorded after the settle delay.
    w.clock.advance(Duration::from_micros(1));
    gw.poll().await;
    w.clock.advance(SETTLE);
    gw.poll().await;
    gw.poll().await;
    let mut expected = issued;
    expected.push(ev("expired", &id, "gateway"));
    assert_eq!(key_events(&db).await, expected);
    let rows = db.audit_events(0, i64::MAX, &[]).await.unwrap();
    let last: Value = serde_json::from_str(&rows.last().unwrap().payload_json).unwrap();
    assert_eq!(last["expires_at"], expires_at);
    // A restart on the same database records nothing again.
    drop(gw);
    let (gw, db) = w.gateway().await;
    gw.poll().await;
    w.clock.advance(SETTLE);
    gw.poll().await;
    assert_eq!(key_events(&db).await, expected);
    assert!(gw.pending().is_empty());
    assert_chain_intact(&db);
    // The listing shows it as expired; it cannot be rotated.
    assert_eq!(api.get(&id).await.unwrap().effective_status, "expired");
    let r = api.rotate(&id, 60, RotationExpiry::Keep).await;
    assert!(
        matches!(&r, Err(metis_usecases::key_admin::AdminError::Conflict(m)) if m.contains("expired")),
        "{r:?}"
    );
}

/// Rotation keeps the predecessor's expiry by default, and resets it only when asked: to a new
/// duration from now, or to none.
#[tokio::test]
async fn rotation_keeps_or_resets_the_expiry() {
    let w = World::new();
    let cli = w.laptop_cli();
    let k = cli
        .issue(&IssueRequest {
            expires_at: Some("2026-12-31T00:00:00Z".into()),
            ..req("exp")
        })
        .await;
    // T0 is in 2026-05; an expiry in the past is refused naming the flag.
    let past = cli
        .issue(&IssueRequest {
            expires_at: Some("2020-01-01T00:00:00Z".into()),
            ..req("past")
        })
        .await;
    assert!(
        matches!(&past, Err(metis_usecases::key_admin::AdminError::Invalid(m)) if m.starts_with("--expires-at")),
        "{past:?}"
    );
    let k = k.unwrap();
    let keep = cli
        .rotate(&k.record.key_id, 60, RotationExpiry::Keep)
        .await
        .unwrap();
    assert_eq!(
        keep.successor.record.expires_at.as_deref(),
        Some("2026-12-31T00:00:00+00:00")
    );
    let reset = cli
        .rotate(
            &keep.successor.record.key_id,
            60,
            RotationExpiry::ExpiresIn(3600),
        )
        .await
        .unwrap();
    assert_eq!(
        reset.successor.record.expires_at,
        Some(metis_domain::time::format_iso(T0 + 3_600_000_000))
    );
    let never = cli
        .rotate(&reset.successor.record.key_id, 60, RotationExpiry::Never)
        .await
        .unwrap();
    assert_eq!(never.successor.record.expires_at, None);
    let stored = w.keys.load().await.unwrap();
    assert_eq!(stored.len(), 4);
    assert_eq!(stored[3].expires_at, None);
}

/// Policy changes through a gateway's admin are in force in its ring before they return;
/// setting the same budget again writes and audits nothing; errors name the unknown group or
/// the missing budget; each change is audited once with its source.
#[tokio::test]
async fn policy_changes_are_in_force_at_once_audited_once_and_errors_name_the_problem() {
    use metis_domain::budgets::{BudgetPolicy, ScopeKind};
    use metis_usecases::AdminError;
    let w = World::new();
    w.laptop_cli().issue(&req("first")).await.unwrap();
    let (sync, db) = w.gateway().await;
    let admin = w.gateway_admin(&sync, &db, "admin_api");
    let budget = BudgetPolicy {
        scope: ScopeKind::Team,
        id: "platform".into(),
        daily_usd: None,
        weekly_usd: None,
        monthly_usd: Some("100".into()),
        tpm: None,
        alert_at: None,
        allowed_models: Some(vec!["group:cheap".into()]),
        updated_at: None,
    };
    let err = admin.set_budget(budget.clone(), None).await.unwrap_err();
    assert!(
        matches!(&err, AdminError::Invalid(m) if m.contains("'group:cheap'")),
        "{err}"
    );
    admin
        .set_model_group("cheap", vec!["p:m".into()], None)
        .await
        .unwrap();
    let stored = admin.set_budget(budget.clone(), None).await.unwrap();
    assert!(stored.updated_at.is_some());
    let index = sync.ring().snapshot();
    assert!(
        index
            .policy_index()
            .get(ScopeKind::Team, "platform")
            .is_some()
    );
    assert_eq!(
        index.model_groups().members("cheap"),
        Some(&["p:m".to_owned()][..])
    );
    let v = w.keys.version().await;
    w.clock.advance(Duration::from_secs(1));
    admin.set_budget(budget.clone(), None).await.unwrap();
    assert_eq!(w.keys.version().await, v, "an unchanged budget was written");
    let err = admin
        .delete_budget(ScopeKind::User, "ana", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdminError::Missing(m) if m.contains("user 'ana'")),
        "{err}"
    );
    admin
        .delete_budget(ScopeKind::Team, "platform", None)
        .await
        .unwrap();
    assert!(sync.ring().snapshot().policies().budgets.is_empty());
    let err = admin
        .issue(&IssueRequest {
            allowed_models: vec!["group:frontier".into()],
            ..req("grouped")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdminError::Invalid(m) if m.contains("allowed_models") && m.contains("'group:frontier'")),
        "{err}"
    );
    let rows = db.audit_events(0, i64::MAX, &[]).await.unwrap();
    let policy: Vec<(&str, String)> = rows
        .iter()
        .filter(|r| !r.event_type.starts_with("gateway.key_"))
        .map(|r| {
            let v: Value = serde_json::from_str(&r.payload_json).unwrap();
            (
                r.event_type.as_str(),
                v["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        policy,
        [
            ("gateway.model_group_set", "admin_api".to_owned()),
            ("gateway.budget_set", "admin_api".to_owned()),
            ("gateway.budget_deleted", "admin_api".to_owned()),
        ]
    );
}

/// `update_key` changes only what it is asked to, writes and audits nothing for a no-op,
/// refuses a revoked key (conflict) and an invalid value (naming the field), and the change
/// is in force in the gateway's ring before it returns.
#[tokio::test]
async fn a_key_update_changes_what_it_names_and_refuses_revoked_keys() {
    use metis_ports::admin::{Change, KeyChanges};
    use metis_usecases::AdminError;
    let w = World::new();
    let issued = w.laptop_cli().issue(&req("first")).await.unwrap();
    let id = issued.record.key_id.clone();
    let (sync, db) = w.gateway().await;
    let admin = w.gateway_admin(&sync, &db, "admin_api");
    let v = admin
        .update_key(
            &id,
            KeyChanges {
                team: Change::Set("eng".into()),
                tpm: Change::Set(100),
                ..KeyChanges::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(v.record.team_id.as_deref(), Some("eng"));
    assert_eq!(v.record.secret_hash, issued.record.secret_hash);
    let ring = sync.ring().snapshot();
    assert_eq!(
        ring.records()[0].tpm,
        Some(100),
        "in force before returning"
    );
    let version = w.keys.version().await;
    admin
        .update_key(
            &id,
            KeyChanges {
                team: Change::Set("eng".into()),
                ..KeyChanges::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(w.keys.version().await, version, "a no-op was written");
    let err = admin
        .update_key(
            &id,
            KeyChanges {
                alert_at: Change::Set(vec![90, 10]),
                ..KeyChanges::default()
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdminError::Invalid(m) if m.contains("alert_at")),
        "{err}"
    );
    let cleared = admin
        .update_key(
            &id,
            KeyChanges {
                tpm: Change::Clear,
                ..KeyChanges::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(cleared.record.tpm, None);
    assert_eq!(cleared.record.team_id.as_deref(), Some("eng"), "kept");
    admin.revoke(&id).await.unwrap();
    let err = admin
        .update_key(
            &id,
            KeyChanges {
                tpm: Change::Set(5),
                ..KeyChanges::default()
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdminError::Conflict(m) if m.contains("revoked")),
        "{err}"
    );
    let updates = db
        .audit_events(0, i64::MAX, &["gateway.key_updated".into()])
        .await
        .unwrap();
    assert_eq!(updates.len(), 2, "one event per applied change");
}
