//! The keystore document: `{"keys": [ … ], "budgets": [ … ], "model_groups": [ … ],
//! "routes": [ … ]}` parsed, validated and re-serialised (the policy arrays are optional;
//! absent = none).
//!
//! Invariants:
//! - A document is either fully valid or rejected: every record passes `KeyRecord::validate`,
//!   and no two records share a `key_id` or a `secret_hash` (compared lowercase).
//! - Rewriting never loses data: the root object and every existing entry are kept as the raw
//!   JSON that was read (unknown top-level keys and unknown per-key fields included); only new
//!   entries are serialised from `KeyRecord`.
//! - Output matches the original tool's layout: object keys sorted, 2-space indent, UTF-8,
//!   trailing newline.
//! - Error messages name the entry (`keys[i]`, its `key_id`) and the field; they never contain
//!   a secret (a `secret_hash` is not a secret, but it is still not echoed).

use std::collections::HashMap;

use metis_domain::budgets::Policies;
use metis_domain::keys::KeyRecord;
use serde_json::{Map, Value};

/// The top-level arrays that hold the policies.
const POLICY_FIELDS: [&str; 3] = ["budgets", "model_groups", "routes"];

/// A parsed, validated keystore document.
#[derive(Debug, Clone)]
pub(crate) struct Document {
    /// The root object as read; `keys` is kept in sync with `records`.
    root: Map<String, Value>,
    /// The validated records (with `secret_hash` lowercased), in file order.
    records: Vec<KeyRecord>,
    /// The validated budgets and model groups.
    policies: Policies,
}

/// Why an insert conflicts with the stored set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Conflict {
    /// The new record's `key_id` is taken.
    KeyId(String),
    /// The new record's `secret_hash` belongs to this existing key.
    SecretHash { existing_key_id: String },
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Check the JSON type of every field `KeyRecord` knows, so a mistake is reported with the
/// field name (serde's own messages do not name the field for type mismatches).
fn check_field_types(obj: &Map<String, Value>) -> Result<(), String> {
    for field in ["key_id", "secret_hash", "workspace_path"] {
        match obj.get(field) {
            None => return Err(format!("missing required field '{field}'")),
            Some(Value::String(_)) => {}
            Some(other) => {
                return Err(format!(
                    "field '{field}' must be a string, found {}",
                    json_type(other)
                ));
            }
        }
    }
    for field in [
        "name",
        "created_at",
        "user_id",
        "team_id",
        "customer_tier",
        "revoked_at",
        "grace_period_until",
    ] {
        match obj.get(field) {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(other) => {
                return Err(format!(
                    "field '{field}' must be a string, found {}",
                    json_type(other)
                ));
            }
        }
    }
    match obj.get("status") {
        None => {}
        Some(Value::String(s)) if s == "active" || s == "revoked" => {}
        Some(Value::String(s)) => {
            return Err(format!(
                "field 'status' must be \"active\" or \"revoked\", found \"{s}\""
            ));
        }
        Some(other) => {
            return Err(format!(
                "field 'status' must be \"active\" or \"revoked\", found {}",
                json_type(other)
            ));
        }
    }
    match obj.get("allowed_models") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            if let Some((i, bad)) = items.iter().enumerate().find(|(_, v)| !v.is_string()) {
                return Err(format!(
                    "field 'allowed_models' must be a list of strings; item {i} is {}",
                    json_type(bad)
                ));
            }
        }
        Some(other) => {
            return Err(format!(
                "field 'allowed_models' must be a list of strings, found {}",
                json_type(other)
            ));
        }
    }
    for field in ["daily_cap_usd", "monthly_cap_usd"] {
        match obj.get(field) {
            None | Some(Value::Null | Value::String(_) | Value::Number(_)) => {}
            Some(other) => {
                return Err(format!(
                    "field '{field}' must be a decimal string such as \"1.50\", found {}",
                    json_type(other)
                ));
            }
        }
    }
    match obj.get("rpm") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|v| u32::try_from(v).is_ok()) => {}
        Some(other) => {
            return Err(format!(
                "field 'rpm' must be a non-negative integer (requests per minute), found {}",
                match other {
                    Value::Number(n) => format!("{n}"),
                    v => json_type(v).to_owned(),
                }
            ));
        }
    }
    Ok(())
}

