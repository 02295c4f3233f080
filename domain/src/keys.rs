//! Gateway keys: the stored record, its lifecycle state and the validation rules.
//!
//! Invariants:
//! - A token is `gw_` + at least 128 bits of CSPRNG output, independent of the key id
//!   (`gk_<ULID>`); only its SHA-256 (lowercase hex) is ever stored.
//! - A key is active iff its status is not `revoked`, its grace end (if any) is in the future
//!   and its expiry (`expires_at`, if any) is in the future: valid strictly before the instant,
//!   refused at it and after.

use crate::events::{KeyExpired, KeyIssued, KeyRevoked, KeyRotated};
use crate::time::{Timestamp, format_iso};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of a presented token (the lookup key of the keystore).
#[must_use]
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The first 8 hex chars of the token hash: safe to log and to store in `gateway.auth_failed`.
#[must_use]
pub fn token_fingerprint(token: &str) -> String {
    let mut h = hash_token(token);
    h.truncate(8);
    h
}

/// Build the token string from CSPRNG bytes (the caller supplies the randomness).
#[must_use]
pub fn token_from_random(bytes: &[u8; 24]) -> String {
    format!("gw_{}", hex::encode(bytes))
}

/// Stored key status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    #[default]
    Active,
    Revoked,
}

/// One key record, as stored in `keys.json` (`{"keys":[…]}`, compatible with the original).
///
/// Unknown fields are kept in `extra` so admin rewrites never drop them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub secret_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub workspace_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "decimal_string"
    )]
    pub daily_cap_usd: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "decimal_string"
    )]
    pub monthly_cap_usd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_tier: Option<String>,
    /// The customer this key's traffic is billed to (a budget scope, `budgets::ScopeKind`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// The organisation this key belongs to (a budget scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "decimal_string"
    )]
    pub weekly_cap_usd: Option<String>,
    /// Tokens per minute (input + output) for this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Percent levels of this key's caps that raise an alert (`None` = the default levels,
    /// `budgets::DEFAULT_ALERT_LEVELS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_at: Option<Vec<u8>>,
    #[serde(default)]
    pub status: KeyStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_until: Option<String>,
    /// When the key stops authenticating (ISO-8601 UTC): valid strictly before, refused at and
    /// after. `None` = never expires (records written before the field existed load as such).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The key whose spend windows this key shares: a rotated successor inherits its
    /// predecessor's account, so rotation never resets spend. `None` = the key's own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_account: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Caps are stored as decimal strings; numbers are accepted on load (not bools).
mod decimal_string {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) => s.serialize_str(x),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(serde::de::Error::custom(format!(
                "cap must be a decimal string or number, got {other}"
            ))),
        }
    }
}

/// The stored field naming a rotated successor's predecessor.
pub const ROTATED_FROM: &str = "rotated_from";

/// Why a key cannot be used right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inactive {
    /// Explicitly revoked at this time (ISO-8601), if recorded.
    Revoked { at: Option<String> },
    /// Rotation grace ended at this time (ISO-8601).
    GraceLapsed { at: String },
    /// The key's own expiry (`expires_at`) passed at this time (ISO-8601).
    Expired { at: String },
}

impl KeyRecord {
    /// The spend account this key charges (its own id unless inherited by rotation).
    #[must_use]
    pub fn account(&self) -> &str {
        self.spend_account.as_deref().unwrap_or(&self.key_id)
    }

