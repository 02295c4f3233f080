//! Writing and removing event rows together with every secondary index entry, inside one
//! write transaction (the caller's).
//!
//! Invariants:
//! - A row and all of its index entries are inserted or removed together: [`EventTables`] is
//!   the only code that touches the event tables for writing.
//! - Index keys derive from the stored row only (payload fields `gateway_key_id`, `user_id`,
//!   `team_id`, `audit_seq`), so removal recomputes exactly the keys insertion wrote.
//! - The audit chain's tail (`meta.audit_tail_seq`/`audit_tail_hash`) is read and written
//!   in the same transaction as the rows, so writers in several processes extend one chain.

use metis_domain::audit::{ChainTail, ChainedRow, GENESIS_HASH, Link, row_hash};
use redb::{ReadableTable, Table, WriteTransaction};
use serde_json::Value;

use crate::db::{
    AUDIT_CHAIN, EV_BY_KEY, EV_BY_SESSION, EV_BY_TEAM, EV_BY_TIME, EV_BY_TURN, EV_BY_TYPE_TIME,
    EV_BY_USER, EVENTS, EventTuple, EventValue, META, META_AUDIT_HASH, META_AUDIT_SEQ, Result,
};

/// A borrowed event row.
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    pub id: &'a str,
    pub timestamp_us: i64,
    pub session_id: &'a str,
    pub turn_id: Option<&'a str>,
    pub parent_event_id: Option<&'a str>,
    pub event_type: &'a str,
    pub actor: &'a str,
    pub sensitivity: &'a str,
    pub payload_json: &'a str,
}

/// Payload-derived index keys.
#[derive(Debug, Default)]
pub(crate) struct Derived {
    pub key: Option<String>,
    pub user: Option<String>,
    pub team: Option<String>,
    pub audit_seq: Option<u64>,
}

/// The payload fields the indexes read; everything else is skipped by the parser without
/// building a value tree (this runs for every written event).
#[derive(serde::Deserialize)]
struct IndexedFields {
    gateway_key_id: Option<Value>,
    user_id: Option<Value>,
    team_id: Option<Value>,
    audit_seq: Option<Value>,
}

fn value_text(v: Option<Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s),
        Value::Bool(b) => Some(if b { "1".into() } else { "0".into() }),
        other => Some(other.to_string()),
    }
}

pub(crate) fn derive(payload_json: &str) -> Derived {
    let Ok(f) = serde_json::from_str::<IndexedFields>(payload_json) else {
        return Derived::default();
    };
    Derived {
        key: value_text(f.gateway_key_id),
        user: value_text(f.user_id),
        team: value_text(f.team_id),
        audit_seq: f.audit_seq.as_ref().and_then(Value::as_u64),
    }
}

/// The event tables of one write transaction.
pub(crate) struct EventTables<'txn> {
    events: Table<'txn, &'static str, EventValue>,
    by_session: Table<'txn, (&'static str, &'static str), ()>,
    by_turn: Table<'txn, (&'static str, &'static str), ()>,
    by_type_time: Table<'txn, (&'static str, i64, &'static str), ()>,
    by_time: Table<'txn, (i64, &'static str), ()>,
    by_key: Table<'txn, (&'static str, i64, &'static str), ()>,
    by_user: Table<'txn, (&'static str, i64, &'static str), ()>,
    by_team: Table<'txn, (&'static str, i64, &'static str), ()>,
    chain: Table<'txn, u64, &'static str>,
    meta: Table<'txn, &'static str, &'static str>,
}

impl<'txn> EventTables<'txn> {
    pub(crate) fn open(tx: &'txn WriteTransaction) -> Result<Self> {
        Ok(Self {
            events: tx.open_table(EVENTS)?,
            by_session: tx.open_table(EV_BY_SESSION)?,
            by_turn: tx.open_table(EV_BY_TURN)?,
            by_type_time: tx.open_table(EV_BY_TYPE_TIME)?,
            by_time: tx.open_table(EV_BY_TIME)?,
            by_key: tx.open_table(EV_BY_KEY)?,
            by_user: tx.open_table(EV_BY_USER)?,
            by_team: tx.open_table(EV_BY_TEAM)?,
            chain: tx.open_table(AUDIT_CHAIN)?,
            meta: tx.open_table(META)?,
        })
    }

    /// Whether an event with this id is stored.
    pub(crate) fn contains(&self, id: &str) -> Result<bool> {
        Ok(self.events.get(id)?.is_some())
    }

