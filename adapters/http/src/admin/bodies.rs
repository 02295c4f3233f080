//! The admin API's key request bodies and the strict JSON string they use.

use super::*;

/// A JSON string, and only a string. poem-openapi's `String` also accepts numbers and
/// booleans and turns them into text (`"team": false` would become the tag `false`), which
/// the document (`type: string`) does not allow.
pub struct Text(pub(super) String);

impl poem_openapi::types::Type for Text {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> std::borrow::Cow<'static, str> {
        String::name()
    }

    fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
        String::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl poem_openapi::types::ParseFromJSON for Text {
    fn parse_from_json(value: Option<serde_json::Value>) -> poem_openapi::types::ParseResult<Self> {
        match value {
            Some(serde_json::Value::String(s)) => Ok(Text(s)),
            other => Err(poem_openapi::types::ParseError::expected_type(
                other.unwrap_or_default(),
            )),
        }
    }
}

impl poem_openapi::types::ToJSON for Text {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::String(self.0.clone()))
    }
}

/// The successor's expiry of a rotation: `keep` (the default) or `reset` with an optional
/// `expires_in`. `expires_in` with `keep` is refused rather than guessed at.
pub(super) fn rotation_expiry(
    expiry: Option<&str>,
    expires_in: Option<&str>,
) -> Result<metis_domain::keys::RotationExpiry, String> {
    use metis_domain::keys::RotationExpiry;
    match (expiry.unwrap_or("keep"), expires_in) {
        ("keep", None) => Ok(RotationExpiry::Keep),
        ("keep", Some(_)) => Err(
            "expires_in: only with \"expiry\": \"reset\" (\"keep\" keeps the old key's expiry)"
                .to_owned(),
        ),
        ("reset", None) => Ok(RotationExpiry::Never),
        ("reset", Some(d)) => parse_grace(d)
            .map(RotationExpiry::ExpiresIn)
            .map_err(|e| format!("expires_in: {e}")),
        (other, _) => Err(format!(
            "expiry: must be \"keep\" or \"reset\", got '{other}'"
        )),
    }
}

pub(super) fn text(t: Option<Text>) -> Option<String> {
    t.map(|t| t.0)
}

/// A new key.
#[derive(Object)]
pub struct CreateKeyBody {
    /// Display name (not blank).
    #[oai(validator(pattern = r"\S"))]
    pub(super) name: Text,
    /// Absolute workspace path the key belongs to.
    #[oai(validator(pattern = "^/"))]
    pub(super) workspace: Text,
    /// Canonical model ids or aliases the key may use (absent, null or empty = all; entries
    /// not blank).
    #[oai(default, nullable, validator(pattern = r"\S"))]
    pub(super) allowed_models: Vec<Text>,
    /// Daily USD cap (decimal string, > 0).
    #[oai(
        nullable,
        validator(
            pattern = r"^([0-9]{0,9}[1-9][0-9]{0,9}(\.[0-9]{1,6})?|[0-9]{0,9}\.[0-9]{0,5}[1-9][0-9]{0,5})$"
        )
    )]
    pub(super) daily_cap_usd: Option<Text>,
    /// Monthly USD cap (decimal string, > 0).
    #[oai(
        nullable,
        validator(
            pattern = r"^([0-9]{0,9}[1-9][0-9]{0,9}(\.[0-9]{1,6})?|[0-9]{0,9}\.[0-9]{0,5}[1-9][0-9]{0,5})$"
        )
    )]
    pub(super) monthly_cap_usd: Option<Text>,
    /// Per-key requests per minute.
    #[oai(
        nullable,
        validator(minimum(value = "1"), maximum(value = "4294967295"))
    )]
    pub(super) rpm: Option<u32>,
    /// User tag.
    #[oai(nullable, validator(pattern = "^[a-z0-9_-]{1,200}$"))]
    pub(super) user: Option<Text>,
    /// Team tag.
    #[oai(nullable, validator(pattern = "^[a-z0-9_-]{1,200}$"))]
    pub(super) team: Option<Text>,
    /// `trial`, `paid` or `internal`.
    #[oai(nullable, validator(pattern = "^(trial|paid|internal)$"))]
    pub(super) customer_tier: Option<Text>,
    /// Customer tag: the key counts against the customer's budget.
    #[oai(nullable, validator(pattern = "^[a-z0-9_-]{1,200}$"))]
    pub(super) customer: Option<Text>,
    /// Organisation tag: the key counts against the organisation's budget.
    #[oai(nullable, validator(pattern = "^[a-z0-9_-]{1,200}$"))]
    pub(super) org: Option<Text>,
    /// Weekly USD cap (decimal string, > 0; week from Monday 00:00 UTC).
    #[oai(
        nullable,
        validator(
            pattern = r"^([0-9]{0,9}[1-9][0-9]{0,9}(\.[0-9]{1,6})?|[0-9]{0,9}\.[0-9]{0,5}[1-9][0-9]{0,5})$"
        )
    )]
    pub(super) weekly_cap_usd: Option<Text>,
    /// Per-key tokens per minute (input + output).
    #[oai(
        nullable,
        validator(minimum(value = "1"), maximum(value = "4294967295"))
    )]
    pub(super) tpm: Option<u32>,
    /// Alert levels in percent of each cap, strictly increasing, 1-100 (default 80, 95,
    /// 100).
    #[oai(nullable)]
    pub(super) alert_at: Option<Vec<u8>>,
    /// The key expires this long after issue: seconds or `30m`, `24h`, `30d`, `2w` (more than
    /// zero). At most one of `expires_in` and `expires_at`.
    #[oai(nullable, validator(pattern = r"^\s*0*[1-9][0-9]{0,4}[smhdw]?\s*$"))]
    pub(super) expires_in: Option<Text>,
    /// The key expires at this RFC 3339 instant (with an offset); must be in the future.
    #[oai(
        nullable,
        validator(
            pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
        )
    )]
    pub(super) expires_at: Option<Text>,
}

