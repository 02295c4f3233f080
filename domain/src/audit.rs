//! The tamper-evident audit chain.
//!
//! Every audit event (key lifecycle, auth and quota events, `trace.swept`, …) carries two extra
//! payload fields, assigned by the single writer inside its write transaction:
//! `audit_seq` (1, 2, 3, … per database) and `audit_prev_hash` (the [`row_hash`] of the audit
//! event with the previous sequence number; 64 zeros for the first). Changing, deleting or
//! reordering any audit row breaks the chain at that row, and [`verify`] names the first
//! broken link. Sequence numbers (not ids) define the chain order because several processes
//! (the gateway, CLI admin commands) may write, and ids are minted before the write.

use sha2::{Digest, Sha256};

/// Event types retained forever and chained.
pub const AUDIT_TYPES: [&str; 12] = [
    "gateway.key_issued",
    "gateway.key_revoked",
    "gateway.key_rotated",
    "gateway.auth_failed",
    "gateway.quota_exceeded",
    "quota.alert",
    "gateway.key_leak_suspected",
    "gateway.rate_limited",
    "trace.swept",
    "routing.policy_invalid",
    "pattern.evicted",
    "memory.eviction",
];

/// The `prev_hash` of the first audit event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Whether `event_type` is an audit type.
#[must_use]
pub fn is_audit_type(event_type: &str) -> bool {
    AUDIT_TYPES.contains(&event_type)
}

/// The fields of a stored audit row that the chain covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainedRow<'a> {
    pub id: &'a str,
    pub timestamp_us: i64,
    pub session_id: &'a str,
    pub event_type: &'a str,
    /// The stored payload, including `audit_seq` and `audit_prev_hash`.
    pub payload_json: &'a str,
}

/// SHA-256 (hex) over the row's fields, each length-prefixed so no two rows collide by
/// shifting bytes between fields.
#[must_use]
pub fn row_hash(row: &ChainedRow<'_>) -> String {
    let mut h = Sha256::new();
    for part in [
        row.id.as_bytes(),
        row.timestamp_us.to_string().as_bytes(),
        row.session_id.as_bytes(),
        row.event_type.as_bytes(),
        row.payload_json.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// Add `audit_seq` and `audit_prev_hash` to a payload (a JSON object text). Returns `None`
/// when the payload is not a JSON object.
#[must_use]
pub fn chain_payload(payload_json: &str, seq: u64, prev_hash: &str) -> Option<String> {
    let mut v: serde_json::Value = serde_json::from_str(payload_json).ok()?;
    let obj = v.as_object_mut()?;
    obj.insert("audit_seq".to_owned(), serde_json::Value::from(seq));
    obj.insert(
        "audit_prev_hash".to_owned(),
        serde_json::Value::String(prev_hash.to_owned()),
    );
    serde_json::to_string(&v).ok()
}

/// The first problem found in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// Id of the first row that does not link.
    pub id: String,
    pub expected_seq: u64,
    pub problem: String,
}

/// Verify rows given in `audit_seq` order. Each row must carry the next sequence number and
/// the hash of its predecessor.
///
/// # Errors
/// The first broken link.
pub fn verify<'a>(rows: impl IntoIterator<Item = ChainedRow<'a>>) -> Result<u64, BrokenLink> {
    let mut prev = GENESIS_HASH.to_owned();
    let mut expected = 1u64;
    for row in rows {
        let broken = |problem: String| BrokenLink {
            id: row.id.to_owned(),
            expected_seq: expected,
            problem,
        };
        let v: serde_json::Value = serde_json::from_str(row.payload_json)
            .map_err(|e| broken(format!("payload is not JSON ({e})")))?;
        let seq = v.get("audit_seq").and_then(serde_json::Value::as_u64);
        if seq != Some(expected) {
            return Err(broken(format!(
                "audit_seq is {}, expected {expected} (a row was removed, inserted or reordered)",
                seq.map_or_else(|| "missing".to_owned(), |s| s.to_string())
            )));
        }
        let link = v.get("audit_prev_hash").and_then(serde_json::Value::as_str);
        if link != Some(prev.as_str()) {
            return Err(broken(
                "audit_prev_hash does not match the previous audit event (it was modified)"
                    .to_owned(),
            ));
        }
        prev = row_hash(&row);
        expected += 1;
    }
    Ok(expected - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut prev = GENESIS_HASH.to_owned();
        for i in 0..n {
            let id = format!("01ID{i:04}");
            let payload = chain_payload(r#"{"reason":"x"}"#, i as u64 + 1, &prev).unwrap();
            prev = row_hash(&ChainedRow {
                id: &id,
                timestamp_us: i as i64,
                session_id: "system",
                event_type: "gateway.key_issued",
                payload_json: &payload,
            });
            out.push((id, payload));
        }
        out
    }

    fn rows(c: &[(String, String)]) -> Vec<ChainedRow<'_>> {
        c.iter()
            .enumerate()
            .map(|(i, (id, p))| ChainedRow {
                id,
                timestamp_us: i as i64,
                session_id: "system",
                event_type: "gateway.key_issued",
                payload_json: p,
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let c = chain(5);
        assert_eq!(verify(rows(&c)), Ok(5));
    }

    #[test]
    fn a_modified_row_breaks_the_next_link() {
        let mut c = chain(5);
        c[2].1 = c[2].1.replace("\"x\"", "\"y\"");
        let err = verify(rows(&c)).unwrap_err();
        assert_eq!(err.id, "01ID0003");
    }

    #[test]
    fn a_deleted_row_is_named() {
        let mut c = chain(5);
        c.remove(1);
        let err = verify(rows(&c)).unwrap_err();
        assert_eq!((err.id.as_str(), err.expected_seq), ("01ID0002", 2));
    }
}