    /// Effective status at `now`: `revoked` when revoked or past its grace end, `expired` when
    /// past its own `expires_at`.
    #[must_use]
    pub fn effective_status(&self, now: Timestamp) -> &'static str {
        match self.check_active(now) {
            Ok(()) => "active",
            Err(Inactive::Expired { .. }) => "expired",
            Err(_) => "revoked",
        }
    }

    /// The parsed `expires_at` (`None` when absent or unparseable; [`KeyRecord::validate`]
    /// rejects the latter on load, and [`KeyRecord::check_active`] fails it closed).
    #[must_use]
    pub fn expiry(&self) -> Option<Timestamp> {
        self.expires_at
            .as_deref()
            .and_then(|e| crate::time::parse_iso(e).ok())
    }

    /// The key this one succeeded by rotation, when recorded (keys rotated by older releases
    /// carry only their inherited `spend_account`).
    #[must_use]
    pub fn rotated_from(&self) -> Option<&str> {
        self.extra.get(ROTATED_FROM).and_then(Value::as_str)
    }

    /// Record the predecessor of a rotated successor (kept with the unknown fields, so the file
    /// stays readable by tools that do not know it).
    pub fn set_rotated_from(&mut self, key_id: &str) {
        self.extra
            .insert(ROTATED_FROM.to_owned(), Value::String(key_id.to_owned()));
    }

    /// Display name (defaults to the key id).
    #[must_use]
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.key_id)
    }

    /// Whether the key may authenticate at `now`.
    ///
    /// # Errors
    /// Returns why the key is inactive.
    pub fn check_active(&self, now: Timestamp) -> Result<(), Inactive> {
        if self.status == KeyStatus::Revoked {
            return Err(Inactive::Revoked {
                at: self.revoked_at.clone(),
            });
        }
        if let Some(grace) = &self.grace_period_until {
            match crate::time::parse_iso(grace) {
                Ok(end) if now < end => {}
                // An unparseable grace end fails closed.
                Ok(end) => {
                    return Err(Inactive::GraceLapsed {
                        at: format_iso(end),
                    });
                }
                Err(_) => {
                    return Err(Inactive::GraceLapsed { at: grace.clone() });
                }
            }
        }
        if let Some(exp) = &self.expires_at {
            match crate::time::parse_iso(exp) {
                // Valid strictly before the expiry instant; refused at it and after.
                Ok(end) if now < end => {}
                Ok(end) => {
                    return Err(Inactive::Expired {
                        at: format_iso(end),
                    });
                }
                // An unparseable expiry fails closed, as an unparseable grace end does.
                Err(_) => return Err(Inactive::Expired { at: exp.clone() }),
            }
        }
        Ok(())
    }

    /// Whether `canonical_model` (or one of its `aliases`) is allowed for this key.
    /// No list means every model is allowed.
    #[must_use]
    pub fn allows_model(&self, canonical_model: &str, aliases: &[&str]) -> bool {
        match &self.allowed_models {
            None => true,
            Some(list) => list
                .iter()
                .any(|m| m == canonical_model || aliases.iter().any(|a| a == m)),
        }
    }

    /// Validate a record loaded from storage.
    ///
    /// # Errors
    /// A message naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let id = &self.key_id;
        if id.is_empty() {
            return Err("key_id must be non-empty".into());
        }
        if self.secret_hash.len() != 64 || !self.secret_hash.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!("{id}: secret_hash must be 64 hex characters"));
        }
        if self.workspace_path.is_empty() {
            return Err(format!("{id}: workspace_path must be non-empty"));
        }
        for (field, cap) in [
            ("daily_cap_usd", &self.daily_cap_usd),
            ("weekly_cap_usd", &self.weekly_cap_usd),
            ("monthly_cap_usd", &self.monthly_cap_usd),
        ] {
            if let Some(c) = cap {
                validate_cap(field, c).map_err(|e| format!("{id}: {e}"))?;
            }
        }
        for (field, tag) in [
            ("user_id", &self.user_id),
            ("team_id", &self.team_id),
            ("customer_id", &self.customer_id),
            ("org_id", &self.org_id),
        ] {
            if let Some(t) = tag {
                validate_tag(field, t).map_err(|e| format!("{id}: {e}"))?;
            }
        }
        if let Some(t) = &self.customer_tier
            && !CUSTOMER_TIERS.contains(&t.as_str())
        {
            return Err(format!(
                "{id}: customer_tier must be one of trial, paid, internal, got '{t}'"
            ));
        }
        if self.rpm == Some(0) {
            return Err(format!("{id}: rpm must be > 0"));
        }
        if self.tpm == Some(0) {
            return Err(format!("{id}: tpm must be > 0"));
        }
        if let Some(levels) = &self.alert_at {
            crate::budgets::validate_alert_levels("alert_at", levels)
                .map_err(|e| format!("{id}: {e}"))?;
        }
        if self.status == KeyStatus::Revoked && self.revoked_at.is_none() {
            return Err(format!("{id}: status 'revoked' requires revoked_at"));
        }
        for (field, ts) in [
            ("created_at", &self.created_at),
            ("revoked_at", &self.revoked_at),
            ("grace_period_until", &self.grace_period_until),
            ("expires_at", &self.expires_at),
        ] {
            if let Some(t) = ts {
                crate::time::parse_iso(t).map_err(|e| format!("{id}: {field}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Validate a whole key set as a store holds it: every record valid, no two with the same
/// `key_id`, no two with the same `secret_hash` (compared lowercase), so one token can never
/// authenticate as two keys.
///
/// # Errors
/// A message naming the first offending record.
pub fn validate_key_set(records: &[KeyRecord]) -> Result<(), String> {
    let mut ids = std::collections::HashSet::new();
    let mut hashes: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for r in records {
        r.validate()?;
        if !ids.insert(r.key_id.as_str()) {
            return Err(format!("duplicate key_id '{}'", r.key_id));
        }
        if let Some(first) = hashes.insert(r.secret_hash.to_ascii_lowercase(), &r.key_id) {
            return Err(format!(
                "key '{}' has the same secret_hash as key '{first}'",
                r.key_id
            ));
        }
    }
    Ok(())
}

/// The spend caps of a key (now `metis_domain::spend::Caps`, which also serves scope budgets).
pub use crate::spend::Caps;

/// A USD cap must be a finite decimal number > 0.
///
/// # Errors
/// A message naming `field`.
pub fn validate_cap(field: &str, raw: &str) -> Result<f64, String> {
    let v: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("{field} must be a positive number, got '{raw}'"))?;
    if !v.is_finite() {
        return Err(format!("{field} must be finite, got '{raw}'"));
    }
    if v <= 0.0 {
        return Err(format!("{field} must be > 0, got '{raw}'"));
    }
    Ok(v)
}

/// Customer tiers (a label; nothing is gated on it).
pub const CUSTOMER_TIERS: [&str; 3] = ["trial", "paid", "internal"];

/// User/team tags: 1–200 chars of `^[a-z0-9_-]+$`.
///
/// # Errors
/// A message naming `field`.
pub fn validate_tag(field: &str, raw: &str) -> Result<(), String> {
    if raw.is_empty() {
        return Err(format!("{field} must be non-empty"));
    }
    if raw.len() > 200 {
        return Err(format!("{field} must be at most 200 characters"));
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "{field} must match ^[a-z0-9_-]+$ (lowercase alphanumerics, underscore, hyphen), got '{raw}'"
        ));
    }
    Ok(())
}

/// One key lifecycle change, identified so it is recorded once per store whoever records it
/// (the CLI, the admin API, the gateway's sweep, or the gateway observing its keystore).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyChange {
    Issued {
        key_id: String,
    },
    Rotated {
        old_key_id: String,
        new_key_id: String,
    },
    Revoked {
        key_id: String,
    },
    Expired {
        key_id: String,
    },
}

