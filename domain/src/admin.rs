//! Who administers the gateway, and what each role may do.
//!
//! An admin identity is a person (an OpenID Connect subject) or the static admin token. The
//! role decides what it may do on `/admin/v1` and in the console: `viewer` reads, `operator`
//! also manages keys, `admin` may do everything. Roles are ordered, so a route states the
//! least role it needs and every higher role passes.

use serde::Serialize;

/// An admin role, from least to most privileged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads keys, spend, usage, audit and sessions.
    Viewer,
    /// Also issues, revokes and rotates keys.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parse `viewer`, `operator` or `admin`.
    ///
    /// # Errors
    /// The message names the accepted values.
    pub fn parse(raw: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == raw)
            .ok_or_else(|| format!("role must be one of viewer, operator, admin; got '{raw}'"))
    }

    /// Whether this role may do what `needed` may.
    #[must_use]
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

/// How an admin proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// The shared static admin token (`--admin-token`); always `admin`.
    StaticToken,
    /// A JWT from the configured OpenID Connect issuer (bearer, or a console login).
    Oidc,
}

/// An authenticated admin: recorded in the audit event of every change they make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminIdentity {
    /// The token's `sub` claim, or `static-token`.
    pub sub: String,
    /// The `email` claim, when the issuer sends one.
    pub email: Option<String>,
    pub role: Role,
    pub method: AuthMethod,
}

impl AdminIdentity {
    /// The holder of the static admin token.
    #[must_use]
    pub fn static_token() -> Self {
        AdminIdentity {
            sub: "static-token".to_owned(),
            email: None,
            role: Role::Admin,
            method: AuthMethod::StaticToken,
        }
    }
}

/// How a verified OIDC token's claims become a [`Role`] (`--oidc-role-claim`,
/// `--oidc-role-map`, `--oidc-default-role`).
///
/// The claim holds a string or an array of strings (e.g. `groups`, or the dotted path
/// `realm_access.roles` into nested objects). Each map entry grants a role to one claim value;
/// when several entries match, the highest role wins, so a person in both the read-only and
/// the operators group is an operator. No match gives the default role, or none (403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMapping {
    claim: String,
    rules: Vec<(Role, String)>,
    default_role: Option<Role>,
}

impl RoleMapping {
    /// Build a mapping. `entries` are `role=value` items, each possibly a comma list
    /// (`admin=metis-admins,viewer=metis-read`), so the flag can be repeated or given once.
    ///
    /// # Errors
    /// A message naming the bad entry (missing `=`, unknown role, empty value) or an empty
    /// claim name or path segment.
    pub fn parse(
        claim: &str,
        entries: &[String],
        default_role: Option<&str>,
    ) -> Result<RoleMapping, String> {
        let claim = claim.trim();
        if claim.is_empty() || claim.split('.').any(str::is_empty) {
            return Err(format!(
                "--oidc-role-claim must be a claim name or a dotted path like realm_access.roles; got '{claim}'"
            ));
        }
        let mut rules = Vec::new();
        for item in entries.iter().flat_map(|e| e.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (role, value) = item.split_once('=').ok_or_else(|| {
                format!("--oidc-role-map entry '{item}' must be role=claim-value, e.g. operator=metis-ops")
            })?;
            let role = Role::parse(role.trim())
                .map_err(|e| format!("--oidc-role-map entry '{item}': {e}"))?;
            let value = value.trim();
            if value.is_empty() {
                return Err(format!(
                    "--oidc-role-map entry '{item}' has an empty claim value"
                ));
            }
            rules.push((role, value.to_owned()));
        }
        let default_role = default_role
            .map(|r| Role::parse(r.trim()).map_err(|e| format!("--oidc-default-role: {e}")))
            .transpose()?;
        if rules.is_empty() && default_role.is_none() {
            return Err(
                "OIDC needs --oidc-role-map (e.g. admin=metis-admins,viewer=metis-read) or --oidc-default-role; otherwise every token would be refused".to_owned(),
            );
        }
        Ok(RoleMapping {
            claim: claim.to_owned(),
            rules,
            default_role,
        })
    }

    /// The claim (or dotted path) the roles are read from.
    #[must_use]
    pub fn claim(&self) -> &str {
        &self.claim
    }