/// `keys[i]` plus the key id when there is one, for messages.
fn entry_label(i: usize, entry: &Value) -> String {
    match entry.get("key_id").and_then(Value::as_str) {
        Some(id) => format!("keys[{i}] (key_id '{id}')"),
        None => format!("keys[{i}]"),
    }
}

fn parse_entry(i: usize, entry: &Value) -> Result<KeyRecord, String> {
    let label = entry_label(i, entry);
    let Value::Object(obj) = entry else {
        return Err(format!(
            "{label} must be an object, found {}",
            json_type(entry)
        ));
    };
    check_field_types(obj).map_err(|e| format!("{label}: {e}"))?;
    let mut record: KeyRecord =
        serde_json::from_value(entry.clone()).map_err(|e| format!("{label}: {e}"))?;
    // `validate` messages already start with the key id and name the field.
    record.validate().map_err(|e| format!("keys[{i}]: {e}"))?;
    // Lookups hash presented tokens to lowercase hex; the original lowercased on load too.
    record.secret_hash.make_ascii_lowercase();
    Ok(record)
}

impl Document {
    /// A new, empty keystore.
    pub(crate) fn empty() -> Self {
        let mut root = Map::new();
        root.insert("keys".into(), Value::Array(Vec::new()));
        Self {
            root,
            records: Vec::new(),
            policies: Policies::default(),
        }
    }

