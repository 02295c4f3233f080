//! The in-memory key index the gateway authenticates against, and [`KeySync`], which keeps it
//! in step with the keystore and records in the audit trail the key lifecycle changes the
//! gateway finds there.
//!
//! Invariants:
//! - The index is replaced whole (readers see the old or the new set, never a mix), and only
//!   by a load that started under [`KeySync`]'s reload lock: a reload can never put back a set
//!   older than one already in force. An admin change reloads before it returns, so the key
//!   ring in the process that made it is current before the admin API answers.
//! - Every lifecycle change (issue, rotation, revocation, grace lapse, expiry) is recorded once per
//!   store, whoever records it. A change the keystore shows is first held as pending; after
//!   the settle delay it is recorded (`source: keystore_observed`) unless the store holds an
//!   event for it by then, or this process recorded it. The delay gives a CLI writing into the
//!   same database time to commit its own event after it wrote the keystore.

use metis_domain::budgets::{Policies, PolicyIndex, tags_of};
use metis_domain::events::key_sources::KEYSTORE_OBSERVED;
use metis_domain::events::types::{
    GATEWAY_KEY_EXPIRED, GATEWAY_KEY_ISSUED, GATEWAY_KEY_REVOKED, GATEWAY_KEY_ROTATED,
};
use metis_domain::events::{Payload, make_event};
use metis_domain::keys::{KeyChange, KeyChangeEvent, KeyRecord, next_lapse, shown_changes};
use metis_domain::model_groups::ModelGroups;
use metis_domain::ratelimit::{TpmLine, tpm_lines};
use metis_domain::spend::Budget;
use metis_domain::time::Timestamp;
use metis_ports::keys::{KeyStore, KeyStoreError};
use metis_ports::system::{Clock, IdSource};
use metis_ports::trace::{EventSink, TraceError, TraceQuery};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

/// How soon a running gateway must put in force an issue, revoke or rotation made by another
/// process (a CLI, another replica, a new Secret): SPEC §5.
pub const KEY_PROPAGATION_BOUND: Duration = Duration::from_secs(2);

/// How often [`KeySync::poll`] reads the keystore's change token (`KeyStore::version`: a file's
/// mtime and size, one indexed row of a database store). A change made elsewhere is in force
/// within this interval plus one load of the key set; changes made through this process's
/// admin API are in force before the API answers.
pub const KEY_POLL_INTERVAL: Duration = Duration::from_millis(500);

// The poll leaves at least half of the bound for the load and the request that sees it.
const _: () = assert!(KEY_POLL_INTERVAL.as_millis() * 2 <= KEY_PROPAGATION_BOUND.as_millis());

/// Keys by token hash (with their spend budget: the key's line and one line per scope tag,
/// accounts and parsed caps, built once here), and in keystore order; with the budgets and model
/// groups loaded with them.
#[derive(Debug, Default)]
pub struct KeyIndex {
    /// Each key with its spend budget and its token limits (`None` without any).
    by_hash: HashMap<String, Entry>,
    ordered: Vec<Arc<KeyRecord>>,
    policies: Policies,
    policy_index: PolicyIndex,
    groups: ModelGroups,
}

/// A key as admission serves it: the record, its budget lines and its token limits.
type Entry = (Arc<KeyRecord>, Budget, Option<Arc<[TpmLine]>>);

/// Why a model is refused to a key: the level whose allow-list lacks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRefusal {
    /// The key's own `allowed_models`.
    Key,
    /// The `allowed_models` of the budget of this scope (`team 'platform'`).
    Scope(String),
}

impl KeyIndex {
    /// Build an index without budgets or model groups; records are assumed validated by the
    /// key store.
    #[must_use]
    pub fn new(records: Vec<KeyRecord>) -> Self {
        Self::with_policies(records, Policies::default())
    }