impl KeyChange {
    /// The change a stored `gateway.key_*` event records (`None` for other events or a
    /// payload without the ids).
    #[must_use]
    pub fn of_event(event_type: &str, payload_json: &str) -> Option<KeyChange> {
        let v: Value = serde_json::from_str(payload_json).ok()?;
        let field = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_owned);
        match event_type {
            crate::events::types::GATEWAY_KEY_ISSUED => Some(KeyChange::Issued {
                key_id: field("gateway_key_id")?,
            }),
            crate::events::types::GATEWAY_KEY_REVOKED => Some(KeyChange::Revoked {
                key_id: field("gateway_key_id")?,
            }),
            crate::events::types::GATEWAY_KEY_ROTATED => Some(KeyChange::Rotated {
                old_key_id: field("old_gateway_key_id")?,
                new_key_id: field("new_gateway_key_id")?,
            }),
            crate::events::types::GATEWAY_KEY_EXPIRED => Some(KeyChange::Expired {
                key_id: field("gateway_key_id")?,
            }),
            _ => None,
        }
    }
}

/// The audit event of a lifecycle change a key set shows.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyChangeEvent {
    /// Boxed: an issue carries every setting of the key, several times the other events.
    Issued(Box<KeyIssued>),
    Rotated(KeyRotated),
    Revoked(KeyRevoked),
    Expired(KeyExpired),
}