    /// The role the token's claims grant.
    ///
    /// # Errors
    /// No mapped value is present and there is no default role: the message names the claim
    /// and the values found (group names, never a credential), so the operator can fix the map.
    pub fn role_of(&self, claims: &serde_json::Value) -> Result<Role, String> {
        let mut node = Some(claims);
        for segment in self.claim.split('.') {
            node = node.and_then(|n| n.get(segment));
        }
        let values: Vec<&str> = match node {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(serde_json::Value::as_str).collect()
            }
            _ => Vec::new(),
        };
        let granted = self
            .rules
            .iter()
            .filter(|(_, v)| values.contains(&v.as_str()))
            .map(|(r, _)| *r)
            .max();
        match (granted, self.default_role) {
            (Some(r), _) => Ok(r),
            (None, Some(d)) => Ok(d),
            (None, None) if node.is_none() => Err(format!(
                "no role: the token has no '{}' claim and no --oidc-default-role is set",
                self.claim
            )),
            (None, None) => Err(format!(
                "no role: claim '{}' = {:?} matches no --oidc-role-map entry",
                self.claim, values
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse_by_name() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Admin));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Ok(r));
        }
        assert!(Role::parse("root").unwrap_err().contains("'root'"));
    }

    fn mapping(default: Option<&str>) -> RoleMapping {
        RoleMapping::parse(
            "groups",
            &[
                "admin=metis-admins,operator=metis-ops".to_owned(),
                "viewer=metis-read".to_owned(),
            ],
            default,
        )
        .unwrap()
    }

    #[test]
    fn the_highest_matching_role_wins() {
        let m = mapping(None);
        let claims = serde_json::json!({"groups": ["metis-read", "metis-ops", "other"]});
        assert_eq!(m.role_of(&claims), Ok(Role::Operator));
        let claims = serde_json::json!({"groups": ["metis-admins", "metis-read"]});
        assert_eq!(m.role_of(&claims), Ok(Role::Admin));
        // A single string claim works too.
        let claims = serde_json::json!({"groups": "metis-read"});
        assert_eq!(m.role_of(&claims), Ok(Role::Viewer));
    }

    #[test]
    fn no_match_is_refused_unless_a_default_role_is_set() {
        let claims = serde_json::json!({"groups": ["other"]});
        let err = mapping(None).role_of(&claims).unwrap_err();
        assert!(err.contains("no role") && err.contains("other"), "{err}");
        let err = mapping(None).role_of(&serde_json::json!({})).unwrap_err();
        assert!(err.contains("no 'groups' claim"), "{err}");
        assert_eq!(mapping(Some("viewer")).role_of(&claims), Ok(Role::Viewer));
        // The default never lowers a mapped role.
        let claims = serde_json::json!({"groups": ["metis-ops"]});
        assert_eq!(mapping(Some("viewer")).role_of(&claims), Ok(Role::Operator));
    }

    #[test]
    fn dotted_paths_reach_nested_claims() {
        let m = RoleMapping::parse("realm_access.roles", &["admin=boss".to_owned()], None).unwrap();
        let claims = serde_json::json!({"realm_access": {"roles": ["boss"]}});
        assert_eq!(m.role_of(&claims), Ok(Role::Admin));
        assert!(
            m.role_of(&serde_json::json!({"realm_access": "boss"}))
                .is_err()
        );
    }

    #[test]
    fn bad_configuration_names_the_entry() {
        let parse = |claim: &str, e: &str, d: Option<&str>| {
            RoleMapping::parse(claim, &[e.to_owned()], d).unwrap_err()
        };
        assert!(parse("groups", "root=x", None).contains("'root=x'"));
        assert!(parse("groups", "admin", None).contains("role=claim-value"));
        assert!(parse("groups", "admin=", None).contains("empty claim value"));
        assert!(parse("a..b", "admin=x", None).contains("dotted path"));
        assert!(parse("groups", "", None).contains("--oidc-role-map"));
        assert!(parse("groups", "admin=x", Some("boss")).contains("--oidc-default-role"));
    }

    proptest::proptest! {
        /// Whatever groups a token carries, the granted role is the highest role mapped to
        /// one of them, and adding a group never lowers it.
        #[test]
        fn the_role_is_the_maximum_over_matching_groups(
            groups in proptest::collection::vec(0usize..5, 0..6),
            extra in 0usize..5,
        ) {
            let names = ["metis-admins", "metis-ops", "metis-read", "x", "y"];
            let m = mapping(None);
            let of = |gs: &[usize]| {
                let claims = serde_json::json!({"groups": gs.iter().map(|g| names[*g]).collect::<Vec<_>>()});
                m.role_of(&claims).ok()
            };
            let expected = groups.iter().filter_map(|g| match g {
                0 => Some(Role::Admin), 1 => Some(Role::Operator), 2 => Some(Role::Viewer), _ => None,
            }).max();
            proptest::prop_assert_eq!(of(&groups), expected);
            let mut more = groups.clone();
            more.push(extra);
            proptest::prop_assert!(of(&more) >= of(&groups));
        }
    }
}