    /// Build an index of `records` under `policies` (both as loaded from the key store).
    #[must_use]
    pub fn with_policies(records: Vec<KeyRecord>, policies: Policies) -> Self {
        let policy_index = PolicyIndex::new(&policies);
        let groups = ModelGroups::new(policies.model_groups.iter().cloned());
        let ordered: Vec<Arc<KeyRecord>> = records.into_iter().map(Arc::new).collect();
        let by_hash = ordered
            .iter()
            .map(|r| {
                let tpm = tpm_lines(r, r.account(), &policy_index);
                let entry = (
                    Arc::clone(r),
                    Budget::for_key(r, &policy_index),
                    (!tpm.is_empty()).then(|| Arc::from(tpm)),
                );
                (r.secret_hash.to_ascii_lowercase(), entry)
            })
            .collect();
        KeyIndex {
            by_hash,
            ordered,
            policies,
            policy_index,
            groups,
        }
    }

    /// The budgets and model groups in force.
    #[must_use]
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The budgets in force, by scope.
    #[must_use]
    pub fn policy_index(&self) -> &PolicyIndex {
        &self.policy_index
    }

    /// The model groups in force.
    #[must_use]
    pub fn model_groups(&self) -> &ModelGroups {
        &self.groups
    }

    /// Whether `key` may use `canonical_model` (or one of its `aliases`): every level with an
    /// allow-list must allow it — the key's own list, then the budget list of each scope the
    /// key is tagged with, in `SCOPE_ORDER` — with `group:NAME` entries expanded against the
    /// groups in force now.
    ///
    /// # Errors
    /// The first level (in that order) whose list lacks the model.
    pub fn check_model(
        &self,
        key: &KeyRecord,
        canonical_model: &str,
        aliases: &[&str],
    ) -> Result<(), ModelRefusal> {
        if !self
            .groups
            .allows(key.allowed_models.as_deref(), canonical_model, aliases)
        {
            return Err(ModelRefusal::Key);
        }
        for (kind, id) in tags_of(key) {
            let list = self
                .policy_index
                .get(kind, id)
                .and_then(|b| b.allowed_models.as_deref());
            if !self.groups.allows(list, canonical_model, aliases) {
                return Err(ModelRefusal::Scope(format!("{} '{id}'", kind.as_str())));
            }
        }
        Ok(())
    }

    /// Whether every level allows the model (listings filter on this).
    #[must_use]
    pub fn allows_model(&self, key: &KeyRecord, canonical_model: &str, aliases: &[&str]) -> bool {
        self.check_model(key, canonical_model, aliases).is_ok()
    }

    /// The token limits of the key with token hash `hash` (lowercase hex; none for most keys).
    #[must_use]
    pub fn tpm_lines(&self, hash: &str) -> Option<&Arc<[TpmLine]>> {
        self.by_hash.get(hash).and_then(|(_, _, tpm)| tpm.as_ref())
    }

    #[must_use]
    pub fn get(&self, hash: &str) -> Option<&Arc<KeyRecord>> {
        self.by_hash.get(hash).map(|(k, _, _)| k)
    }

    /// The key with token hash `hash`, its spend budget and its token limits.
    #[must_use]
    pub fn get_with_budget(&self, hash: &str) -> Option<&Entry> {
        self.by_hash.get(hash)
    }

    /// Every key, in keystore order.
    #[must_use]
    pub fn records(&self) -> &[Arc<KeyRecord>] {
        &self.ordered
    }

    /// (active, revoked-or-lapsed) counts at `now`.
    #[must_use]
    pub fn count_by_state(&self, now: i64) -> (u64, u64) {
        let active = self
            .by_hash
            .values()
            .filter(|(k, _, _)| k.check_active(now).is_ok())
            .count() as u64;
        (active, self.by_hash.len() as u64 - active)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// A shared, atomically replaceable key index.
#[derive(Debug, Default)]
pub struct KeyRing {
    current: RwLock<Arc<KeyIndex>>,
    /// Told the policies of every new set (the router puts stored routes in force).
    listener: std::sync::OnceLock<PolicyListener>,
}

/// What is called with the policies each time the key set is replaced.
pub struct PolicyListener(pub Box<dyn Fn(&Policies) + Send + Sync>);

impl std::fmt::Debug for PolicyListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyListener")
    }
}

impl KeyRing {
    #[must_use]
    pub fn new(records: Vec<KeyRecord>) -> Self {
        KeyRing {
            current: RwLock::new(Arc::new(KeyIndex::new(records))),
            listener: std::sync::OnceLock::new(),
        }
    }