impl KeyChangeEvent {
    /// The change this event records.
    #[must_use]
    pub fn change(&self) -> KeyChange {
        match self {
            KeyChangeEvent::Issued(p) => KeyChange::Issued {
                key_id: p.gateway_key_id.clone(),
            },
            KeyChangeEvent::Rotated(p) => KeyChange::Rotated {
                old_key_id: p.old_gateway_key_id.clone(),
                new_key_id: p.new_gateway_key_id.clone(),
            },
            KeyChangeEvent::Revoked(p) => KeyChange::Revoked {
                key_id: p.gateway_key_id.clone(),
            },
            KeyChangeEvent::Expired(p) => KeyChange::Expired {
                key_id: p.gateway_key_id.clone(),
            },
        }
    }
}

/// The revocation `key` shows at `now`: an explicit revoke (`admin_revoke`), a recorded grace
/// lapse (`revoked_at` equal to the grace end), or a grace end that has passed while the key
/// is still stored as active (a read-only keystore nobody swept).
#[must_use]
pub fn shown_revocation(
    key: &KeyRecord,
    now: Timestamp,
    source: &'static str,
) -> Option<KeyRevoked> {
    let grace_end = key
        .grace_period_until
        .as_deref()
        .and_then(|g| crate::time::parse_iso(g).ok());
    let (revoked_at, reason) = match key.status {
        KeyStatus::Revoked => {
            let at = key.revoked_at.clone().unwrap_or_default();
            let lapsed = grace_end.is_some() && grace_end == crate::time::parse_iso(&at).ok();
            (at, if lapsed { GRACE_EXPIRED } else { ADMIN_REVOKE })
        }
        KeyStatus::Active => match grace_end {
            Some(end) if now >= end => (format_iso(end), GRACE_EXPIRED),
            _ => return None,
        },
    };
    Some(KeyRevoked {
        gateway_key_id: key.key_id.clone(),
        revoked_at,
        reason,
        source,
        admin: None,
    })
}

/// The expiry `key` shows at `now`: its `expires_at` has passed and the key was still usable
/// then (not revoked, by an operator or a lapsed grace period, at or before that instant). An
/// expiry is recorded by the gateway that sees it pass, with `source` = `gateway`.
#[must_use]
pub fn shown_expiry(key: &KeyRecord, now: Timestamp) -> Option<KeyExpired> {
    let end = key.expiry()?;
    if now < end {
        return None;
    }
    let parse = |t: Option<&str>| t.and_then(|t| crate::time::parse_iso(t).ok());
    let ended_before = match key.status {
        // A revoked record without a parseable time ended before anything we can show.
        KeyStatus::Revoked => parse(key.revoked_at.as_deref()).is_none_or(|r| r <= end),
        KeyStatus::Active => parse(key.grace_period_until.as_deref()).is_some_and(|g| g <= end),
    };
    if ended_before {
        return None;
    }
    Some(KeyExpired {
        gateway_key_id: key.key_id.clone(),
        expires_at: format_iso(end),
        workspace_path: key.workspace_path.clone(),
        user_id: key.user_id.clone(),
        team_id: key.team_id.clone(),
        source: crate::events::key_sources::GATEWAY,
    })
}

