use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Merchant,
    Driver,
    Admin,
    Support,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Self::Customer,
        Self::Merchant,
        Self::Driver,
        Self::Admin,
        Self::Support,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Merchant => "merchant",
            Self::Driver => "driver",
            Self::Admin => "admin",
            Self::Support => "support",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(UnknownRole)
    }
}

#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("unknown role (expected customer, merchant, driver, admin or support)")]
pub struct UnknownRole;

/// A verified client: the claims of its token that the relay acts on.
/// Cheap to clone, as it travels in every socket's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(Arc<PrincipalInner>);

#[derive(Debug, PartialEq, Eq)]
struct PrincipalInner {
    sub: String,
    role: Role,
    store_ids: Vec<String>,
    expiry: Option<Expiry>,
}

/// When a principal's token ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expiry {
    /// The token's `exp` claim (unix seconds), as the client knows it.
    exp_s: u64,
    /// When the relay stops honouring it (unix ms): `exp` plus the leeway.
    ends_at_ms: u64,
}

impl Principal {
    pub fn new(sub: impl Into<String>, role: Role, store_ids: Vec<String>) -> Self {
        Self(Arc::new(PrincipalInner {
            sub: sub.into(),
            role,
            store_ids,
            expiry: None,
        }))
    }

    /// The same principal, from a token whose `exp` is `exp_s` (unix
    /// seconds), honoured for `leeway_s` more.
    pub fn expiring_at(mut self, exp_s: u64, leeway_s: u64) -> Self {
        let expiry = Some(Expiry {
            exp_s,
            ends_at_ms: exp_s.saturating_add(leeway_s).saturating_mul(1000),
        });
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.expiry = expiry,
            None => {
                let inner = &self.0;
                self = Self(Arc::new(PrincipalInner {
                    sub: inner.sub.clone(),
                    role: inner.role,
                    store_ids: inner.store_ids.clone(),
                    expiry,
                }));
            }
        }
        self
    }

    /// When the token stops being valid (unix ms, leeway included), if it said.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.0.expiry.map(|e| e.ends_at_ms)
    }

    /// The token's `exp` claim (unix seconds), if it said.
    pub fn exp(&self) -> Option<u64> {
        self.0.expiry.map(|e| e.exp_s)
    }

    /// The user id (`sub` claim).
    pub fn sub(&self) -> &str {
        &self.0.sub
    }

    pub fn role(&self) -> Role {
        self.0.role
    }

    /// Stores a merchant may receive orders for; empty for other roles.
    pub fn store_ids(&self) -> &[String] {
        &self.0.store_ids
    }
}