    /// The current index (cheap: one `Arc` clone under a read lock).
    #[must_use]
    pub fn snapshot(&self) -> Arc<KeyIndex> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replace the whole set, keeping no policy (readers see the old or the new set, never a
    /// mix).
    pub fn replace(&self, records: Vec<KeyRecord>) {
        self.replace_with_policies(records, Policies::default());
    }

    /// Call `listener` with the policies now in force and with those of every later set.
    /// Wiring, once: a second listener is ignored.
    pub fn on_policies(&self, listener: PolicyListener) {
        (listener.0)(self.snapshot().policies());
        let _ = self.listener.set(listener);
    }

    /// Replace the whole set and the policies in force together.
    pub fn replace_with_policies(&self, records: Vec<KeyRecord>, policies: Policies) {
        if let Some(l) = self.listener.get() {
            (l.0)(&policies);
        }
        let next = Arc::new(KeyIndex::with_policies(records, policies));
        match self.current.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }
}

/// What [`KeySync`] is built from.
pub struct KeySyncParts {
    pub store: Arc<dyn KeyStore>,
    /// The ring the gateway authenticates against.
    pub ring: Arc<KeyRing>,
    /// Where observed changes are recorded (the gateway's own store).
    pub sink: Arc<dyn EventSink>,
    /// The same store, read to learn which changes it already records.
    pub query: Arc<dyn TraceQuery>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdSource>,
    /// How long a change shown by the keystore waits for another writer's event before the
    /// gateway records it itself.
    pub settle: Duration,
}

/// A change the keystore shows that no known event records yet.
#[derive(Debug)]
struct Pending {
    change: KeyChange,
    since: Timestamp,
    event: KeyChangeEvent,
}

#[derive(Debug, Default)]
struct Observed {
    /// Changes the store holds an event for (as last read), or that this process recorded.
    recorded: HashSet<KeyChange>,
    /// Shown but not known recorded, in the order the key set shows them.
    pending: Vec<Pending>,
    pending_set: HashSet<KeyChange>,
    /// The index last examined (a new index is examined again).
    examined: Option<Arc<KeyIndex>>,
    /// The next grace end or expiry of an active key: the set shows a change then without an
    /// edit (an expiry is recorded once, as `gateway.key_expired`, by this path).
    next_lapse: Option<Timestamp>,
    /// The store could not be read at the last check (logged once per failure streak).
    check_failing: bool,
}

/// Keeps the key ring in step with the keystore and records the lifecycle changes the
/// keystore shows that the gateway's store lacks.
pub struct KeySync {
    store: Arc<dyn KeyStore>,
    ring: Arc<KeyRing>,
    sink: Arc<dyn EventSink>,
    query: Arc<dyn TraceQuery>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
    settle_us: i64,
    /// Held across version read, load and swap; holds the change token of the set in force.
    reload: futures_util::lock::Mutex<Option<String>>,
    observed: Mutex<Observed>,
}

fn lock(m: &Mutex<Observed>) -> MutexGuard<'_, Observed> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

const KEY_EVENT_TYPES: [&str; 4] = [
    GATEWAY_KEY_ISSUED,
    GATEWAY_KEY_REVOKED,
    GATEWAY_KEY_ROTATED,
    GATEWAY_KEY_EXPIRED,
];

impl KeySync {
    #[must_use]
    pub fn new(parts: KeySyncParts) -> Self {
        KeySync {
            store: parts.store,
            ring: parts.ring,
            sink: parts.sink,
            query: parts.query,
            clock: parts.clock,
            ids: parts.ids,
            settle_us: i64::try_from(parts.settle.as_micros()).unwrap_or(i64::MAX),
            reload: futures_util::lock::Mutex::new(None),
            observed: Mutex::new(Observed::default()),
        }
    }

    /// The ring this keeps current.
    #[must_use]
    pub fn ring(&self) -> &Arc<KeyRing> {
        &self.ring
    }

    /// Where the keys live.
    #[must_use]
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Load the keystore and put its set in force now. Returns the loaded set.
    ///
    /// # Errors
    /// The keystore's load error; the set in force is then unchanged.
    pub async fn reload(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let mut in_force = self.reload.lock().await;
        // The change token is read before the keys: a change between the two is then seen as
        // a change by the next poll (one extra reload), never missed.
        let version = self.store.version().await;
        let keys = self.store.load().await?;
        let policies = self.store.load_policies().await?;
        self.ring.replace_with_policies(keys.clone(), policies);
        *in_force = version;
        Ok(keys)
    }

