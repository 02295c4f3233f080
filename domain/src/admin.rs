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
}
