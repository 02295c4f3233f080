//! Gateway keys: the stored record, its lifecycle state and the validation rules.
//!
//! Invariants:
//! - A token is `gw_` + at least 128 bits of CSPRNG output, independent of the key id
//!   (`gk_<ULID>`); only its SHA-256 (lowercase hex) is ever stored.
//! - A key is active iff its status is not `revoked` and its grace end (if any) is in the future.

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
    #[serde(default)]
    pub status: KeyStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_until: Option<String>,
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

/// Why a key cannot be used right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inactive {
    /// Explicitly revoked at this time (ISO-8601), if recorded.
    Revoked { at: Option<String> },
    /// Rotation grace ended at this time (ISO-8601).
    GraceLapsed { at: String },
}

impl KeyRecord {
    /// The spend account this key charges (its own id unless inherited by rotation).
    #[must_use]
    pub fn account(&self) -> &str {
        self.spend_account.as_deref().unwrap_or(&self.key_id)
    }

    /// Effective status at `now`: `revoked` when revoked or past its grace end.
    #[must_use]
    pub fn effective_status(&self, now: Timestamp) -> &'static str {
        if self.check_active(now).is_ok() {
            "active"
        } else {
            "revoked"
        }
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
            ("monthly_cap_usd", &self.monthly_cap_usd),
        ] {
            if let Some(c) = cap {
                validate_cap(field, c).map_err(|e| format!("{id}: {e}"))?;
            }
        }
        for (field, tag) in [("user_id", &self.user_id), ("team_id", &self.team_id)] {
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
        if self.status == KeyStatus::Revoked && self.revoked_at.is_none() {
            return Err(format!("{id}: status 'revoked' requires revoked_at"));
        }
        for (field, ts) in [
            ("created_at", &self.created_at),
            ("revoked_at", &self.revoked_at),
            ("grace_period_until", &self.grace_period_until),
        ] {
            if let Some(t) = ts {
                crate::time::parse_iso(t).map_err(|e| format!("{id}: {field}: {e}"))?;
            }
        }
        Ok(())
    }
}

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

#[cfg(test)]
mod tests {
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
            spend_account: None,
            extra: Map::new(),
        }
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
}