    /// Parse and validate the bytes of a keystore file.
    ///
    /// # Errors
    /// A message naming the problem (and the entry and field when it is about one key).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let root: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
        let Value::Object(root) = root else {
            return Err(format!(
                "the root must be a JSON object {{\"keys\": [...]}}, found {}",
                json_type(&root)
            ));
        };
        let entries = match root.get("keys") {
            Some(Value::Array(entries)) => entries,
            Some(other) => {
                return Err(format!(
                    "\"keys\" must be an array, found {}",
                    json_type(other)
                ));
            }
            None => return Err("missing the \"keys\" array".into()),
        };
        let mut records = Vec::with_capacity(entries.len());
        let mut by_id: HashMap<String, usize> = HashMap::new();
        let mut by_hash: HashMap<String, usize> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let record = parse_entry(i, entry)?;
            if let Some(first) = by_id.insert(record.key_id.clone(), i) {
                return Err(format!(
                    "duplicate key_id '{}' (keys[{first}] and keys[{i}])",
                    record.key_id
                ));
            }
            if let Some(first) = by_hash.insert(record.secret_hash.clone(), i) {
                return Err(format!(
                    "keys[{i}] (key_id '{}') has the same secret_hash as keys[{first}] (key_id '{}')",
                    record.key_id,
                    records_key_id(&records, first)
                ));
            }
            records.push(record);
        }
        let policies = parse_policies(&root)?;
        Ok(Self {
            root,
            records,
            policies,
        })
    }

    pub(crate) fn policies(&self) -> &Policies {
        &self.policies
    }

    /// Replace the budgets and model groups (validated like a file being loaded). An empty
    /// list is removed from the file, so a file that never had policies keeps its layout.
    ///
    /// # Errors
    /// A message naming the invalid entry.
    pub(crate) fn replace_policies(&mut self, policies: &Policies) -> Result<(), String> {
        let value = serde_json::to_value(policies)
            .map_err(|e| format!("cannot serialise the policies: {e}"))?;
        let mut root = self.root.clone();
        for field in POLICY_FIELDS {
            match value.get(field) {
                Some(v) => root.insert(field.to_owned(), v.clone()),
                None => root.remove(field),
            };
        }
        let bytes = serde_json::to_vec(&Value::Object(root))
            .map_err(|e| format!("cannot serialise the keystore: {e}"))?;
        *self = Document::parse(&bytes)?;
        Ok(())
    }

    pub(crate) fn records(&self) -> &[KeyRecord] {
        &self.records
    }

    pub(crate) fn into_records(self) -> Vec<KeyRecord> {
        self.records
    }

    /// Whether `record` can be appended without duplicating an id or a hash.
    pub(crate) fn conflict(&self, record: &KeyRecord) -> Option<Conflict> {
        if self.records.iter().any(|r| r.key_id == record.key_id) {
            return Some(Conflict::KeyId(record.key_id.clone()));
        }
        let hash = record.secret_hash.to_ascii_lowercase();
        self.records
            .iter()
            .find(|r| r.secret_hash == hash)
            .map(|r| Conflict::SecretHash {
                existing_key_id: r.key_id.clone(),
            })
    }

    /// Append a record (the caller checked `conflict` and validated it).
    ///
    /// # Errors
    /// When the record cannot be serialised (not expected for a `KeyRecord`).
    pub(crate) fn push(&mut self, record: KeyRecord) -> Result<(), String> {
        let value = serde_json::to_value(&record)
            .map_err(|e| format!("cannot serialise key {}: {e}", record.key_id))?;
        match self.root.get_mut("keys") {
            Some(Value::Array(entries)) => entries.push(value),
            _ => {
                self.root.insert("keys".into(), Value::Array(vec![value]));
            }
        }
        self.records.push(record);
        Ok(())
    }

    /// Replace the whole set with `records` (the result of an edit). Entries whose record is
    /// unchanged keep their stored JSON exactly; changed or new ones are serialised. The
    /// result is validated like a file being loaded.
    ///
    /// # Errors
    /// A message naming the invalid or duplicated entry.
    pub(crate) fn replace_records(&mut self, records: Vec<KeyRecord>) -> Result<(), String> {
        let old: HashMap<&str, (&KeyRecord, Option<&Value>)> = {
            let entries = match self.root.get("keys") {
                Some(Value::Array(entries)) => entries.as_slice(),
                _ => &[],
            };
            self.records
                .iter()
                .enumerate()
                .map(|(i, r)| (r.key_id.as_str(), (r, entries.get(i))))
                .collect()
        };
        let mut entries = Vec::with_capacity(records.len());
        for r in &records {
            let value = match old.get(r.key_id.as_str()) {
                Some((prev, Some(raw))) if *prev == r => (*raw).clone(),
                _ => serde_json::to_value(r)
                    .map_err(|e| format!("cannot serialise key {}: {e}", r.key_id))?,
            };
            entries.push(value);
        }
        let mut root = self.root.clone();
        root.insert("keys".into(), Value::Array(entries));
        let bytes = serde_json::to_vec(&Value::Object(root))
            .map_err(|e| format!("cannot serialise the keystore: {e}"))?;
        *self = Document::parse(&bytes)?;
        Ok(())
    }

    /// The file contents: sorted keys, 2-space indent, trailing newline.
    ///
    /// # Errors
    /// When serialisation fails (not expected for JSON values).
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let sorted = sort_keys(&Value::Object(self.root.clone()));
        let mut out = serde_json::to_vec_pretty(&sorted)
            .map_err(|e| format!("cannot serialise the keystore: {e}"))?;
        out.push(b'\n');
        Ok(out)
    }
}

/// The `budgets` and `model_groups` arrays of the root, validated.
fn parse_policies(root: &Map<String, Value>) -> Result<Policies, String> {
    let mut obj = Map::new();
    for field in POLICY_FIELDS {
        match root.get(field) {
            None | Some(Value::Null) => {}
            Some(v @ Value::Array(_)) => {
                obj.insert(field.to_owned(), v.clone());
            }
            Some(other) => {
                return Err(format!(
                    "\"{field}\" must be an array, found {}",
                    json_type(other)
                ));
            }
        }
    }
    let policies: Policies = serde_json::from_value(Value::Object(obj))
        .map_err(|e| format!("budgets, model_groups or routes: {e}"))?;
    policies.validate()?;
    Ok(policies)
}

fn records_key_id(records: &[KeyRecord], i: usize) -> &str {
    records.get(i).map_or("?", |r| r.key_id.as_str())
}

/// A copy of `v` with every object's keys in sorted order (like Python's `sort_keys=True`).
fn sort_keys(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = Map::with_capacity(map.len());
            for k in keys {
                if let Some(child) = map.get(k) {
                    out.insert(k.clone(), sort_keys(child));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sort_keys).collect()),
        other => other.clone(),
    }
}