    /// One watcher step: reload when the keystore's change token moved (a set that fails to
    /// load or validate is rejected with an ERROR and the last good set stays in force), then
    /// record the changes that have waited out the settle delay.
    pub async fn poll(&self) {
        {
            let mut in_force = self.reload.lock().await;
            let current = self.store.version().await;
            if current != *in_force {
                let loaded = match self.store.load().await {
                    Ok(keys) => self.store.load_policies().await.map(|p| (keys, p)),
                    Err(e) => Err(e),
                };
                match loaded {
                    Ok((keys, policies)) => {
                        tracing::info!(
                            keys = keys.len(),
                            budgets = policies.budgets.len(),
                            model_groups = policies.model_groups.len(),
                            keystore = %self.store.describe(),
                            "keystore reloaded"
                        );
                        self.ring.replace_with_policies(keys, policies);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "keystore change rejected; the last good key set stays in force");
                    }
                }
                *in_force = current;
            }
        }
        self.observe().await;
    }

    /// Note that this process records `change` now. `false` when it is already recorded (the
    /// caller then does not record it again).
    pub fn claim(&self, change: &KeyChange) -> bool {
        lock(&self.observed).recorded.insert(change.clone())
    }

    /// Changes shown by the key set in force that are not yet known recorded.
    #[must_use]
    pub fn pending(&self) -> Vec<KeyChange> {
        lock(&self.observed)
            .pending
            .iter()
            .map(|p| p.change.clone())
            .collect()
    }

    /// Compare the key set in force with what is recorded; record what has waited long enough.
    async fn observe(&self) {
        let now = self.clock.now_us();
        if !self.examine(now) {
            return;
        }
        let stored = match self.stored_changes().await {
            Ok(s) => s,
            Err(e) => {
                let mut st = lock(&self.observed);
                if !st.check_failing {
                    tracing::warn!(error = %e, "cannot read the key lifecycle events of the trace store; observed keystore changes wait until it can be read");
                    st.check_failing = true;
                }
                return;
            }
        };
        let due: Vec<KeyChangeEvent> = {
            let mut st = lock(&self.observed);
            st.check_failing = false;
            st.recorded.extend(stored);
            let mut due = Vec::new();
            let mut keep = Vec::new();
            for p in std::mem::take(&mut st.pending) {
                if st.recorded.contains(&p.change) {
                    st.pending_set.remove(&p.change);
                } else if now.saturating_sub(p.since) >= self.settle_us {
                    st.pending_set.remove(&p.change);
                    st.recorded.insert(p.change);
                    due.push(p.event);
                } else {
                    keep.push(p);
                }
            }
            st.pending = keep;
            due
        };
        if due.is_empty() {
            return;
        }
        for event in &due {
            match event {
                KeyChangeEvent::Issued(p) => self.emit(now, &**p),
                KeyChangeEvent::Rotated(p) => self.emit(now, p),
                KeyChangeEvent::Revoked(p) => self.emit(now, p),
                KeyChangeEvent::Expired(p) => self.emit(now, p),
            }
        }
        tracing::info!(
            changes = due.len(),
            keystore = %self.store.describe(),
            "recorded key lifecycle changes found in the keystore that the audit trail lacked"
        );
    }