    /// The chain's tail as stored in `meta` (genesis when empty).
    pub(crate) fn chain_tail(&self) -> Result<ChainTail> {
        let seq = self
            .meta
            .get(META_AUDIT_SEQ)?
            .and_then(|g| g.value().parse::<u64>().ok())
            .unwrap_or(0);
        let hash = self
            .meta
            .get(META_AUDIT_HASH)?
            .map(|g| g.value().to_owned())
            .filter(|_| seq > 0)
            .unwrap_or_else(|| GENESIS_HASH.to_owned());
        Ok(ChainTail { seq, hash })
    }

    pub(crate) fn set_chain_tail(&mut self, seq: u64, hash: &str) -> Result<()> {
        self.meta.insert(META_AUDIT_SEQ, seq.to_string().as_str())?;
        self.meta.insert(META_AUDIT_HASH, hash)?;
        Ok(())
    }

    /// Insert `row` and its index entries (the caller checked the id is new). A row whose
    /// payload carries an integer `audit_seq` is entered in the chain index, and becomes the
    /// tail when its sequence number is the highest (imports keep their chain). `link`: the
    /// link the writer just gave the row (`AuditChain`), whose hash is then not computed again.
    pub(crate) fn insert(&mut self, row: &RowRef<'_>, link: Option<&Link>) -> Result<()> {
        let value: EventTuple<'_> = (
            row.timestamp_us,
            row.session_id,
            row.turn_id,
            row.parent_event_id,
            row.event_type,
            row.actor,
            row.sensitivity,
            row.payload_json,
        );
        self.events.insert(row.id, value)?;
        self.by_session.insert((row.session_id, row.id), ())?;
        if let Some(t) = row.turn_id {
            self.by_turn.insert((t, row.id), ())?;
        }
        self.by_type_time
            .insert((row.event_type, row.timestamp_us, row.id), ())?;
        self.by_time.insert((row.timestamp_us, row.id), ())?;
        let d = derive(row.payload_json);
        if let Some(k) = &d.key {
            self.by_key
                .insert((k.as_str(), row.timestamp_us, row.id), ())?;
        }
        if let Some(u) = &d.user {
            self.by_user
                .insert((u.as_str(), row.timestamp_us, row.id), ())?;
        }
        if let Some(t) = &d.team {
            self.by_team
                .insert((t.as_str(), row.timestamp_us, row.id), ())?;
        }
        if let Some(seq) = d.audit_seq {
            self.chain.insert(seq, row.id)?;
            if seq > self.chain_tail()?.seq {
                let hash = match link {
                    Some(l) if l.seq == seq => l.hash.clone(),
                    _ => row_hash(&ChainedRow {
                        id: row.id,
                        timestamp_us: row.timestamp_us,
                        session_id: row.session_id,
                        event_type: row.event_type,
                        payload_json: row.payload_json,
                    }),
                };
                self.set_chain_tail(seq, &hash)?;
            }
        }
        Ok(())
    }

    /// Remove the event `id` and its index entries. Returns whether it existed. The chain
    /// index entry goes too (retention never removes audit events, so this only happens to
    /// rows an operator deleted on purpose).
    pub(crate) fn remove(&mut self, id: &str) -> Result<bool> {
        let Some(v) = self.events.remove(id)? else {
            return Ok(false);
        };
        let (ts, session, turn, _parent, ty, _actor, _sens, payload) = v.value();
        let (session, turn, ty, payload) = (
            session.to_owned(),
            turn.map(str::to_owned),
            ty.to_owned(),
            payload.to_owned(),
        );
        drop(v);
        self.by_session.remove((session.as_str(), id))?;
        if let Some(t) = &turn {
            self.by_turn.remove((t.as_str(), id))?;
        }
        self.by_type_time.remove((ty.as_str(), ts, id))?;
        self.by_time.remove((ts, id))?;
        let d = derive(&payload);
        if let Some(k) = &d.key {
            self.by_key.remove((k.as_str(), ts, id))?;
        }
        if let Some(u) = &d.user {
            self.by_user.remove((u.as_str(), ts, id))?;
        }
        if let Some(t) = &d.team {
            self.by_team.remove((t.as_str(), ts, id))?;
        }
        if let Some(seq) = d.audit_seq {
            let same = self.chain.get(seq)?.is_some_and(|g| g.value() == id);
            if same {
                self.chain.remove(seq)?;
            }
        }
        Ok(true)
    }
}