/// Settings of a key to change: a field left out keeps its value, `null` removes it, a value
/// replaces it.
#[derive(Object)]
pub struct UpdateKeyBody {
    /// Models the key may use (ids, aliases, `group:NAME` of an existing group); null or
    /// empty = every model.
    #[oai(nullable, validator(pattern = r"\S"))]
    pub(super) allowed_models: MaybeUndefined<Vec<Text>>,
    #[oai(
        nullable,
        validator(
            pattern = r"^([0-9]{0,9}[1-9][0-9]{0,9}(\.[0-9]{1,6})?|[0-9]{0,9}\.[0-9]{0,5}[1-9][0-9]{0,5})$"
        )
    )]
    pub(super) daily_cap_usd: MaybeUndefined<Text>,
    #[oai(
        nullable,
        validator(
            pattern = r"^([0-9]{0,9}[1-9][0-9]{0,9}(\.[0-9]{1,6})?|[0-9]{0,9}\.[0-9]{0,5}[1-9][0-9]{0,5})$"
        )
    )]
    pub(super) weekly_cap_usd: MaybeUndefined<Text>,
    #[oai(
        nullable,
        validator(
            pattern = r"^([0-9]{0,9}[1-9][0-9]{0,9}(\.[0-9]{1,6})?|[0-9]{0,9}\.[0-9]{0,5}[1-9][0-9]{0,5})$"
        )
    )]
    pub(super) monthly_cap_usd: MaybeUndefined<Text>,
    #[oai(
        nullable,
        validator(minimum(value = "1"), maximum(value = "4294967295"))
    )]
    pub(super) rpm: MaybeUndefined<u32>,
    #[oai(
        nullable,
        validator(minimum(value = "1"), maximum(value = "4294967295"))
    )]
    pub(super) tpm: MaybeUndefined<u32>,
    /// Alert levels in percent, strictly increasing, 1-100.
    #[oai(nullable)]
    pub(super) alert_at: MaybeUndefined<Vec<u8>>,
    #[oai(nullable, validator(pattern = "^[a-z0-9_-]{1,200}$"))]
    pub(super) user: MaybeUndefined<Text>,
    #[oai(nullable, validator(pattern = "^[a-z0-9_-]{1,200}$"))]
    pub(super) team: MaybeUndefined<Text>,
    #[oai(nullable, validator(pattern = "^[a-z0-9_-]{1,200}$"))]
    pub(super) customer: MaybeUndefined<Text>,
    #[oai(nullable, validator(pattern = "^[a-z0-9_-]{1,200}$"))]
    pub(super) org: MaybeUndefined<Text>,
}

fn change<T, U>(v: MaybeUndefined<T>, f: impl FnOnce(T) -> U) -> Change<U> {
    match v {
        MaybeUndefined::Undefined => Change::Keep,
        MaybeUndefined::Null => Change::Clear,
        MaybeUndefined::Value(v) => Change::Set(f(v)),
    }
}

impl UpdateKeyBody {
    pub(super) fn changes(self) -> KeyChanges {
        let t = |t: Text| t.0;
        KeyChanges {
            allowed_models: change(self.allowed_models, |l| l.into_iter().map(t).collect()),
            daily_cap_usd: change(self.daily_cap_usd, t),
            weekly_cap_usd: change(self.weekly_cap_usd, t),
            monthly_cap_usd: change(self.monthly_cap_usd, t),
            rpm: change(self.rpm, |v| v),
            tpm: change(self.tpm, |v| v),
            alert_at: change(self.alert_at, |v| v),
            user: change(self.user, t),
            team: change(self.team, t),
            customer: change(self.customer, t),
            org: change(self.org, t),
        }
    }
}