    /// Refresh the pending changes from the set in force when it changed or a grace end
    /// passed. Whether any pending change has waited out the settle delay.
    fn examine(&self, now: Timestamp) -> bool {
        let index = self.ring.snapshot();
        let mut st = lock(&self.observed);
        let changed = !st
            .examined
            .as_ref()
            .is_some_and(|seen| Arc::ptr_eq(seen, &index));
        let lapsed = st.next_lapse.is_some_and(|t| now >= t);
        if changed || lapsed {
            let keys: Vec<KeyRecord> = index.records().iter().map(|r| (**r).clone()).collect();
            let shown = shown_changes(&keys, now, KEYSTORE_OBSERVED);
            st.next_lapse = next_lapse(&keys, now);
            st.examined = Some(index);
            let shown_set: HashSet<KeyChange> = shown.iter().map(KeyChangeEvent::change).collect();
            let Observed {
                pending,
                pending_set,
                recorded,
                ..
            } = &mut *st;
            pending.retain(|p| shown_set.contains(&p.change));
            pending_set.retain(|c| shown_set.contains(c));
            for event in shown {
                let change = event.change();
                if recorded.contains(&change) || pending_set.contains(&change) {
                    continue;
                }
                pending_set.insert(change.clone());
                pending.push(Pending {
                    change,
                    since: now,
                    event,
                });
            }
        }
        st.pending
            .iter()
            .any(|p| now.saturating_sub(p.since) >= self.settle_us)
    }

    /// Every key lifecycle change the store holds an event for.
    async fn stored_changes(&self) -> Result<Vec<KeyChange>, TraceError> {
        let types: Vec<String> = KEY_EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect();
        let rows = self.query.audit_events(0, i64::MAX, &types).await?;
        Ok(rows
            .iter()
            .filter_map(|r| KeyChange::of_event(&r.event_type, &r.payload_json))
            .collect())
    }