/// `reason` of a revocation by an operator.
pub const ADMIN_REVOKE: &str = "admin_revoke";
/// `reason` of a revocation because a rotation grace period ended.
pub const GRACE_EXPIRED: &str = "grace_period_expired";

/// The key `successor` was rotated from. Exact when the successor names it
/// ([`KeyRecord::rotated_from`]); for keys rotated by older releases, inferred from the shared
/// spend account: the latest key of that account created before the successor, preferring
/// keys that carry a grace end (a rotated key does), so a chain A→B→C resolves to B for C.
fn predecessor<'a>(keys: &'a [KeyRecord], successor: &KeyRecord) -> Option<&'a KeyRecord> {
    if let Some(id) = successor.rotated_from() {
        return keys
            .iter()
            .find(|k| k.key_id == id && k.key_id != successor.key_id);
    }
    let account = successor.spend_account.as_deref()?;
    if account == successor.key_id {
        return None;
    }
    let created = |k: &KeyRecord| {
        k.created_at
            .as_deref()
            .and_then(|c| crate::time::parse_iso(c).ok())
    };
    let born = created(successor)?;
    let older: Vec<&KeyRecord> = keys
        .iter()
        .filter(|k| k.key_id != successor.key_id && k.account() == account)
        .filter(|k| created(k).is_some_and(|c| c < born))
        .collect();
    let rotated: Vec<&KeyRecord> = older
        .iter()
        .copied()
        .filter(|k| k.grace_period_until.is_some())
        .collect();
    let pool = if rotated.is_empty() { older } else { rotated };
    pool.into_iter().max_by_key(|k| created(k))
}

/// Every lifecycle change `keys` shows at `now`, as the events `source` would record, ordered
/// by when each happened (keystore order among equal times): each key's issue; for a rotated
/// successor, its rotation (before its issue, as `rotate-key` records them); each revocation,
/// including grace ends that have passed; each expiry that has passed ([`shown_expiry`]).
///
/// A rotation whose predecessor is no longer in the set, or shows no grace end or revocation
/// time, is left out (its grace end is unknown); the successor's issue is still shown.
#[must_use]
pub fn shown_changes(
    keys: &[KeyRecord],
    now: Timestamp,
    source: &'static str,
) -> Vec<KeyChangeEvent> {
    let at = |iso: Option<&str>| {
        iso.and_then(|t| crate::time::parse_iso(t).ok())
            .unwrap_or(i64::MIN)
    };
    let mut out: Vec<(Timestamp, KeyChangeEvent)> = Vec::new();
    for key in keys {
        let born = at(key.created_at.as_deref());
        if let Some(old) = predecessor(keys, key) {
            let grace = old
                .grace_period_until
                .clone()
                .or_else(|| old.revoked_at.clone());
            if let Some(grace_period_until) = grace {
                out.push((
                    born,
                    KeyChangeEvent::Rotated(KeyRotated {
                        old_gateway_key_id: old.key_id.clone(),
                        new_gateway_key_id: key.key_id.clone(),
                        grace_period_until,
                        workspace_path: key.workspace_path.clone(),
                        user_id: key.user_id.clone(),
                        team_id: key.team_id.clone(),
                        source,
                        admin: None,
                    }),
                ));
            }
        }
        out.push((
            born,
            KeyChangeEvent::Issued(Box::new(KeyIssued::of(key, source))),
        ));
        if let Some(revoked) = shown_revocation(key, now, source) {
            out.push((
                at(Some(&revoked.revoked_at)),
                KeyChangeEvent::Revoked(revoked),
            ));
        }
        if let Some(expired) = shown_expiry(key, now) {
            out.push((
                at(Some(&expired.expires_at)),
                KeyChangeEvent::Expired(expired),
            ));
        }
    }
    out.sort_by_key(|(t, _)| *t);
    out.into_iter().map(|(_, e)| e).collect()
}

