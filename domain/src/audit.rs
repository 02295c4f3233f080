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

use crate::events::Event;

/// Event types retained forever and chained.
pub const AUDIT_TYPES: [&str; 22] = [
    "gateway.key_issued",
    "gateway.key_revoked",
    "gateway.key_rotated",
    "gateway.key_expired",
    "gateway.key_updated",
    "gateway.auth_failed",
    "gateway.quota_exceeded",
    "quota.alert",
    "quota.alert_delivered",
    "quota.alert_undelivered",
    "gateway.key_leak_suspected",
    "gateway.rate_limited",
    "trace.swept",
    "routing.policy_invalid",
    "pattern.evicted",
    "memory.eviction",
    "gateway.budget_set",
    "gateway.budget_deleted",
    "gateway.model_group_set",
    "gateway.model_group_deleted",
    "gateway.route_set",
    "gateway.route_deleted",
];

/// The `prev_hash` of the first audit event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Whether `event_type` is an audit type.
#[must_use]
pub fn is_audit_type(event_type: &str) -> bool {
    AUDIT_TYPES.contains(&event_type)
}

/// The audit types an audit read covers: all of them when `requested` is empty, else the
/// requested ones that are audit types (deduplicated, catalogue order). Empty means "nothing
/// to read".
#[must_use]
pub fn audit_types_for(requested: &[String]) -> Vec<&'static str> {
    AUDIT_TYPES
        .iter()
        .copied()
        .filter(|t| requested.is_empty() || requested.iter().any(|r| r == t))
        .collect()
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

/// The last link of a chain: its sequence number and the [`row_hash`] of its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainTail {
    pub seq: u64,
    pub hash: String,
}

impl Default for ChainTail {
    fn default() -> Self {
        Self::genesis()
    }
}

impl ChainTail {
    /// The tail of an empty chain: sequence 0, [`GENESIS_HASH`].
    #[must_use]
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }

    /// The tail a stored row with sequence number `seq` makes (for stores that keep rows,
    /// not the tail's hash).
    #[must_use]
    pub fn of_row(seq: u64, row: &ChainedRow<'_>) -> Self {
        Self {
            seq,
            hash: row_hash(row),
        }
    }
}

/// The link an audit event gets: the payload to store, its sequence number and the hash of
/// the stored row (the next link's `audit_prev_hash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub seq: u64,
    pub payload_json: String,
    pub hash: String,
}

/// What [`AuditChain::link`] decided for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linking {
    /// Not an audit type: store the payload as given.
    NotAudit,
    /// An audit event whose payload is not a JSON object, so it cannot carry a link. Store it
    /// as given (the record is kept); `metis audit verify` reports the unchained row.
    Unlinkable,
    /// Store `Link::payload_json`, then report the row stored with [`AuditChain::stored`].
    Linked(Link),
}

/// Chains the audit events of one write transaction onto the stored chain: the single rule
/// both storage adapters and the port fakes apply, so the links (and the stored bytes) are
/// the same whatever the backend.
///
/// Lifecycle per transaction: [`link`](Self::link) each event in insertion order (the store's
/// tail is read on the first audit event only, inside the transaction that holds the write
/// lock, so writers in several processes extend one chain); insert the row; call
/// [`stored`](Self::stored) once the row is in. A row the store refuses does not advance the
/// chain, so the next audit event takes its sequence number. A new transaction (a retried
/// batch included) starts from a new `AuditChain` and re-reads the tail.
#[derive(Debug, Default)]
pub struct AuditChain {
    tail: Option<ChainTail>,
}

impl AuditChain {
    /// A chain whose tail is not read yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The link for `event` (see [`Linking`]). `read_tail` gives the stored tail; it is called
    /// at most once per `AuditChain`, for its first audit event.
    ///
    /// # Errors
    /// `read_tail`'s error.
    pub fn link<E>(
        &mut self,
        event: &Event,
        read_tail: impl FnOnce() -> Result<ChainTail, E>,
    ) -> Result<Linking, E> {
        if !is_audit_type(event.event_type) {
            return Ok(Linking::NotAudit);
        }
        let tail = match &mut self.tail {
            Some(t) => t,
            None => self.tail.insert(read_tail()?),
        };
        let seq = tail.seq + 1;
        let Some(payload_json) = chain_payload(&event.payload_json, seq, &tail.hash) else {
            return Ok(Linking::Unlinkable);
        };
        let hash = row_hash(&ChainedRow {
            id: &event.id,
            timestamp_us: event.timestamp_us,
            session_id: &event.session_id,
            event_type: event.event_type,
            payload_json: &payload_json,
        });
        Ok(Linking::Linked(Link {
            seq,
            payload_json,
            hash,
        }))
    }

    /// The row carrying `link` was stored: it is the new tail.
    pub fn stored(&mut self, link: &Link) {
        self.tail = Some(ChainTail {
            seq: link.seq,
            hash: link.hash.clone(),
        });
    }

    /// The tail after the rows stored so far (`None` before the first audit event).
    #[must_use]
    pub fn tail(&self) -> Option<&ChainTail> {
        self.tail.as_ref()
    }
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

    fn event(id: &str, event_type: &'static str, payload: &str) -> Event {
        Event {
            id: id.to_owned(),
            timestamp_us: 7,
            session_id: "system".to_owned(),
            turn_id: None,
            parent_event_id: None,
            event_type,
            actor: crate::events::Actor::System,
            sensitivity: crate::events::Sensitivity::Pseudonymous,
            payload_json: payload.to_owned(),
        }
    }

    /// The links `AuditChain` hands out are the ones `verify` accepts, the tail is read once
    /// per transaction, and a row the store refused does not use up a sequence number.
    #[test]
    fn the_audit_chain_links_from_the_stored_tail_and_skips_refused_rows() {
        let mut reads = 0;
        let mut chain = AuditChain::new();
        let mut stored: Vec<(String, String)> = Vec::new();
        let events = [
            event("01A", "gateway.key_issued", r#"{"k":1}"#),
            event("01B", "llm.call_completed", "{}"),
            event("01C", "gateway.key_revoked", r#"{"k":2}"#),
            event("01D", "gateway.key_rotated", r#"{"k":3}"#),
            event("01E", "gateway.key_issued", "[1]"),
        ];
        for (i, e) in events.iter().enumerate() {
            let linking = chain
                .link(e, || {
                    reads += 1;
                    Ok::<_, ()>(ChainTail::genesis())
                })
                .unwrap();
            match (i, linking) {
                (1, Linking::NotAudit) | (4, Linking::Unlinkable) => {}
                // The store refuses the third event: its link is not stored.
                (2, Linking::Linked(l)) => assert_eq!(l.seq, 2),
                (0 | 3, Linking::Linked(l)) => {
                    chain.stored(&l);
                    stored.push((e.id.clone(), l.payload_json));
                }
                (i, other) => panic!("event {i}: {other:?}"),
            }
        }
        assert_eq!(reads, 1);
        assert_eq!(chain.tail().map(|t| t.seq), Some(2));
        let rows: Vec<ChainedRow<'_>> = stored
            .iter()
            .map(|(id, p)| ChainedRow {
                id,
                timestamp_us: 7,
                session_id: "system",
                event_type: if id == "01A" {
                    "gateway.key_issued"
                } else {
                    "gateway.key_rotated"
                },
                payload_json: p,
            })
            .collect();
        assert_eq!(verify(rows.iter().copied()), Ok(2));
        let last = rows.last().copied().unwrap();
        assert_eq!(chain.tail(), Some(&ChainTail::of_row(2, &last)));
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