    fn emit<P: Payload>(&self, at: Timestamp, payload: &P) {
        self.sink.emit(make_event(
            self.ids.ulid(),
            at,
            "system",
            None,
            None,
            payload,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_limits_are_built_once_per_key_from_its_record_and_the_policies() {
        use metis_domain::budgets::{BudgetPolicy, Policies, ScopeKind};
        let mut team = BudgetPolicy {
            scope: ScopeKind::Team,
            id: "ml".to_owned(),
            daily_usd: None,
            weekly_usd: None,
            monthly_usd: None,
            tpm: Some(20_000),
            alert_at: None,
            allowed_models: None,
            updated_at: None,
        };
        let policies = Policies {
            budgets: vec![team.clone()],
            ..Policies::default()
        };
        let record = |id: &str, hash: &str, extra: serde_json::Value| {
            let mut v =
                serde_json::json!({"key_id": id, "secret_hash": hash, "workspace_path": "/w"});
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            serde_json::from_value::<KeyRecord>(v).unwrap()
        };
        let keys = vec![
            record(
                "gk_a",
                "AA",
                serde_json::json!({"team_id": "ml", "tpm": 1000}),
            ),
            record("gk_b", "bb", serde_json::json!({"team_id": "ml"})),
            record("gk_c", "cc", serde_json::json!({"team_id": "other"})),
        ];
        let ring = KeyRing::new(keys.clone());
        assert!(ring.snapshot().tpm_lines("bb").is_none(), "no policies yet");
        ring.replace_with_policies(keys.clone(), policies);
        let index = ring.snapshot();
        let a: Vec<_> = index
            .tpm_lines("aa")
            .unwrap()
            .iter()
            .map(|l| (l.bucket.clone(), l.tpm))
            .collect();
        assert_eq!(
            a,
            [
                ("tpm:key:gk_a".to_owned(), 1000),
                ("tpm:team:ml".to_owned(), 20_000)
            ]
        );
        // Both keys of the team share its bucket; a key outside it has none.
        assert_eq!(index.tpm_lines("bb").unwrap()[0].bucket, "tpm:team:ml");
        assert!(index.tpm_lines("cc").is_none());
        team.tpm = None;
        let none = Policies {
            budgets: vec![team],
            ..Policies::default()
        };
        ring.replace_with_policies(keys, none);
        assert!(ring.snapshot().tpm_lines("bb").is_none());
    }

    /// Caps are parsed when the index is built and served with the key and its spend account,
    /// with the rules of `Caps::of` (a cap that is not a positive number counts as absent).
    #[test]
    fn the_index_serves_each_key_with_its_budget() {
        use metis_domain::keys::Caps;
        let record = |id: &str, hash: &str, daily: Option<&str>, monthly: Option<&str>| {
            let mut r: KeyRecord = serde_json::from_value(serde_json::json!({
                "key_id": id, "secret_hash": hash, "workspace_path": "/w"
            }))
            .unwrap();
            r.daily_cap_usd = daily.map(str::to_owned);
            r.monthly_cap_usd = monthly.map(str::to_owned);
            r
        };
        let mut tagged = record("gk_b", "bb", None, None);
        tagged.team_id = Some("platform".into());
        let policies: metis_domain::budgets::Policies = serde_json::from_value(
            serde_json::json!({"budgets": [{"scope": "team", "id": "platform", "monthly_usd": "50"}]}),
        )
        .unwrap();
        let index = KeyIndex::with_policies(
            vec![record("gk_a", "AA", Some(" 2.5 "), Some("NaN")), tagged],
            policies,
        );
        let (key, budget, _) = index.get_with_budget("aa").unwrap();
        assert_eq!(key.key_id, "gk_a");
        let line = &budget.lines[0];
        assert_eq!(
            line.caps,
            Caps {
                daily_usd: Some(2.5),
                ..Caps::default()
            }
        );
        assert_eq!(line.caps, Caps::of(key));
        assert_eq!(&*line.account, "gk_a");
        assert_eq!(budget.lines.len(), 1);
        let (_, team, _) = index.get_with_budget("bb").unwrap();
        assert!(team.lines[0].caps.is_empty());
        assert_eq!(&*team.lines[1].account, "team:platform");
        assert_eq!(team.lines[1].caps.monthly_usd, Some(50.0));
        assert!(index.get_with_budget("cc").is_none());
    }

    /// Every level with an allow-list must allow the model: the key's list, then each tagged
    /// scope's budget list; `group:NAME` follows the groups in force; the refusal names the
    /// first level that lacks the model.
    #[test]
    fn a_model_must_be_allowed_by_the_key_and_every_tagged_scope() {
        use metis_domain::budgets::{BudgetPolicy, ScopeKind};
        use metis_domain::model_groups::ModelGroup;
        let mut key: KeyRecord = serde_json::from_value(serde_json::json!({
            "key_id": "gk_a", "secret_hash": "aa", "workspace_path": "/w",
            "user_id": "ana", "team_id": "platform",
            "allowed_models": ["group:cheap", "p:big"]
        }))
        .unwrap();
        let budget = |scope, id: &str, list: Option<&[&str]>| BudgetPolicy {
            scope,
            id: id.into(),
            daily_usd: None,
            weekly_usd: None,
            monthly_usd: None,
            tpm: None,
            alert_at: None,
            allowed_models: list.map(|l| l.iter().map(|m| (*m).to_owned()).collect()),
            updated_at: None,
        };
        let policies = |cheap: &[&str]| Policies {
            budgets: vec![
                budget(ScopeKind::Team, "platform", Some(&["group:cheap"])),
                budget(ScopeKind::User, "ana", None),
                budget(ScopeKind::Team, "other", Some(&[])),
            ],
            model_groups: vec![ModelGroup {
                name: "cheap".into(),
                models: cheap.iter().map(|m| (*m).to_owned()).collect(),
            }],
            routes: Vec::new(),
        };
        let index = KeyIndex::with_policies(vec![key.clone()], policies(&["p:small"]));
        assert_eq!(index.check_model(&key, "p:small", &[]), Ok(()));
        // On the key's list, but the team's list lacks it.
        assert_eq!(
            index.check_model(&key, "p:big", &[]),
            Err(ModelRefusal::Scope("team 'platform'".into()))
        );
        assert_eq!(
            index.check_model(&key, "p:new", &[]),
            Err(ModelRefusal::Key)
        );
        // A model added to the group is allowed at every level naming it.
        let grown = KeyIndex::with_policies(vec![key.clone()], policies(&["p:small", "p:new"]));
        assert!(grown.allows_model(&key, "p:new", &[]));
        // Without a key list, the team list alone limits the key.
        key.allowed_models = None;
        assert_eq!(
            grown.check_model(&key, "p:big", &[]),
            Err(ModelRefusal::Scope("team 'platform'".into()))
        );
        // A key outside the team is not limited by it.
        key.team_id = Some("free".into());
        assert!(grown.allows_model(&key, "p:big", &[]));
        assert_eq!(
            grown
                .policy_index()
                .get(ScopeKind::User, "ana")
                .map(|b| b.id.as_str()),
            Some("ana")
        );
    }
}