/// The earliest grace end or expiry after `now` among keys still active: when the set next
/// shows a change without being edited.
#[must_use]
pub fn next_lapse(keys: &[KeyRecord], now: Timestamp) -> Option<Timestamp> {
    keys.iter()
        .filter(|k| k.status == KeyStatus::Active)
        .flat_map(|k| {
            let grace = k
                .grace_period_until
                .as_deref()
                .and_then(|g| crate::time::parse_iso(g).ok());
            [grace, k.expiry()]
        })
        .flatten()
        .filter(|end| *end > now)
        .min()
}

/// How a rotation sets the successor's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RotationExpiry {
    /// The successor expires at the predecessor's `expires_at` (none when it has none): a
    /// rotation never extends a key's life unless asked to.
    #[default]
    Keep,
    /// The successor expires this many seconds after the rotation (`--expires-in`).
    ExpiresIn(u64),
    /// The successor never expires (`--no-expiry`).
    Never,
}

impl RotationExpiry {
    /// The successor's `expires_at` when `predecessor` is rotated at `now`.
    ///
    /// # Errors
    /// A message when the duration overflows the timestamp range.
    pub fn successor_expiry(
        self,
        predecessor: &KeyRecord,
        now: Timestamp,
    ) -> Result<Option<String>, String> {
        match self {
            RotationExpiry::Keep => Ok(predecessor.expires_at.clone()),
            RotationExpiry::Never => Ok(None),
            RotationExpiry::ExpiresIn(secs) => expiry_after(now, secs).map(Some),
        }
    }
}

/// `now + secs` as ISO-8601, for `--expires-in`.
///
/// # Errors
/// A message when `secs` is zero or too large.
pub fn expiry_after(now: Timestamp, secs: u64) -> Result<String, String> {
    if secs == 0 {
        return Err("must be more than zero".into());
    }
    i64::try_from(secs)
        .ok()
        .and_then(|s| s.checked_mul(crate::time::MICROS_PER_SEC))
        .and_then(|us| now.checked_add(us))
        .filter(|t| *t < MAX_EXPIRY_US)
        .map(format_iso)
        .ok_or_else(|| format!("{secs}s is too far in the future"))
}

/// Expiries are refused from year 10000 on (RFC 3339 cannot write them).
const MAX_EXPIRY_US: Timestamp = 253_402_300_800 * crate::time::MICROS_PER_SEC;

/// The `expires_at` of a new key from `--expires-in` (a duration, see
/// [`crate::time::parse_duration_secs`]) or `--expires-at` (RFC 3339 with an offset); at most
/// one of the two, and in the future. `in_field`/`at_field` name the two inputs in errors (the
/// CLI flags or the API fields).
///
/// # Errors
/// A message naming the offending field.
pub fn resolve_expiry(
    expires_in: Option<&str>,
    expires_at: Option<&str>,
    now: Timestamp,
    in_field: &str,
    at_field: &str,
) -> Result<Option<String>, String> {
    match (expires_in, expires_at) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(format!("give {in_field} or {at_field}, not both")),
        (Some(raw), None) => {
            let secs =
                crate::time::parse_duration_secs(raw).map_err(|e| format!("{in_field}: {e}"))?;
            expiry_after(now, secs)
                .map(Some)
                .map_err(|e| format!("{in_field}: {e}"))
        }
        (None, Some(raw)) => {
            let t = crate::time::parse_iso(raw).map_err(|e| format!("{at_field}: {e}"))?;
            if t <= now {
                return Err(format!(
                    "{at_field}: '{raw}' is not in the future (now is {})",
                    format_iso(now)
                ));
            }
            if t >= MAX_EXPIRY_US {
                return Err(format!("{at_field}: '{raw}' is too far in the future"));
            }
            Ok(Some(format_iso(t)))
        }
    }
}

#[cfg(test)]
mod tests;
